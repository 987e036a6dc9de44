//! The NVML view end to end, on each simulated driver branch (`FAKE_NVML_PID_MODE`), with
//! real PID namespaces: two "containers" (`unshare --pid --fork`, without `--mount-proc`
//! so that the fakes can read host PIDs from `/proc`), each a slice with GPU processes,
//! plus a host process on the same GPU, and `gpuslice agent` on a temporary socket in the
//! host namespace. An NVML client inside container A (`cuda-probe` with NVML steps,
//! entering A's namespace with `nsenter`) must see exactly A's processes under A's PIDs
//! with their memory, the slice's memory, A's utilization samples, accounting and
//! sessions, and nothing of container B or of the host.
//!
//! These tests need root (PID namespaces); without it each prints why it was skipped.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::{Bench, GIB, MIB, Report, pid_file, run, wait_for};

const CONTEXT: u64 = 300 * MIB;
const A_LIMIT: &str = "2GiB";
const NVML_ERROR_NOT_FOUND: u64 = 6;

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["--pid", "--fork", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        && Command::new("nsenter")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

macro_rules! require_namespaces {
    ($name:literal) => {
        if !unshare_works() {
            eprintln!(
                "SKIPPED {}: needs root and util-linux to make PID namespaces (`unshare --pid --fork` and `nsenter` failed here)",
                $name
            );
            return;
        }
    };
}

/// A process's PID in its namespace and on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pids {
    ns: u32,
    host: u32,
}

fn read_pids(path: &Path) -> Pids {
    let (ns, host) = pid_file(path);
    Pids { ns, host }
}

/// Two containers, a host process and (optionally) the agent, on one fake GPU.
struct World {
    bench: Bench,
    mode: &'static str,
    socket: Option<PathBuf>,
    agent: Option<Child>,
    agent_log: PathBuf,
    children: Vec<Child>,
    a1: Pids,
    a2: Pids,
    b1: Pids,
    host: Pids,
}

