//! The test bench for end-to-end tests: a temporary "host" with the fake `libcuda.so.1`
//! and `libnvidia-ml.so.1` on the library path, a fake GPU state file shared by every
//! process, a ledger folder, and helpers that start `cuda-probe` (or any program) with
//! `libgpuslice.so` preloaded and parse what it prints.
//!
//! The cdylibs and binaries come from the workspace's target folder, so the tests need
//! `cargo build --workspace` first (the README's test command does it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;
/// The fake driver's UUID of device N (its default).
pub fn fake_uuid(n: u32) -> String {
    format!("GPU-00000000-0000-4000-8000-{n:012x}")
}

/// The folder with the workspace's build outputs (`target/debug`).
pub fn build_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> -> target/debug
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for needed in [
        "libgpuslice.so",
        "libcuda.so",
        "libnvidia_ml.so",
        "cuda-probe",
    ] {
        assert!(
            dir.join(needed).exists(),
            "{} is missing: run `cargo build --workspace` before the tests",
            dir.join(needed).display()
        );
    }
    dir
}

/// A temporary host with one fake GPU state.
#[derive(Debug)]
pub struct Bench {
    pub dir: tempfile::TempDir,
    pub build: PathBuf,
    pub env: Vec<(String, String)>,
}

impl Default for Bench {
    fn default() -> Self {
        Self::new()
    }
}

impl Bench {
    /// A host with one 80 GiB fake GPU and 300 MiB contexts.
    pub fn new() -> Self {
        let build = build_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        let libs = dir.path().join("lib");
        std::fs::create_dir_all(&libs).unwrap();
        // The ledger folder: gpuslice creates no folder but the per-user default one.
        std::fs::create_dir(dir.path().join("ledgers")).unwrap();
        std::os::unix::fs::symlink(build.join("libcuda.so"), libs.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink(
            build.join("libnvidia_ml.so"),
            libs.join("libnvidia-ml.so.1"),
        )
        .unwrap();
        let env = vec![
            ("LD_LIBRARY_PATH".into(), libs.display().to_string()),
            (
                "FAKE_GPU_STATE".into(),
                dir.path().join("gpu.state").display().to_string(),
            ),
            ("FAKE_GPU_MEMORY".into(), "80GiB".into()),
            ("FAKE_CUDA_CONTEXT_BYTES".into(), "300MiB".into()),
            (
                "GPUSLICE_LEDGER_DIR".into(),
                dir.path().join("ledgers").display().to_string(),
            ),
            (
                "GPUSLICE_GPU_DIR".into(),
                dir.path().join("gpus").display().to_string(),
            ),
        ];
        Self { dir, build, env }
    }

    /// Sets a variable for every process started from now on.
    pub fn set(&mut self, key: &str, value: &str) -> &mut Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
        self
    }

