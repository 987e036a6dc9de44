//! The README's container path with a real engine, on the fake GPU: `gpuslice cdi
//! generate` writes the spec (the fake driver laid out as a driver root, as docs/cdi.md
//! shows), and `podman run --device gpuslice.io/slice=NAME` starts containers whose image
//! is built offline (the probe and the libraries it needs). Inside, the probe sees its
//! slice and is refused past it; two containers of one slice share its limit, another
//! slice is separate, and `-e GPUSLICE_MEMORY=64GiB` changes nothing.
//!
//! Podman 4.3 reads specs only from `/etc/cdi` and `/var/run/cdi`, so the spec is copied
//! to `/var/run/cdi` under a name of this test, with slice names of this test, and
//! removed at the end. Podman 4.3 refuses a spec device node that is a symbolic link,
//! so the fake nodes are made with `mknod` (`/dev/null`'s numbers). Needs root and
//! `podman` (`.ci/run` installs Debian's); where Podman cannot run a container here the
//! test says SKIPPED and why. It runs Podman with `--runtime runc --cgroup-manager
//! cgroupfs`, its own storage (`vfs`), no network, and open-file and process limits no
//! higher than a sandbox lets a runtime set.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use system_tests::{Bench, GIB, Report, is_root, output_within, wait_for};

/// Podman with this test's storage and the flags a sandbox needs.
struct Podman {
    program: PathBuf,
    dir: PathBuf,
}

impl Podman {
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(["--storage-driver", "vfs"])
            .args(["--cgroup-manager", "cgroupfs"])
            .args(["--runtime", "runc"])
            .args(["--events-backend", "file"])
            .stdin(Stdio::null());
        cmd
    }

    /// `podman run` of `args` (after the image flags), bounded in time.
    fn run(&self, rootfs: &Path, flags: &[String], args: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.args(RUN)
            .args(flags)
            .arg("--rootfs")
            .arg(rootfs)
            .args(args);
        output_within(&mut cmd, Duration::from_secs(120))
    }
}

/// `podman run` and the flags every container of the test gets. The host's PID
/// namespace: the fake GPU tells processes apart by PID, and would take every container's
/// PID 1 for one process.
const RUN: [&str; 10] = [
    "run",
    "--rm",
    "--pid",
    "host",
    "--network",
    "none",
    "--ulimit",
    "nofile=1024:1024",
    "--ulimit",
    "nproc=4096:4096",
];

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The files `ldd` says `binaries` load, for an image with nothing else.
fn copy_with_libraries(binaries: &[&Path], rootfs: &Path) {
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    for binary in binaries {
        let ldd = Command::new("ldd").arg(binary).output().expect("ldd");
        for lib in String::from_utf8_lossy(&ldd.stdout)
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let target = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(lib, &target).unwrap_or_else(|e| panic!("copy {lib}: {e}"));
        }
    }
}

