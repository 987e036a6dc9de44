//! Host-side memory enforcement by `gpuslice agent`, end to end on the fake driver.
//! `gpuslice cdi generate` writes two slices' pinned configurations; "containers" are
//! private mount and PID namespaces with a slice's file bind-mounted read-only at
//! `/run/gpuslice/slice.env`, as the CDI spec mounts it. Their processes run without
//! the interposer, as a process that gets past it would: the agent must kill the one
//! that takes its slice past its limit, and only that one; a process of another slice
//! and a host process, however large, are left alone. And the ledger entries of a
//! container killed as a whole, which no later container of the slice can tell are dead,
//! are freed by the agent.
//!
//! Needs root (namespaces and mounts); without it the test prints why it was skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use system_tests::{Bench, http_get, metrics_addr, pid_file, run, wait_for};

fn namespaces_work() -> bool {
    Command::new("unshare")
        .args(["--mount", "--pid", "--fork", "--propagation", "private"])
        .args(["sh", "-c", "mount -t tmpfs gschk /run"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn alive(pid: u32) -> bool {
    // A killed process stays a zombie until `unshare` reaps it.
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z'))
    })
}

struct World {
    bench: Bench,
    state: PathBuf,
    agent: Option<Child>,
    agent_log: PathBuf,
    children: Vec<Child>,
}

impl World {
    fn file(&self, name: &str) -> PathBuf {
        self.bench.dir.path().join(name)
    }

    /// A `cuda-probe` without the interposer, in a "container" of `slice` (none: on the
    /// host), that runs `steps`, writes its PIDs to `<tag>.pid` and waits.
    fn start(&mut self, slice: Option<&str>, steps: &[&str], tag: &str) -> u32 {
        self.start_with(slice, false, steps, tag)
    }

    /// [`World::start`], with the interposer preloaded when `preload` is set.
    fn start_with(&mut self, slice: Option<&str>, preload: bool, steps: &[&str], tag: &str) -> u32 {
        let pid_path = self.file(&format!("{tag}.pid"));
        let ready = self.file(&format!("{tag}.ready"));
        let mut args: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        args.push(format!("pid:{}", pid_path.display()));
        args.push(format!("ready:{}", ready.display()));
        args.push(format!("wait:{}", self.file("done").display()));
        let probe = self.bench.build.join("cuda-probe");
        let mut cmd = match slice {
            None => {
                let mut c = self.bench.plain(&probe);
                c.args(&args);
                c
            }
            Some(name) => {
                let config = self.state.join(format!("config/{name}.env"));
                let folder = self.state.join(format!("slices/{name}"));
                let script = "set -e; mount -t tmpfs gs /run; mkdir -p /run/gpuslice/slice; \
                    touch /run/gpuslice/slice.env; \
                    mount --bind \"$GS_CONFIG\" /run/gpuslice/slice.env; \
                    mount -o remount,bind,ro /run/gpuslice/slice.env; \
                    mount --bind \"$GS_FOLDER\" /run/gpuslice/slice; exec \"$@\"";
                let mut c = self.bench.plain(Path::new("unshare"));
                c.args(["--mount", "--pid", "--fork", "--kill-child"])
                    .args(["--propagation", "private", "sh", "-c", script, "sh"])
                    .arg(&probe)
                    .args(&args)
                    .env("GS_CONFIG", &config)
                    .env("GS_FOLDER", &folder);
                c
            }
        };
        if preload {
            cmd.env("LD_PRELOAD", self.bench.interposer());
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start a process");
        self.children.push(child);
        wait_for(&ready, tag);
        pid_file(&pid_path).1
    }

    fn agent_text(&self) -> String {
        std::fs::read_to_string(&self.agent_log).unwrap_or_default()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::write(self.file("done"), b"done");
        if let Some(mut a) = self.agent.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The host: fake device nodes, two slices (a: 1 GiB, b: 2 GiB) written by
/// `gpuslice cdi generate` on the fake NVML.
fn world() -> World {
    let bench = Bench::new();
    let host = bench.dir.path().to_path_buf();
    let s = |p: &Path| p.display().to_string();
    system_tests::fake_device_nodes(&host);
    let state = host.join("state");
    let r = run(bench
        .plain(&bench.build.join("gpuslice"))
        .args([
            "cdi", "generate", "--slice", "a=0:1GiB", "--slice", "b=0:2GiB",
        ])
        .args(["--driver-libs", "off"])
        .args(["--dev-root", &s(&host.join("root"))])
        .args(["--output-dir", &s(&host.join("cdi"))])
        .args(["--state-dir", &s(&state)])
        .args(["--agent-dir", &s(&host.join("agent"))])
        .args(["--lib", &s(&bench.interposer())]));
    assert!(state.join("config/a.env").exists(), "{}", r.text());

    World {
        bench,
        state,
        agent: None,
        agent_log: host.join("agent.log"),
        children: Vec::new(),
    }
}

/// Starts `gpuslice agent` on the world's state folder, looking every 100 ms.
fn start_agent(world: &mut World) {
    start_agent_with(world, &[]);
}

/// [`start_agent`] with more flags.
fn start_agent_with(world: &mut World, flags: &[&str]) {
    let host = world.bench.dir.path().to_path_buf();
    let state = world.state.clone();
    let agent_log = world.agent_log.clone();
    let socket = host.join("agent/agent.sock");
    let log = std::fs::File::create(&agent_log).unwrap();
    let agent = world
        .bench
        .plain(&world.bench.build.join("gpuslice"))
        .args(["agent", "--no-probe", "--enforce-interval-ms", "100"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(flags)
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start gpuslice agent");
    world.agent = Some(agent);
    wait_for(&socket, "the agent's socket");
}

#[test]
fn the_agent_kills_the_process_that_takes_its_slice_past_the_limit_and_nothing_else() {
    if !namespaces_work() {
        eprintln!(
            "SKIPPED the_agent_kills_the_process_that_takes_its_slice_past_the_limit: needs root and util-linux (`unshare --mount --pid` failed here)"
        );
        return;
    }
    let mut world = world();
    // Every process, with its 300 MiB context (fake): slice a holds 400 MiB with `small`.
    let small = world.start(Some("a"), &["init", "ctx", "alloc:100M"], "small");
    let other = world.start(Some("b"), &["init", "ctx", "alloc:1500M"], "other");
    let on_host = world.start(None, &["init", "ctx", "alloc:6G"], "host");
    start_agent(&mut world);

    // Within their limits: a few looks later, everyone is alive.
    std::thread::sleep(Duration::from_millis(800));
    for (pid, what) in [(small, "small"), (other, "other"), (on_host, "host")] {
        assert!(
            alive(pid),
            "{what} ({pid}) was killed: {}",
            world.agent_text()
        );
    }
    assert!(
        world.agent_text().contains("enforcing the memory slices"),
        "{}",
        world.agent_text()
    );

    // A process of slice a gets past the interposer and takes 1 GiB more: 1724 MiB
    // against 1 GiB + 128 MiB of grace. It is the largest of the slice, so it goes.
    let big = world.start(Some("a"), &["init", "ctx", "alloc:1G"], "big");
    let start = Instant::now();
    while alive(big) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the process past the limit still runs: {}",
            world.agent_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The agent writes its line once the kill has gone through, which the test may see
    // first.
    let wanted = format!("PID {big} ");
    let start = Instant::now();
    let line = loop {
        let text = world.agent_text();
        if let Some(line) = text.lines().find(|l| l.contains(&wanted)) {
            break line.to_string();
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no line about PID {big}: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        line.contains("slice 'a'") && line.contains("limit of 1GiB") && line.contains("killed it"),
        "{line}"
    );
    // The rest of slice a, slice b and the host process are left alone.
    std::thread::sleep(Duration::from_millis(500));
    for (pid, what) in [(small, "small"), (other, "other"), (on_host, "host")] {
        assert!(
            alive(pid),
            "{what} ({pid}) was killed: {}",
            world.agent_text()
        );
    }
    assert_eq!(
        world.agent_text().matches("killed it").count(),
        1,
        "{}",
        world.agent_text()
    );
    assert_eq!(
        counter(&world, "enforcement_kills"),
        1.0,
        "/metrics counts it"
    );
}

/// Slice `name`'s ledger: what it has charged on its first device, and its entries' PIDs.
/// The agent's counter `name` (`gpuslice_agent_<name>_total`), from its `/metrics`.
fn counter(world: &World, name: &str) -> f64 {
    let (_, body) = http_get(&metrics_addr(&world.agent_log), "/metrics");
    let m = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{body}"));
    let family = &m.families[&format!("gpuslice_agent_{name}")];
    assert_eq!(
        family.family_type,
        openmetrics_parser::OpenMetricsType::Counter
    );
    let sample = family.iter_samples().next().expect("one sample");
    match &sample.value {
        openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
        other => panic!("{name}: {other:?}"),
    }
}

fn ledger_of(world: &World, name: &str) -> (u64, Vec<u32>) {
    let ledger = gpuslice_ledger::Ledger::open(&world.state.join(format!("slices/{name}/ledger")))
        .expect("the slice's ledger");
    let pids = ledger.processes().iter().map(|p| p.pid).collect();
    (ledger.used(gpuslice_ledger::DeviceSlot::new(0)), pids)
}

#[test]
fn the_agent_frees_the_ledger_entries_of_a_container_killed_as_a_whole() {
    if !namespaces_work() {
        eprintln!(
            "SKIPPED the_agent_frees_the_ledger_entries_of_a_container_killed_as_a_whole: needs root and util-linux (`unshare --mount --pid` failed here)"
        );
        return;
    }
    let mut world = world();
    // Two containers of slice b, with the interposer: each is PID 1 of its namespace.
    // NVML cannot measure their contexts (it does not list PID 1), so each is charged
    // the default estimate before it is created: 2 x 512 MiB + 300 MiB fit in b's 2 GiB.
    let live = world.start_with(Some("b"), true, &["init", "ctx", "alloc:100M"], "live");
    let doomed = world.start_with(Some("b"), true, &["init", "ctx", "alloc:200M"], "doomed");
    let (used, pids) = ledger_of(&world, "b");
    assert_eq!(pids.len(), 2, "both registered: {pids:?}");
    // The second container is killed as a whole: nothing unregisters its process, and
    // the first container, in another namespace, cannot tell it is dead.
    let unshare = world.children.pop().expect("the doomed container");
    let mut unshare = unshare;
    unshare.kill().unwrap();
    unshare.wait().unwrap();
    let start = Instant::now();
    while alive(doomed) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the container's process lives on"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        ledger_of(&world, "b"),
        (used, pids),
        "its entry stays without the agent"
    );

    start_agent(&mut world);
    let start = Instant::now();
    loop {
        let (now_used, now_pids) = ledger_of(&world, "b");
        if now_pids.len() == 1 {
            assert!(now_used < used && now_used > 0, "{now_used} of {used}");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the dead entry was not freed: {}",
            world.agent_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alive(live), "the live container runs on");
    // The agent writes its line after the ledger has changed, which the test may see
    // first.
    let start = Instant::now();
    let text = loop {
        let text = world.agent_text();
        if text.contains("slice 'b': freed 1 ledger entry of processes that are gone") {
            break text;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!text.contains("killed it"), "{text}");
    assert_eq!(
        counter(&world, "reclaimed_entries"),
        1.0,
        "/metrics counts it"
    );
    assert_eq!(counter(&world, "enforcement_kills"), 0.0);
}

#[test]
fn in_report_mode_the_agent_names_the_process_once_and_kills_nothing() {
    if !namespaces_work() {
        eprintln!(
            "SKIPPED in_report_mode_the_agent_names_the_process_once_and_kills_nothing: needs root and util-linux (`unshare --mount --pid` failed here)"
        );
        return;
    }
    let mut world = world();
    let big = world.start(Some("a"), &["init", "ctx", "alloc:1G"], "big");
    start_agent_with(&mut world, &["--memory-enforcement", "report"]);
    let start = Instant::now();
    while !world.agent_text().contains("report only") {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no report: {}",
            world.agent_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Several looks later: still alive, reported once.
    std::thread::sleep(Duration::from_millis(600));
    assert!(alive(big), "{}", world.agent_text());
    let text = world.agent_text();
    assert_eq!(
        text.matches("would kill it (report only)").count(),
        1,
        "{text}"
    );
    assert!(text.contains(&format!("PID {big} ")), "{text}");
    assert_eq!(
        counter(&world, "enforcement_reports"),
        1.0,
        "/metrics counts it"
    );
    assert_eq!(counter(&world, "enforcement_kills"), 0.0);
}