    /// Path of the fake GPU state.
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("gpu.state")
    }

    /// Path for a slice's ledger.
    pub fn ledger(&self, name: &str) -> PathBuf {
        self.dir
            .path()
            .join("ledgers")
            .join(format!("{name}.ledger"))
    }

    /// The interposer.
    pub fn interposer(&self) -> PathBuf {
        self.build.join("libgpuslice.so")
    }

    /// `gpuslice node --config CONFIG --node-name NODE` on the bench's host folder: its
    /// kubelet folder, state, CDI and driver-root folders, and the interposer. Tests add
    /// the flags of their own (`--no-agent`, `--metrics-addr`, ...).
    pub fn node(&self, config: &Path, node: &str, kubelet_dir: &Path) -> Command {
        let host = self.dir.path();
        let mut cmd = self.plain(&self.build.join("gpuslice"));
        cmd.arg("node")
            .arg("--config")
            .arg(config)
            .args(["--node-name", node])
            .arg("--kubelet-dir")
            .arg(kubelet_dir)
            .arg("--state-dir")
            .arg(host.join("state"))
            .arg("--cdi-dir")
            .arg(host.join("cdi"))
            .arg("--driver-root")
            .arg(host.join("root"))
            .arg("--lib")
            .arg(self.interposer());
        cmd
    }

    /// A command for `program` with the bench environment, without the interposer.
    pub fn plain(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_remove("LD_PRELOAD");
        for key in [
            "GPUSLICE_MEMORY",
            "GPUSLICE_LEDGER",
            "CUDA_DEVICE_MEMORY_LIMIT",
            "CUDA_VISIBLE_DEVICES",
            "GPUSLICE_LOG",
            "GPUSLICE_COMPUTE",
            "GPUSLICE_COMPUTE_BURST",
            "GPUSLICE_COMPUTE_METHOD",
            "CUDA_CORE_LIMIT",
            "CUDA_CORE_SOFT_LIMIT",
            "CUDA_DEVICE_SM_LIMIT",
            "FAKE_CUDA_KERNEL_US",
        ] {
            cmd.env_remove(key);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `cuda-probe` with the interposer preloaded and `extra` variables.
    pub fn probe(&self, extra: &[(&str, &str)], steps: &[&str]) -> Command {
        let mut cmd = self.plain(&self.build.join("cuda-probe"));
        cmd.env("LD_PRELOAD", self.interposer());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        cmd.args(steps);
        cmd
    }

    /// `cuda-probe` without the interposer (a process outside any slice).
    pub fn bare_probe(&self, steps: &[&str]) -> Command {
        let mut cmd = self.plain(&self.build.join("cuda-probe"));
        cmd.args(steps);
        cmd
    }

    /// Environment of a process in slice `name` limited to `limit` on every device.
    pub fn slice_env(&self, name: &str, limit: &str) -> Vec<(String, String)> {
        vec![
            ("GPUSLICE_MEMORY".into(), limit.into()),
            (
                "GPUSLICE_LEDGER".into(),
                self.ledger(name).display().to_string(),
            ),
        ]
    }

    /// Highest device memory ever in use on fake device `dev`, contexts included.
    pub fn peak(&self, dev: u32) -> u64 {
        fake_gpu::peak_physical(self.state(), dev as usize)
    }
}

/// How long [`run`] lets one command take before it is killed and the test fails: far
/// more than any command of these tests needs, even on a loaded machine, so that only a
/// hang reaches it.
pub const RUN_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Runs a command to its end like [`Command::output`], but kills it and panics (with
/// what it printed so far) if it has not ended after `limit`: a hang fails the test
/// instead of stopping the suite.
pub fn output_within(cmd: &mut Command, limit: std::time::Duration) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{cmd:?} did not end within {limit:?}; it printed:\n{}\n{}",
                String::from_utf8_lossy(&stdout.join().unwrap_or_default()),
                String::from_utf8_lossy(&stderr.join().unwrap_or_default())
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs a command (for at most [`RUN_LIMIT`]) and returns its parsed output, panicking
/// with everything it printed if it did not exit with 0.
pub fn run(cmd: &mut Command) -> Report {
    let out = output_within(cmd, RUN_LIMIT);
    let report = Report::from(&out);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        report.text()
    );
    report
}

/// What a probe printed: one line per step.
#[derive(Debug, Clone)]
pub struct Report {
    pub lines: Vec<String>,
    pub stderr: String,
    pub status: Option<i32>,
}

impl From<&Output> for Report {
    fn from(out: &Output) -> Self {
        Self {
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(str::to_string)
                .collect(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            status: out.status.code(),
        }
    }
}

impl Report {
    /// All output, for failure messages.
    pub fn text(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.lines.join("\n"),
            self.stderr
        )
    }

    /// The key=value fields of the first line whose step is `step`.
    pub fn step(&self, step: &str) -> HashMap<String, String> {
        let line = self
            .lines
            .iter()
            .find(|l| l.split(' ').next() == Some(step))
            .unwrap_or_else(|| panic!("no step {step} in\n{}", self.text()));
        line.split(' ')
            .skip(1)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A numeric field of a step.
    pub fn num(&self, step: &str, key: &str) -> u64 {
        let fields = self.step(step);
        fields
            .get(key)
            .unwrap_or_else(|| panic!("step {step} has no {key} in\n{}", self.text()))
            .parse()
            .unwrap_or_else(|_| panic!("step {step} field {key} is not a number"))
    }

    /// The return code of a step.
    pub fn rc(&self, step: &str) -> u64 {
        self.num(step, "rc")
    }
}

/// Waits up to 30 s for `path` to exist (a process's ready file); panics naming `what`.
pub fn wait_for(path: &Path, what: &str) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "timed out waiting for {what} ({})",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The PIDs a `cuda-probe` `pid:FILE` step wrote: (in its namespace, on the host).
pub fn pid_file(path: &Path) -> (u32, u32) {
    let text = std::fs::read_to_string(path).expect("pid file");
    let field = |k: &str| -> u32 {
        text.split(' ')
            .find_map(|kv| kv.strip_prefix(k))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {k} in {text:?}"))
    };
    (field("ns="), field("host="))
}

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The first OCI runtime (runc, crun) that runs a trivial container here, or why none
/// does (not root, no python3 to write bundles, no runtime that works).
pub fn oci_runtime(bench: &Bench) -> Result<String, String> {
    if is_root() {
        for candidate in ["runc", "crun"] {
            let bundle = bench.dir.path().join(format!("probe-{candidate}"));
            let made = Command::new("python3")
                .arg(repo().join("tests/gpu/container_bundle.py"))
                .args(["--bundle"])
                .arg(&bundle)
                .args([
                    "--name",
                    "probe",
                    "--env",
                    "PATH=/usr/bin:/bin",
                    "--",
                    "true",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !made {
                return Err("python3 cannot write a bundle".into());
            }
            let ran = Command::new(candidate)
                .arg("--root")
                .arg(bench.dir.path().join("runtime-state"))
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("gs-probe-{}", std::process::id()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ran {
                return Ok(candidate.to_string());
            }
        }
        Err("neither runc nor crun runs a container here".into())
    } else {
        Err("needs root".into())
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Writes the OCI bundle `bundle` of a container named `name` (tests/gpu/container_bundle.py)
/// whose process is `sh -c script`: the host's file system as its image, the build folder
/// bound read-only and `host` read-write, and the image environment a user would give it:
/// `PATH`, where its CUDA driver is (the fake GPU's variables) and a try at a bigger slice,
/// `GPUSLICE_MEMORY=64GiB`, which a slice device's edits must replace. No LD_PRELOAD.
pub fn probe_bundle(bench: &Bench, bundle: &Path, name: &str, host: &Path, script: &str) {
    let mut make = Command::new("python3");
    make.arg(repo().join("tests/gpu/container_bundle.py"))
        .arg("--bundle")
        .arg(bundle)
        .args(["--name", name])
        .args(["--bind", &format!("{}:ro", bench.build.display())])
        .args(["--bind", &format!("{}:rw", host.display())])
        .args(["--env", "PATH=/usr/bin:/bin"]);
    for (k, v) in &bench.env {
        if k.starts_with("FAKE_") || k == "LD_LIBRARY_PATH" {
            make.args(["--env", &format!("{k}={v}")]);
        }
    }
    make.args(["--env", "GPUSLICE_MEMORY=64GiB", "--", "sh", "-c", script]);
    let made = output_within(&mut make, std::time::Duration::from_secs(60));
    assert!(
        made.status.success(),
        "container_bundle.py: {}",
        String::from_utf8_lossy(&made.stderr)
    );
}

/// Applies CDI device `device` (from the specs in `spec_dir`) to the OCI bundle `bundle`
/// with `gpuslice-cdi-inject`, as a CDI-aware runtime would, rewriting its
/// `config.json`; panics with the tool's message if it refuses.
pub fn inject_cdi_device(bench: &Bench, spec_dir: &Path, device: &str, bundle: &Path) {
    use std::io::Write;
    let config = std::fs::read(bundle.join("config.json")).expect("the bundle's config.json");
    let mut inject = Command::new(bench.build.join("gpuslice-cdi-inject"))
        .arg("--spec-dir")
        .arg(spec_dir)
        .args(["--device", device])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gpuslice-cdi-inject");
    inject
        .stdin
        .take()
        .expect("its stdin")
        .write_all(&config)
        .expect("write the config");
    let injected = inject.wait_with_output().expect("gpuslice-cdi-inject");
    assert!(
        injected.status.success(),
        "{}",
        String::from_utf8_lossy(&injected.stderr)
    );
    std::fs::write(bundle.join("config.json"), &injected.stdout).expect("write config.json");
}

/// Runs the OCI bundle `bundle` as container `id` with `runtime` (state under
/// `state_root`), for at most `limit`.
pub fn run_container(
    runtime: &str,
    state_root: &Path,
    bundle: &Path,
    id: &str,
    limit: std::time::Duration,
) -> Output {
    let mut run = Command::new(runtime);
    run.arg("--root")
        .arg(state_root)
        .args(["run", "--bundle"])
        .arg(bundle)
        .arg(id)
        .stdin(Stdio::null());
    output_within(&mut run, limit)
}

/// `GET <path>` from the HTTP server at `addr` (`/metrics` of `gpuslice agent`): the
/// status line and headers, and the body.
pub fn http_get(addr: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP server");
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: gpuslice\r\n\r\n").as_bytes())
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read the answer");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.to_string(), body.to_string())
}

/// Device nodes standing for the GPU's under `host`/root/dev (links to `/dev/null`), as
/// CDI specs and the node name them; returns that folder.
pub fn fake_device_nodes(host: &Path) -> PathBuf {
    let dev = host.join("root/dev");
    std::fs::create_dir_all(&dev).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
        std::os::unix::fs::symlink("/dev/null", dev.join(node)).unwrap();
    }
    dev
}

/// The address `gpuslice agent` logged (in the file `log`) for its `/metrics`.
pub fn metrics_addr(log: &Path) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(rest) = text.split("serving metrics on http://").nth(1) {
            return rest
                .split("/metrics")
                .next()
                .expect("an address")
                .to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never served metrics:\n{text}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