/// Removes the spec copied to `/var/run/cdi`, however the test ends.
struct Installed(PathBuf);

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn podman_runs_containers_in_cdi_slices() {
    let skip = |why: &str| eprintln!("SKIPPED podman_runs_containers_in_cdi_slices: {why}");
    if !is_root() {
        return skip("needs root");
    }
    let Some(program) = which("podman") else {
        return skip("podman is not installed (apt-get install podman)");
    };
    let bench = Bench::new();
    let host = bench.dir.path();
    let s = |p: &Path| p.display().to_string();
    let podman = Podman {
        program,
        dir: host.join("podman"),
    };

    // The image, offline: the probe (and `true`), and what they and the fake driver load.
    let rootfs = host.join("rootfs");
    let true_program = which("true").expect("true is on PATH");
    copy_with_libraries(
        &[
            &true_program,
            &bench.build.join("cuda-probe"),
            &bench.build.join("libcuda.so"),
            &bench.build.join("libnvidia_ml.so"),
            &bench.interposer(),
        ],
        &rootfs,
    );
    std::fs::copy(
        bench.build.join("cuda-probe"),
        rootfs.join("bin/cuda-probe"),
    )
    .unwrap();
    std::fs::copy(&true_program, rootfs.join("bin/true")).unwrap();
    let out = podman.run(&rootfs, &[], &["/bin/true"]);
    if !out.status.success() {
        return skip(&format!(
            "podman cannot run a container here: {}",
            text(&out)
        ));
    }

    // The fake driver as a driver root: its libraries where Debian keeps the driver's,
    // and device nodes with /dev/null's numbers.
    let driver = host.join("driver");
    let libs = driver.join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&libs).unwrap();
    std::fs::copy(bench.build.join("libcuda.so"), libs.join("libcuda.so.1")).unwrap();
    std::fs::copy(
        bench.build.join("libnvidia_ml.so"),
        libs.join("libnvidia-ml.so.1"),
    )
    .unwrap();
    std::fs::create_dir_all(driver.join("dev")).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
        let made = Command::new("mknod")
            .args(["-m", "666"])
            .arg(driver.join("dev").join(node))
            .args(["c", "1", "3"])
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            return skip("mknod cannot make device nodes here");
        }
    }
    let id = std::process::id();
    let (a, b) = (format!("t{id}-a"), format!("t{id}-b"));
    let mut generate = bench.plain(&bench.build.join("gpuslice"));
    generate
        .args(["cdi", "generate"])
        .args(["--slice", &format!("{a}=0:1GiB")])
        .args(["--slice", &format!("{b}=0:1GiB")])
        .args(["--dev-root", &s(&driver), "--driver-root", &s(&driver)])
        .args(["--output-dir", &s(&host.join("cdi"))])
        .args(["--state-dir", &s(&host.join("state"))])
        .args(["--agent-dir", &s(&host.join("agent"))])
        .args(["--lib", &s(&bench.interposer())])
        .env("LD_LIBRARY_PATH", &libs);
    let out = output_within(&mut generate, Duration::from_secs(60));
    assert!(out.status.success(), "{}", text(&out));
    let spec = std::fs::read_to_string(host.join("cdi/gpuslice.io-slice.json")).unwrap();
    assert!(spec.contains("\"cdiVersion\": \"0.5.0\""), "{spec}");
    std::fs::create_dir_all("/var/run/cdi").unwrap();
    let installed = Installed(PathBuf::from(format!(
        "/var/run/cdi/gpuslice-test-{id}.json"
    )));
    std::fs::write(&installed.0, &spec).unwrap();

    // What every container gets besides its slice: the fake GPU's state (its memory),
    // shared with the host.
    let shared = |extra: &[&str]| -> Vec<String> {
        let mut flags = vec![
            "-v".to_string(),
            format!("{}:{}", s(host), s(host)),
            "-e".into(),
            format!("FAKE_GPU_STATE={}", s(&bench.state())),
            "-e".into(),
            "FAKE_CUDA_CONTEXT_BYTES=300MiB".into(),
        ];
        flags.extend(extra.iter().map(|e| e.to_string()));
        flags
    };
    let device = |slice: &str| format!("gpuslice.io/slice={slice}");

    // One container: the slice's limit, whatever the environment asks.
    let out = podman.run(
        &rootfs,
        &shared(&["--device", &device(&a), "-e", "GPUSLICE_MEMORY=64GiB"]),
        &[
            "/bin/cuda-probe",
            "init",
            "ctx",
            "meminfo",
            "alloc:600M",
            "alloc:601M",
        ],
    );
    let r = Report::from(&out);
    assert!(out.status.success(), "podman run failed: {}", text(&out));
    assert_eq!(r.num("meminfo", "total"), GIB, "{}", r.text());
    assert_eq!(r.rc("alloc:600M"), 0, "{}", r.text());
    // A context (300 MiB) and 600 MiB: another 601 MiB is past the slice.
    assert_ne!(r.rc("alloc:601M"), 0, "past the slice: {}", r.text());

    // Two containers of slice a share its 1 GiB; slice b is separate.
    let ready = host.join("holder-ready");
    let release = host.join("holder-release");
    let mut holder = podman.command();
    holder
        .args(RUN)
        .args(shared(&["--device", &device(&a)]))
        .arg("--rootfs")
        .arg(&rootfs)
        .args([
            "/bin/cuda-probe",
            "init",
            "ctx",
            "alloc:400M",
            &format!("ready:{}", s(&ready)),
            &format!("wait:{}", s(&release)),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let holder = holder.spawn().unwrap();
    wait_for(&ready, "the first container of slice a");
    let second = podman.run(
        &rootfs,
        &shared(&["--device", &device(&a)]),
        &["/bin/cuda-probe", "init", "ctx", "alloc:400M"],
    );
    let other = podman.run(
        &rootfs,
        &shared(&["--device", &device(&b)]),
        &["/bin/cuda-probe", "init", "ctx", "alloc:400M"],
    );
    std::fs::write(&release, b"go").unwrap();
    let held = holder.wait_with_output().unwrap();
    assert!(held.status.success(), "{}", text(&held));
    let r = Report::from(&second);
    assert!(second.status.success(), "{}", text(&second));
    // 300 + 400 MiB of the first and 300 MiB of this context: 400 more is past 1 GiB.
    assert_ne!(r.rc("alloc:400M"), 0, "slice a is shared: {}", r.text());
    let r = Report::from(&other);
    assert!(other.status.success(), "{}", text(&other));
    assert_eq!(r.rc("alloc:400M"), 0, "slice b is its own: {}", r.text());
    assert!(host.join(format!("state/slices/{a}/ledger")).exists());
    drop(installed);
}
