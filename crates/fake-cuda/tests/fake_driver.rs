//! Runs the fake `libcuda.so.1` (and `libnvidia-ml.so.1`, when built) in child processes: a
//! small C program dlopens them through sonames in a temporary directory and drives the
//! driver API; the fakes are never loaded into the test harness itself.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/`, where cargo puts the cdylibs.
fn target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.to_path_buf())
}

struct Fixture {
    dir: PathBuf,
    program: PathBuf,
}

impl Fixture {
    /// Symlinks the libraries under their sonames and compiles the driver program; `None`
    /// (with a note on stderr) when the library or a C compiler is missing.
    fn new(tag: &str) -> Option<Self> {
        let target = target_dir()?;
        let cuda = target.join("libcuda.so");
        if !cuda.exists() {
            eprintln!(
                "SKIP: {} does not exist; build fake-cuda first",
                cuda.display()
            );
            return None;
        }
        let dir = std::env::temp_dir().join(format!("fake-cuda-it-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::os::unix::fs::symlink(&cuda, dir.join("libcuda.so.1")).expect("symlink");
        let nvml = target.join("libnvidia_ml.so");
        if nvml.exists() {
            std::os::unix::fs::symlink(&nvml, dir.join("libnvidia-ml.so.1")).expect("symlink");
        } else {
            eprintln!("note: {} missing; NVML checks are skipped", nvml.display());
        }
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_driver.c");
        let program = dir.join("fake_driver");
        let cc = Command::new("cc")
            .args(["-std=c11", "-O0", "-Wall", "-o"])
            .arg(&program)
            .arg(&src)
            .arg("-ldl")
            .status();
        match cc {
            Ok(s) if s.success() => Some(Self { dir, program }),
            other => {
                eprintln!("SKIP: cannot compile {}: {other:?}", src.display());
                None
            }
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("gpu-state")
    }

    fn run(&self, mode: &str, env: &[(&str, &str)]) {
        let mut cmd = Command::new(&self.program);
        cmd.arg(mode)
            .env("LD_LIBRARY_PATH", &self.dir)
            .env("FAKE_GPU_STATE", self.state())
            .env_remove("CUDA_VISIBLE_DEVICES")
            .env_remove("FAKE_CUDA_FAIL")
            .env_remove("FAKE_NVML_FAIL")
            .env_remove("FAKE_CUDA_CONTEXT_BYTES")
            .env_remove("FAKE_CUDA_GRANULARITY")
            .env_remove("FAKE_GPU_COUNT")
            .env_remove("FAKE_GPU_MEMORY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run the driver program");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(&format!("OK {mode}")),
            "{mode} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        );
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const MIB: u64 = 1 << 20;

#[test]
fn basic_allocation_is_seen_by_cuda_and_nvml() {
    let Some(f) = Fixture::new("basic") else {
        return;
    };
    f.run("basic", &[]);
    // The child has exited: its memory is gone, the peak remains.
    assert_eq!(fake_gpu::in_use(f.state(), 0), 0);
    assert_eq!(fake_gpu::peak_used(f.state(), 0), 100 * MIB);
    assert_eq!(fake_gpu::peak_physical(f.state(), 0), 400 * MIB);
    fake_gpu::reset_peak(f.state());
    assert_eq!(fake_gpu::peak_used(f.state(), 0), 0);
}

#[test]
fn pools_graphs_vmm_arrays_modules_and_faults() {
    let Some(f) = Fixture::new("features") else {
        return;
    };
    f.run("features", &[("FAKE_CUDA_FAIL", "cuMemAlloc_v2@2=2")]);
    assert_eq!(fake_gpu::in_use(f.state(), 0), 0);
    assert_eq!(fake_gpu::peak_used(f.state(), 0), 16 * MIB);
}

#[test]
fn visible_devices_are_renumbered() {
    let Some(f) = Fixture::new("visible") else {
        return;
    };
    f.run(
        "visible",
        &[
            ("FAKE_GPU_COUNT", "3"),
            ("FAKE_GPU_MEMORY", "16GiB"),
            (
                "CUDA_VISIBLE_DEVICES",
                "GPU-00000000-0000-4000-8000-000000000002,0,9,1",
            ),
        ],
    );
    assert_eq!(fake_gpu::peak_used(f.state(), 2), 64 * MIB);
    assert_eq!(fake_gpu::peak_used(f.state(), 0), 0);
    f.run(
        "empty",
        &[
            ("CUDA_VISIBLE_DEVICES", ""),
            ("FAKE_NVML_FAIL", "nvmlInit_v2@1=999"),
        ],
    );
}

#[test]
fn streams_and_events_complete_on_the_virtual_clock() {
    let Some(f) = Fixture::new("timing") else {
        return;
    };
    f.run("timing", &[("FAKE_CUDA_KERNEL_US", "1000")]);
}
