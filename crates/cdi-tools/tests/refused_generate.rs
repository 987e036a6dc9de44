//! A `gpuslice cdi generate` that refuses changes nothing. Slice `a` is generated, a
//! process of it (the built `cuda-probe` on the fake driver, with the slice's pinned
//! variables) holds its ledger, and `a` is generated again with another limit (after
//! another slice whose limit changes too): the command must refuse, name the command that
//! frees the entries of dead processes, leave every file of the spec and state folders
//! byte for byte as it was, and a new process of `a` must still get the slice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{MetadataExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::build_dir;

/// A child process killed (and reaped) when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host in a temporary folder with the fake driver and NVML.
struct Host {
    root: tempfile::TempDir,
    build: PathBuf,
}

impl Host {
    fn new() -> Self {
        let build = build_dir();
        let root = tempfile::tempdir().unwrap();
        let p = root.path();
        fs::create_dir_all(p.join("dev")).unwrap();
        for node in ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
            symlink("/dev/null", p.join("dev").join(node)).unwrap();
        }
        fs::create_dir_all(p.join("lib")).unwrap();
        symlink(
            build.join("libnvidia_ml.so"),
            p.join("lib/libnvidia-ml.so.1"),
        )
        .unwrap();
        symlink(build.join("libcuda.so"), p.join("lib/libcuda.so.1")).unwrap();
        Self { root, build }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("LD_LIBRARY_PATH", self.path("lib"))
            .env("FAKE_GPU_STATE", self.path("gpu.state"))
            .env("FAKE_GPU_MEMORY", "80GiB")
            .env("FAKE_CUDA_CONTEXT_BYTES", "300MiB")
            .env_remove("LD_PRELOAD")
            .env_remove("GPUSLICE_LIB")
            .stdin(Stdio::null());
        for (key, _) in std::env::vars() {
            if key.starts_with("GPUSLICE_") || key.starts_with("CUDA_") {
                cmd.env_remove(key);
            }
        }
        cmd
    }

    /// Runs `gpuslice cdi generate` with `slices`: (success, stdout, stderr).
    fn generate(&self, slices: &[&str]) -> (bool, String, String) {
        let mut cmd = self.command(&self.build.join("gpuslice"));
        cmd.args(["cdi", "generate", "--driver-libs", "off"])
            .arg("--output-dir")
            .arg(self.path("cdi"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--agent-dir")
            .arg(self.path("run/agent"))
            .arg("--dev-root")
            .arg(self.root.path())
            .arg("--lib")
            .arg(self.build.join("libgpuslice.so"));
        for s in slices {
            cmd.args(["--slice", s]);
        }
        let out = cmd.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// `cuda-probe` as a process of slice `name` outside a container: the slice's pinned
    /// variables, with the host's paths for the ledger and the per-GPU folder.
    fn probe_in_slice(&self, name: &str, steps: &[&str]) -> Command {
        let pinned = fs::read_to_string(self.path(&format!("state/config/{name}.env"))).unwrap();
        let mut cmd = self.command(&self.build.join("cuda-probe"));
        cmd.env("LD_PRELOAD", self.build.join("libgpuslice.so"));
        for line in pinned.lines().filter(|l| !l.starts_with('#')) {
            let (key, value) = line.split_once('=').unwrap();
            match key {
                "GPUSLICE_LEDGER" => {
                    cmd.env(key, self.path(&format!("state/slices/{name}/ledger")))
                }
                "GPUSLICE_GPU_DIR" => cmd.env(key, self.path("gpus")),
                "GPUSLICE_AGENT_SOCKET" => cmd.env_remove(key),
                _ => cmd.env(key, value),
            };
        }
        cmd.args(steps);
        cmd
    }

    /// Every file below the spec and state folders: path -> (mode, bytes).
    fn files(&self) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
        fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, (u32, Vec<u8>)>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let meta = fs::symlink_metadata(&path).unwrap();
                if meta.is_dir() {
                    out.insert(path.clone(), (meta.mode(), Vec::new()));
                    walk(&path, out);
                } else {
                    out.insert(path.clone(), (meta.mode(), fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.path("cdi"), &mut out);
        walk(&self.path("state"), &mut out);
        out
    }
}

#[test]
fn a_refused_generation_changes_nothing_and_the_slice_stays_usable() {
    let host = Host::new();
    let (ok, stdout, stderr) = host.generate(&["a=0:4GiB", "b=0:1GiB"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");

    // A process of slice a holds its ledger.
    let ready = host.path("holder.ready");
    let holder = Reaped(
        host.probe_in_slice(
            "a",
            &[
                "init",
                "ctx",
                "alloc:64M",
                &format!("ready:{}", ready.display()),
                "sleep:120000",
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let start = Instant::now();
    while !ready.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the process of slice a did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = host.files();

    // Slice b (free) first, then a with another limit: refused as a whole.
    let (ok, stdout, stderr) = host.generate(&["b=0:2GiB", "a=0:3GiB"]);
    assert!(!ok, "a slice in use was regenerated: {stdout}");
    assert!(
        stderr.contains("slice a")
            && stderr.contains(&holder.0.id().to_string())
            && stderr.contains("nothing was changed")
            && stderr.contains(&format!(
                "gpuslice agent --state-dir {}",
                host.path("state").display()
            )),
        "the refusal names the slice, its process and how dead entries are freed: {stderr}"
    );
    let after = host.files();
    let changed: BTreeSet<&PathBuf> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    assert!(
        changed.is_empty(),
        "the refused generation changed {changed:?}"
    );

    // A new process of slice a still gets the slice.
    let out = host
        .probe_in_slice("a", &["init", "ctx", "alloc:64M", "totalmem"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{stderr}");
    for step in ["init ", "ctx ", "alloc:64M "] {
        assert!(
            text.lines()
                .any(|l| l.starts_with(step) && l.contains("rc=0")),
            "{step}failed in a new process of slice a:\n{text}\n{stderr}"
        );
    }
    assert!(
        text.contains(&format!("total={}", 4u64 << 30)),
        "the slice keeps its limit: {text}"
    );

    // Once its process is gone, the new limits are taken.
    drop(holder);
    let (ok, stdout, stderr) = host.generate(&["b=0:2GiB", "a=0:3GiB"]);
    assert!(ok, "stdout: {stdout}\nstderr: {stderr}");
    let pinned = fs::read_to_string(host.path("state/config/a.env")).unwrap();
    assert!(pinned.contains("=3GiB"), "{pinned}");
}