impl World {
    fn new(mode: &'static str, with_agent: bool) -> Self {
        let mut bench = Bench::new();
        bench.set("FAKE_NVML_PID_MODE", mode);
        let dir = bench.dir.path().to_path_buf();
        let gpuslice = bench.build.join("gpuslice");
        assert!(gpuslice.exists(), "{} is missing", gpuslice.display());
        let agent_log = dir.join("agent.log");
        let mut world = World {
            bench,
            mode,
            socket: None,
            agent: None,
            agent_log: agent_log.clone(),
            children: Vec::new(),
            a1: Pids { ns: 0, host: 0 },
            a2: Pids { ns: 0, host: 0 },
            b1: Pids { ns: 0, host: 0 },
            host: Pids { ns: 0, host: 0 },
        };
        if with_agent {
            let socket = dir.join("run/agent/agent.sock");
            let log = std::fs::File::create(&agent_log).unwrap();
            let child = world
                .bench
                .plain(&gpuslice)
                .args(["agent", "--verbose", "--socket"])
                .arg(&socket)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start gpuslice agent");
            world.agent = Some(child);
            let start = Instant::now();
            while !socket.exists() {
                if start.elapsed() > Duration::from_secs(30) {
                    panic!("the agent did not listen: {}", world.agent_text());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            world.socket = Some(socket);
        }
        // The host process, in no slice.
        let h = world
            .bench
            .bare_probe(&[
                "init",
                "ctx",
                "alloc:100M",
                &world.file_step("pid", "h.pid"),
                &world.file_step("ready", "h.ready"),
                &world.file_step("wait", "done"),
            ])
            .env("FAKE_CUDA_SM_UTIL", "40")
            .env("FAKE_CUDA_ENCODER_SESSIONS", "1")
            .env("FAKE_CUDA_FBC_SESSIONS", "1")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        world.children.push(h);
        // Container A: its first GPU process is the namespace's PID 1.
        let a1 = world.in_new_namespace(
            "a",
            &[
                ("FAKE_CUDA_SM_UTIL", "25"),
                ("FAKE_CUDA_ENCODER_SESSIONS", "1"),
                ("FAKE_CUDA_FBC_SESSIONS", "1"),
            ],
            &["init", "ctx", "alloc:200M"],
            "a1",
        );
        world.children.push(a1);
        world.a1 = world.pids_of("a1");
        // A second GPU process in A.
        let a2 = world.in_namespace_of(
            world.a1.host,
            "a",
            &[("FAKE_CUDA_SM_UTIL", "35")],
            &["init", "ctx", "alloc:64M"],
            "a2",
        );
        world.children.push(a2);
        // Container B.
        let b1 = world.in_new_namespace(
            "b",
            &[
                ("FAKE_CUDA_SM_UTIL", "30"),
                ("FAKE_CUDA_ENCODER_SESSIONS", "2"),
                ("FAKE_CUDA_FBC_SESSIONS", "1"),
            ],
            &["init", "ctx", "alloc:300M"],
            "b1",
        );
        world.children.push(b1);
        world.a2 = world.pids_of("a2");
        world.b1 = world.pids_of("b1");
        world.host = world.pids_of("h");
        assert_eq!(
            world.host.ns, world.host.host,
            "the host process is in the host namespace"
        );
        assert_ne!(world.a1.ns, world.a1.host, "container A is a PID namespace");
        world
    }

    fn file(&self, name: &str) -> PathBuf {
        self.bench.dir.path().join(name)
    }

    fn file_step(&self, step: &str, name: &str) -> String {
        format!("{step}:{}", self.file(name).display())
    }

    fn pids_of(&self, tag: &str) -> Pids {
        wait_for(&self.file(&format!("{tag}.ready")), tag);
        read_pids(&self.file(&format!("{tag}.pid")))
    }

    fn agent_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.agent_log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// The environment of a process of slice `slice` (with the agent when there is one).
    fn slice_env(&self, slice: &str) -> Vec<(String, String)> {
        let mut env = self.bench.slice_env(slice, A_LIMIT);
        env.push((
            "LD_PRELOAD".into(),
            self.bench.interposer().display().to_string(),
        ));
        if let Some(s) = &self.socket {
            env.push(("GPUSLICE_AGENT_SOCKET".into(), s.display().to_string()));
        }
        env
    }

    fn gpu_steps(&self, steps: &[&str], tag: &str) -> Vec<String> {
        let mut all: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        all.push(self.file_step("pid", &format!("{tag}.pid")));
        all.push(self.file_step("ready", &format!("{tag}.ready")));
        all.push(self.file_step("wait", "done"));
        all
    }

    fn in_new_namespace(
        &self,
        slice: &str,
        extra: &[(&str, &str)],
        steps: &[&str],
        tag: &str,
    ) -> Child {
        let mut cmd = self.bench.plain(Path::new("unshare"));
        cmd.args(["--pid", "--fork", "--kill-child"])
            .arg(self.bench.build.join("cuda-probe"))
            .args(self.gpu_steps(steps, tag))
            .envs(self.slice_env(slice))
            .envs(extra.iter().copied())
            .stdout(Stdio::null());
        cmd.spawn().expect("unshare")
    }

    fn in_namespace_of(
        &self,
        target: u32,
        slice: &str,
        extra: &[(&str, &str)],
        steps: &[&str],
        tag: &str,
    ) -> Child {
        let mut cmd = self.nsenter(target);
        cmd.args(self.gpu_steps(steps, tag))
            .envs(self.slice_env(slice))
            .envs(extra.iter().copied())
            .stdout(Stdio::null());
        cmd.spawn().expect("nsenter")
    }

    fn nsenter(&self, target: u32) -> Command {
        let mut cmd = self.bench.plain(Path::new("nsenter"));
        cmd.args(["--target", &target.to_string(), "--pid", "--"])
            .arg(self.bench.build.join("cuda-probe"));
        cmd
    }

    /// Runs NVML steps in container A as a process of slice A.
    fn client_in_a(&self, steps: &[&str]) -> Report {
        let mut cmd = self.nsenter(self.a1.host);
        cmd.args(steps).envs(self.slice_env("a"));
        run(&mut cmd)
    }

    /// Runs NVML steps in container A as a process in no slice (interposer loaded).
    fn bare_client_in_a(&self, steps: &[&str]) -> Report {
        let mut cmd = self.nsenter(self.a1.host);
        cmd.args(steps).env("LD_PRELOAD", self.bench.interposer());
        run(&mut cmd)
    }

    /// Slice A's ledger: (limit, used, per ns PID its charge) on the fake GPU.
    fn ledger_a(&self) -> (u64, u64, Vec<(u32, u64)>) {
        let ledger = gpuslice_ledger::Ledger::open(&self.bench.ledger("a")).expect("ledger a");
        let dev = ledger.devices().into_iter().next().expect("a device entry");
        let charges = ledger
            .processes()
            .into_iter()
            .filter(|p| p.charges[dev.slot.index()] > 0)
            .map(|p| (p.pid, p.charges[dev.slot.index()]))
            .collect();
        (dev.limit, dev.used, charges)
    }

    fn host_pids(&self) -> [u32; 4] {
        [self.a1.host, self.a2.host, self.b1.host, self.host.host]
    }

    /// The expected process list of A as the probe prints it.
    fn a_list(&self, a1_mem: u64, a2_mem: u64) -> String {
        let mut items = [(self.a1.ns, a1_mem), (self.a2.ns, a2_mem)];
        items.sort();
        items
            .iter()
            .map(|(p, m)| format!("{p}:{m}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::write(self.file("done"), b"done");
        for mut c in self.children.drain(..) {
            let start = Instant::now();
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }
}

/// Every PID that appears in a `list=` field of any step.
fn listed_pids(r: &Report) -> Vec<u32> {
    r.lines
        .iter()
        .filter_map(|l| l.split(' ').find_map(|kv| kv.strip_prefix("list=")))
        .flat_map(|list| {
            list.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .filter_map(|item| item.split(':').next().and_then(|p| p.parse().ok()))
        .collect()
}

fn list(r: &Report, step: &str) -> String {
    r.step(step).get("list").cloned().unwrap_or_default()
}

const ALL_STEPS: &[&str] = &[
    "nvml-mem:0",
    "nvml-procs:0:v1",
    "nvml-procs:0:v2",
    "nvml-procs:0:v3",
    "nvml-procs:0:detail",
    "nvml-procs:0:graphics",
    "nvml-procs:0:graphics-v3",
    "nvml-procs:0:mps",
    "nvml-procs:0:mps-v3",
    "nvml-samples:0",
    "nvml-samples2:0",
    "nvml-rates:0",
    "nvml-acct:0",
    "nvml-enc:0",
    "nvml-fbc:0",
    "nvml-resolve:nvmlDeviceGetMemoryInfo_v2",
    "nvml-resolve:nvmlDeviceGetComputeRunningProcesses_v3",
];

/// What a client in A must see when the agent answers, whatever the driver does.
fn check_with_agent(mode: &'static str, expected_probe: &str) {
    let w = World::new(mode, true);
    assert!(
        w.agent_text()
            .contains(&format!("driver mode {expected_probe} ")),
        "the probe should find mode {expected_probe} for FAKE_NVML_PID_MODE={}: {}",
        w.mode,
        w.agent_text()
    );
    let r = w.client_in_a(ALL_STEPS);
    let text = r.text();
    // Memory: the slice.
    let (limit, used, _) = w.ledger_a();
    assert_eq!(limit, 2 * GIB);
    assert!(
        used >= CONTEXT * 2 + 264 * MIB,
        "ledger usage {used}: {text}"
    );
    assert_eq!(r.rc("nvml-mem:0"), 0, "{text}");
    assert_eq!(r.num("nvml-mem:0", "total"), limit, "{text}");
    assert_eq!(r.num("nvml-mem:0", "used"), used, "{text}");
    assert_eq!(r.num("nvml-mem:0", "free"), limit - used, "{text}");
    assert_eq!(r.num("nvml-mem:0", "rc2"), 0, "{text}");
    assert_eq!(r.num("nvml-mem:0", "total2"), limit, "{text}");
    assert_eq!(r.num("nvml-mem:0", "used2"), used, "{text}");
    assert_eq!(r.num("nvml-mem:0", "free2"), limit - used, "{text}");
    assert_eq!(r.num("nvml-mem:0", "reserved2"), 0, "{text}");
    // Processes: exactly A's, under A's PIDs, with what the host sees them use.
    let want = w.a_list(CONTEXT + 200 * MIB, CONTEXT + 64 * MIB);
    for step in [
        "nvml-procs:0:v1",
        "nvml-procs:0:v2",
        "nvml-procs:0:v3",
        "nvml-procs:0:detail",
    ] {
        assert_eq!(r.rc(step), 0, "{step}: {text}");
        assert_eq!(list(&r, step), want, "{step}: {text}");
    }
    // The count query with no array answers "insufficient size" with the count.
    assert_eq!(r.num("nvml-procs:0:v3", "rc0"), 7, "{text}");
    assert_eq!(r.num("nvml-procs:0:v3", "count0"), 2, "{text}");
    for step in [
        "nvml-procs:0:graphics",
        "nvml-procs:0:graphics-v3",
        "nvml-procs:0:mps",
        "nvml-procs:0:mps-v3",
    ] {
        assert_eq!(r.rc(step), 0, "{step}: {text}");
        assert_eq!(list(&r, step), "", "{step}: {text}");
    }
    // Utilization: A's samples only, with A's PIDs; the GPU's utilization is A's share.
    let mut samples = [(w.a1.ns, 25), (w.a2.ns, 35)];
    samples.sort();
    let want_samples: Vec<String> = samples.iter().map(|(p, s)| format!("{p}:{s}:0")).collect();
    assert_eq!(r.rc("nvml-samples:0"), 0, "{text}");
    assert_eq!(list(&r, "nvml-samples:0"), want_samples.join(","), "{text}");
    let want_samples2: Vec<String> = samples.iter().map(|(p, s)| format!("{p}:{s}")).collect();
    assert_eq!(
        list(&r, "nvml-samples2:0"),
        want_samples2.join(","),
        "{text}"
    );
    assert_eq!(r.num("nvml-rates:0", "gpu"), 60, "{text}");
    // Accounting and sessions: A's processes, A's PIDs.
    let mut acct = [
        (w.a1.ns, 25, CONTEXT + 200 * MIB),
        (w.a2.ns, 35, CONTEXT + 64 * MIB),
    ];
    acct.sort();
    let want_acct: Vec<String> = acct
        .iter()
        .map(|(p, u, m)| format!("{p}:0:{u}:{m}"))
        .collect();
    assert_eq!(list(&r, "nvml-acct:0"), want_acct.join(","), "{text}");
    let enc = list(&r, "nvml-enc:0");
    assert_eq!(
        enc.split(',')
            .map(|i| i.split(':').next().unwrap())
            .collect::<Vec<_>>(),
        [w.a1.ns.to_string()],
        "{text}"
    );
    assert_eq!(r.num("nvml-enc:0", "count0"), 1, "{text}");
    let fbc = list(&r, "nvml-fbc:0");
    assert_eq!(
        fbc.split(':').next(),
        Some(w.a1.ns.to_string().as_str()),
        "{text}"
    );
    assert_eq!(r.num("nvml-fbc:0", "n"), 1, "{text}");
    // No host PID ever appears.
    for pid in listed_pids(&r) {
        assert!(
            !w.host_pids().contains(&pid),
            "host PID {pid} leaked: {text}"
        );
    }
    // Found through the handle (nvidia-smi) and by symbol (programs linked to NVML).
    for step in [
        "nvml-resolve:nvmlDeviceGetMemoryInfo_v2",
        "nvml-resolve:nvmlDeviceGetComputeRunningProcesses_v3",
    ] {
        let f = r.step(step);
        assert_eq!(
            f.get("handle").map(String::as_str),
            Some("libgpuslice.so"),
            "{text}"
        );
        assert_eq!(
            f.get("default").map(String::as_str),
            Some("libgpuslice.so"),
            "{text}"
        );
    }
    // The agent logged its answer to A's caller.
    assert!(
        w.agent_text().contains("GPU process(es) of its container"),
        "{}",
        w.agent_text()
    );
    // nvidia-smi's own table: the driver's process-list ioctls, which the interposer
    // rewrites where the driver needs it (the fake answers them behind a seccomp trap).
    let want = w.a_list(CONTEXT + 200 * MIB, CONTEXT + 64 * MIB);
    let r = w.client_in_a(&["nvml-smi:0"]);
    assert_eq!(r.rc("nvml-smi:0"), 0, "{}", r.text());
    assert_eq!(list(&r, "nvml-smi:0"), want, "{mode}: {}", r.text());
    assert_eq!(r.num("nvml-smi:0", "answered"), 2, "{}", r.text());
    // Without the rewriting, the driver's own answer: every host PID on a driver that
    // shows host PIDs, no memory on one that loses it.
    let mut cmd = w.nsenter(w.a1.host);
    cmd.args(["nvml-smi:0"])
        .envs(w.slice_env("a"))
        .env("GPUSLICE_SMI_IOCTL", "off");
    let raw = list(&run(&mut cmd), "nvml-smi:0");
    match mode {
        "host-pids" => {
            let mut hosts: Vec<u32> = w.host_pids().to_vec();
            hosts.sort_unstable();
            let listed: Vec<u32> = raw
                .split(',')
                .filter_map(|i| i.split(':').next()?.parse().ok())
                .collect();
            assert_eq!(listed, hosts, "{raw}");
        }
        "translated-broken-memory" => {
            assert_eq!(
                raw,
                want.replace(&format!(":{}", CONTEXT + 200 * MIB), ":na")
                    .replace(&format!(":{}", CONTEXT + 64 * MIB), ":na"),
                "{raw}"
            );
        }
        _ => assert_eq!(raw, want, "a translating driver needs nothing"),
    }
}

#[test]
fn with_the_agent_on_a_driver_that_shows_host_pids() {
    require_namespaces!("with_the_agent_on_a_driver_that_shows_host_pids");
    check_with_agent("host-pids", "host-pids");
}

#[test]
fn with_the_agent_on_a_driver_that_loses_per_process_memory() {
    require_namespaces!("with_the_agent_on_a_driver_that_loses_per_process_memory");
    check_with_agent("translated-broken-memory", "translated-broken-memory");
}

#[test]
fn with_the_agent_on_a_driver_that_translates() {
    require_namespaces!("with_the_agent_on_a_driver_that_translates");
    check_with_agent("translated", "translated");
}

#[test]
fn without_the_agent_a_translating_driver_is_cut_down_to_the_slice() {
    require_namespaces!("without_the_agent_a_translating_driver_is_cut_down_to_the_slice");
    let w = World::new("translated", false);
    let r = w.client_in_a(ALL_STEPS);
    let text = r.text();
    let (limit, used, _) = w.ledger_a();
    assert_eq!(r.num("nvml-mem:0", "total2"), limit, "{text}");
    assert_eq!(r.num("nvml-mem:0", "used2"), used, "{text}");
    let want = w.a_list(CONTEXT + 200 * MIB, CONTEXT + 64 * MIB);
    for step in ["nvml-procs:0:v1", "nvml-procs:0:v3", "nvml-procs:0:detail"] {
        assert_eq!(list(&r, step), want, "{step}: {text}");
    }
    // Own samples come translated on this branch; B's and the host's keep host PIDs
    // and are dropped.
    let mut samples = [(w.a1.ns, 25), (w.a2.ns, 35)];
    samples.sort();
    let want_samples: Vec<String> = samples.iter().map(|(p, s)| format!("{p}:{s}:0")).collect();
    assert_eq!(list(&r, "nvml-samples:0"), want_samples.join(","), "{text}");
    assert_eq!(r.num("nvml-rates:0", "gpu"), 60, "{text}");
    // Accounting and sessions carry host PIDs on every branch: without the agent,
    // none is shown inside a namespace.
    assert_eq!(list(&r, "nvml-acct:0"), "", "{text}");
    assert_eq!(list(&r, "nvml-enc:0"), "", "{text}");
    assert_eq!(list(&r, "nvml-fbc:0"), "", "{text}");
    for pid in listed_pids(&r) {
        assert!(
            !w.host_pids().contains(&pid),
            "host PID {pid} leaked: {text}"
        );
    }
    // A process of the container that is in no slice sees the driver untouched: the
    // whole GPU, and the samples of other namespaces under host PIDs.
    let bare = w.bare_client_in_a(&["nvml-mem:0", "nvml-procs:0:v3", "nvml-samples:0"]);
    assert_eq!(
        bare.num("nvml-mem:0", "total2"),
        80 * GIB,
        "{}",
        bare.text()
    );
    assert_eq!(list(&bare, "nvml-procs:0:v3"), want, "{}", bare.text());
    assert!(
        listed_pids(&bare).contains(&w.b1.host),
        "the raw driver leaks B's sample: {}",
        bare.text()
    );
}

#[test]
fn without_the_agent_a_driver_with_host_pids_shows_no_process_rather_than_wrong_ones() {
    require_namespaces!(
        "without_the_agent_a_driver_with_host_pids_shows_no_process_rather_than_wrong_ones"
    );
    let w = World::new("host-pids", false);
    let r = w.client_in_a(ALL_STEPS);
    let text = r.text();
    let (limit, used, _) = w.ledger_a();
    assert_eq!(r.num("nvml-mem:0", "total"), limit, "{text}");
    assert_eq!(r.num("nvml-mem:0", "used2"), used, "{text}");
    for step in [
        "nvml-procs:0:v1",
        "nvml-procs:0:v2",
        "nvml-procs:0:v3",
        "nvml-procs:0:detail",
    ] {
        assert_eq!(r.rc(step), 0, "{step}: {text}");
        assert_eq!(list(&r, step), "", "{step}: {text}");
    }
    assert_eq!(r.rc("nvml-samples:0"), NVML_ERROR_NOT_FOUND, "{text}");
    assert_eq!(r.num("nvml-rates:0", "gpu"), 0, "{text}");
    assert!(listed_pids(&r).is_empty(), "{text}");
    // The raw driver would have shown every host PID.
    let bare = w.bare_client_in_a(&["nvml-procs:0:v3"]);
    let raw = listed_pids(&bare);
    for pid in w.host_pids() {
        assert!(raw.contains(&pid), "{}", bare.text());
    }
}

#[test]
fn without_the_agent_broken_per_process_memory_comes_from_the_ledger() {
    require_namespaces!("without_the_agent_broken_per_process_memory_comes_from_the_ledger");
    let w = World::new("translated-broken-memory", false);
    let r = w.client_in_a(&[
        "nvml-procs:0:v3",
        "nvml-procs:0:v1",
        "nvml-samples:0",
        "nvml-mem:0",
    ]);
    let text = r.text();
    let (limit, _, charges) = w.ledger_a();
    let charge = |pid: u32| {
        charges
            .iter()
            .find(|(p, _)| *p == pid)
            .map(|(_, c)| *c)
            .unwrap_or_else(|| panic!("no ledger charge of {pid}: {charges:?}"))
    };
    let want = w.a_list(charge(w.a1.ns), charge(w.a2.ns));
    assert_eq!(list(&r, "nvml-procs:0:v3"), want, "{text}");
    assert_eq!(list(&r, "nvml-procs:0:v1"), want, "{text}");
    // Own samples carry host PIDs on this branch: none can be attributed.
    assert_eq!(r.rc("nvml-samples:0"), NVML_ERROR_NOT_FOUND, "{text}");
    assert_eq!(r.num("nvml-mem:0", "total"), limit, "{text}");
    for pid in listed_pids(&r) {
        assert!(
            !w.host_pids().contains(&pid),
            "host PID {pid} leaked: {text}"
        );
    }
}

#[test]
fn an_unreachable_agent_is_logged_once_and_the_driver_view_is_used() {
    require_namespaces!("an_unreachable_agent_is_logged_once_and_the_driver_view_is_used");
    let w = World::new("translated", false);
    let mut cmd = w.nsenter(w.a1.host);
    cmd.args(["nvml-procs:0:v3", "nvml-procs:0:v1", "nvml-samples:0"])
        .envs(w.slice_env("a"))
        .env("GPUSLICE_AGENT_SOCKET", w.file("no-agent.sock"));
    let r = run(&mut cmd);
    let want = w.a_list(CONTEXT + 200 * MIB, CONTEXT + 64 * MIB);
    assert_eq!(list(&r, "nvml-procs:0:v3"), want, "{}", r.text());
    assert_eq!(list(&r, "nvml-procs:0:v1"), want, "{}", r.text());
    assert_eq!(
        r.stderr
            .matches("cannot connect to the gpuslice agent")
            .count(),
        1,
        "{}",
        r.text()
    );
    assert!(r.stderr.contains("no-agent.sock"), "{}", r.text());
}
