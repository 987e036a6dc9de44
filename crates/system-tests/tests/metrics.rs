//! `gpuslice agent`'s `/metrics`, end to end on the fake GPU. `gpuslice cdi generate`
//! writes two slices (one compute-limited) into a state folder; a `cuda-probe` with the
//! interposer charges memory in one of them; a third slice's ledger is cut short (a
//! damaged file). The agent serves `/metrics` on a free port; the scrape is parsed with
//! an OpenMetrics parser (`openmetrics-parser`) and every number is checked against what
//! the ledgers and the fake GPU hold, with its type and unit. Further tests refuse
//! allocations to a probe (the slice's refusal counter moves by one per refusal) and run
//! a compute-limited probe on the fake GPU's clock paced to the host's
//! (`FAKE_CUDA_REALTIME`), so that the agent's window of wall time sees the slice's share.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use gpuslice_ledger::Ledger;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use system_tests::{Bench, GIB, MIB, fake_uuid, http_get, metrics_addr, pid_file, run, wait_for};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

/// Kills what it holds when the test ends, however it ends.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The value of `family`'s sample whose labels include `labels`, with the family's type.
fn value(m: &Exposition, family: &str, labels: &[(&str, &str)]) -> Option<(f64, OpenMetricsType)> {
    let f = m.families.get(family)?;
    f.iter_samples().find_map(|s| {
        let set = s.get_labelset().ok()?;
        labels
            .iter()
            .all(|(k, v)| set.get_label_value(k) == Some(v))
            .then(|| {
                let v = match &s.value {
                    OpenMetricsValue::Gauge(n) | OpenMetricsValue::Unknown(n) => n.as_f64(),
                    OpenMetricsValue::Counter(c) => c.value.as_f64(),
                    other => panic!("{family}: unexpected value {other:?}"),
                };
                (v, f.family_type)
            })
    })
}

fn gauge(m: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let (v, t) = value(m, family, labels).unwrap_or_else(|| panic!("{family}{labels:?} missing"));
    assert_eq!(t, OpenMetricsType::Gauge, "{family}");
    v
}

/// The value of counter `family` (its name without `_total`) with `labels`.
fn counter(m: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let (v, t) = value(m, family, labels).unwrap_or_else(|| panic!("{family}{labels:?} missing"));
    assert_eq!(t, OpenMetricsType::Counter, "{family}");
    v
}

fn unit(m: &Exposition, family: &str) -> String {
    m.families[family].unit.clone()
}

/// `promtool check metrics` on `body`, where promtool is installed (Debian's `prometheus`
/// package). It lints the classic text format, where a counter's `# HELP` names the
/// sample (`..._total`); in OpenMetrics it names the family, so promtool says "no help
/// text" of each counter's sample. Anything else it says is a failure.
fn promtool_lints(body: &str) {
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("SKIPPED promtool check metrics: promtool is not installed");
        return;
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let counter_help = line
            .strip_suffix("_total no help text")
            .is_some_and(|name| body.contains(&format!("# HELP {name} ")));
        assert!(counter_help, "promtool: {line}\n{text}");
    }
}

#[test]
fn metrics_show_every_slice_gpu_and_counter_as_the_ledgers_and_the_gpu_hold_them() {
    let bench = Bench::new();
    let host = bench.dir.path().to_path_buf();
    let s = |p: &Path| p.display().to_string();
    system_tests::fake_device_nodes(&host);
    let state = host.join("state");
    let r = run(bench
        .plain(&bench.build.join("gpuslice"))
        .args(["cdi", "generate", "--slice", "a=0:1GiB"])
        .args(["--slice", "c=0:2GiB:compute=30:burst=60"])
        .args(["--driver-libs", "off"])
        .args(["--dev-root", &s(&host.join("root"))])
        .args(["--output-dir", &s(&host.join("cdi"))])
        .args(["--state-dir", &s(&state)])
        .args(["--agent-dir", &s(&host.join("agent"))])
        .args(["--lib", &s(&bench.interposer())]));
    let ledger_of = |name: &str| -> PathBuf { state.join(format!("slices/{name}/ledger")) };
    assert!(ledger_of("a").exists(), "{}", r.text());
    // A damaged slice: a copy of c's ledger, cut short.
    let whole = std::fs::read(ledger_of("c")).unwrap();
    std::fs::create_dir_all(state.join("slices/broken")).unwrap();
    std::fs::write(ledger_of("broken"), &whole[..whole.len() / 3]).unwrap();
    let broken_kind = Ledger::open(&ledger_of("broken"))
        .expect_err("a cut ledger does not open")
        .kind();

    let mut running = Running(Vec::new());
    // A process of slice a that charges 100 MiB (and its 300 MiB context), then waits.
    let pid_path = host.join("probe.pid");
    let ready = host.join("probe.ready");
    let done = host.join("done");
    let probe = bench
        .probe(
            &[
                ("GPUSLICE_LEDGER", &s(&ledger_of("a"))),
                ("GPUSLICE_MEMORY", "1GiB"),
            ],
            &[
                "init",
                "ctx",
                "alloc:100M",
                &format!("pid:{}", pid_path.display()),
                &format!("ready:{}", ready.display()),
                &format!("wait:{}", done.display()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cuda-probe");
    running.0.push(probe);
    wait_for(&ready, "the probe");
    let _ = pid_file(&pid_path);

    let log = host.join("agent.log");
    let agent = bench
        .plain(&bench.build.join("gpuslice"))
        .args(["agent", "--no-probe", "--memory-enforcement", "report"])
        .args(["--metrics-addr", "127.0.0.1:0"])
        .arg("--socket")
        .arg(host.join("agent/agent.sock"))
        .arg("--state-dir")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start gpuslice agent");
    running.0.push(agent);
    let addr = metrics_addr(&log);
    let (head, body) = http_get(&addr, "/metrics");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let m = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{body}"));

    let gpu = fake_uuid(0);
    // Every slice's numbers, as its ledger holds them.
    for name in ["a", "c"] {
        let ledger = Ledger::open(&ledger_of(name)).unwrap();
        let devices = ledger.devices();
        assert!(!devices.is_empty(), "{name} has its GPU");
        for d in devices {
            let labels = [("slice", name), ("gpu_uuid", d.uuid.as_str())];
            assert_eq!(
                gauge(&m, "gpuslice_slice_memory_limit_bytes", &labels),
                d.limit as f64,
                "{name}"
            );
            assert_eq!(
                gauge(&m, "gpuslice_slice_memory_used_bytes", &labels),
                d.used as f64,
                "{name}"
            );
        }
        let info = [
            ("slice", name),
            ("source", "cdi"),
            ("ledger", &s(&ledger_of(name))),
        ];
        assert_eq!(gauge(&m, "gpuslice_slice_info", &info), 1.0, "{name}");
    }
    let a = [("slice", "a"), ("gpu_uuid", gpu.as_str())];
    let c = [("slice", "c"), ("gpu_uuid", gpu.as_str())];
    assert_eq!(
        gauge(&m, "gpuslice_slice_memory_limit_bytes", &a),
        GIB as f64
    );
    assert_eq!(
        gauge(&m, "gpuslice_slice_memory_used_bytes", &a),
        (400 * MIB) as f64,
        "100 MiB and the 300 MiB context"
    );
    assert_eq!(
        gauge(&m, "gpuslice_slice_memory_limit_bytes", &c),
        (2 * GIB) as f64
    );
    assert_eq!(gauge(&m, "gpuslice_slice_processes", &a), 1.0);
    assert_eq!(gauge(&m, "gpuslice_slice_processes", &c), 0.0);
    assert_eq!(gauge(&m, "gpuslice_slice_compute_limit_ratio", &c), 0.3);
    assert_eq!(gauge(&m, "gpuslice_slice_compute_burst_ratio", &c), 0.6);
    assert!(
        value(&m, "gpuslice_slice_compute_limit_ratio", &a).is_none(),
        "a has no compute limit"
    );
    // The damaged slice is shown, failed closed, with why.
    assert_eq!(
        gauge(
            &m,
            "gpuslice_slice_failed_closed",
            &[("slice", "broken"), ("reason", broken_kind)]
        ),
        1.0
    );
    assert!(value(&m, "gpuslice_slice_failed_closed", &[("slice", "a")]).is_none());
    // The GPU, as the fake NVML reports it.
    let g = [("gpu_uuid", gpu.as_str())];
    assert_eq!(
        gauge(&m, "gpuslice_gpu_memory_total_bytes", &g),
        (80 * GIB) as f64
    );
    assert_eq!(
        gauge(&m, "gpuslice_gpu_memory_used_bytes", &g),
        fake_gpu::in_use(bench.state(), 0) as f64
    );
    assert_eq!(
        gauge(&m, "gpuslice_gpu_slices_memory_limit_bytes", &g),
        (3 * GIB) as f64
    );
    assert_eq!(
        gauge(&m, "gpuslice_gpu_slices_compute_limit_ratio", &g),
        0.3
    );
    assert_eq!(
        gauge(&m, "gpuslice_gpu_utilization_ratio", &g),
        0.0,
        "no process of the fake GPU is busy"
    );
    // Nothing was refused or held back yet; nobody computed (a has no meter).
    for labels in [&a, &c] {
        assert_eq!(
            counter(&m, "gpuslice_slice_refused_allocations", labels),
            0.0
        );
        assert_eq!(counter(&m, "gpuslice_slice_throttled_seconds", labels), 0.0);
    }
    assert!(value(&m, "gpuslice_slice_compute_used_ratio", &a).is_none());
    // Units.
    for (family, u) in [
        ("gpuslice_slice_memory_limit_bytes", "bytes"),
        ("gpuslice_slice_memory_used_bytes", "bytes"),
        ("gpuslice_gpu_memory_total_bytes", "bytes"),
        ("gpuslice_gpu_memory_used_bytes", "bytes"),
        ("gpuslice_gpu_slices_memory_limit_bytes", "bytes"),
        ("gpuslice_slice_compute_limit_ratio", "ratio"),
        ("gpuslice_slice_compute_burst_ratio", "ratio"),
        ("gpuslice_slice_throttled_seconds", "seconds"),
        ("gpuslice_gpu_slices_compute_limit_ratio", "ratio"),
        ("gpuslice_gpu_utilization_ratio", "ratio"),
    ] {
        assert_eq!(unit(&m, family), u, "{family}");
    }
    // The agent's counters: nothing killed, reclaimed or failed here.
    for family in [
        "gpuslice_agent_enforcement_kills",
        "gpuslice_agent_enforcement_reports",
        "gpuslice_agent_reclaimed_entries",
        "gpuslice_agent_nvml_errors",
    ] {
        let (v, t) = value(&m, family, &[]).unwrap_or_else(|| panic!("{family} missing"));
        assert_eq!((v, t), (0.0, OpenMetricsType::Counter), "{family}");
        assert!(body.contains(&format!("\n{family}_total 0\n")), "{family}");
    }
    promtool_lints(&body);
    // Another path is not found.
    let (head, _) = http_get(&addr, "/other");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 404"),
        "{head}"
    );

    let _ = std::fs::write(&done, b"done");
}

/// A host with a state folder of `gpuslice cdi generate` slices and, once started,
/// `gpuslice agent` serving `/metrics` for them.
struct MetricsHost {
    bench: Bench,
    state: PathBuf,
    running: Running,
    addr: Option<String>,
}

impl MetricsHost {
    /// `slices` (`--slice` values of `gpuslice cdi generate`) on a fresh bench.
    fn new(bench: Bench, slices: &[&str]) -> Self {
        let host = bench.dir.path().to_path_buf();
        let s = |p: &Path| p.display().to_string();
        system_tests::fake_device_nodes(&host);
        let state = host.join("state");
        let mut generate = bench.plain(&bench.build.join("gpuslice"));
        generate.args(["cdi", "generate", "--driver-libs", "off"]);
        for slice in slices {
            generate.args(["--slice", slice]);
        }
        let r = run(generate
            .args(["--dev-root", &s(&host.join("root"))])
            .args(["--output-dir", &s(&host.join("cdi"))])
            .args(["--state-dir", &s(&state)])
            .args(["--agent-dir", &s(&host.join("agent"))])
            .args(["--lib", &s(&bench.interposer())]));
        assert!(state.join("slices").is_dir(), "{}", r.text());
        Self {
            bench,
            state,
            running: Running(Vec::new()),
            addr: None,
        }
    }

    fn ledger(&self, name: &str) -> PathBuf {
        self.state.join(format!("slices/{name}/ledger"))
    }

    /// Starts the agent, with `/metrics` on a free port.
    fn start_agent(&mut self) {
        let host = self.bench.dir.path();
        let log = host.join("agent.log");
        let agent = self
            .bench
            .plain(&self.bench.build.join("gpuslice"))
            .args(["agent", "--no-probe", "--memory-enforcement", "report"])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .arg("--socket")
            .arg(host.join("agent/agent.sock"))
            .arg("--state-dir")
            .arg(&self.state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start gpuslice agent");
        self.running.0.push(agent);
        self.addr = Some(metrics_addr(&log));
    }

    /// One scrape, parsed.
    fn scrape(&self) -> (Exposition, String) {
        let addr = self.addr.as_deref().expect("the agent runs");
        let (head, body) = http_get(addr, "/metrics");
        assert!(head.contains(" 200"), "{head}");
        let m = openmetrics_parser::openmetrics::parse_openmetrics(&body)
            .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{body}"));
        (m, body)
    }

    /// A `cuda-probe` of slice `name` (limits `limits`, as its ledger holds them) running
    /// `steps`, with the bench's variables and `extra`.
    fn probe(&self, name: &str, limits: &[(&str, &str)], steps: &[&str]) -> std::process::Command {
        let ledger = self.ledger(name).display().to_string();
        let mut env = vec![("GPUSLICE_LEDGER", ledger.as_str())];
        env.extend_from_slice(limits);
        self.bench.probe(&env, steps)
    }
}

#[test]
fn each_refused_allocation_moves_the_slices_refusal_counter_by_one() {
    let mut host = MetricsHost::new(Bench::new(), &["m=0:1GiB"]);
    host.start_agent();
    let gpu = fake_uuid(0);
    let m_gpu = [("slice", "m"), ("gpu_uuid", gpu.as_str())];
    let refused = |host: &MetricsHost| {
        let (m, _) = host.scrape();
        counter(&m, "gpuslice_slice_refused_allocations", &m_gpu)
    };
    assert_eq!(refused(&host), 0.0);
    let limits = [("GPUSLICE_MEMORY", "1GiB")];
    // 900 MiB does not fit beside the 300 MiB context: one refusal.
    let r = run(&mut host.probe("m", &limits, &["init", "ctx", "alloc:900M"]));
    assert_eq!(r.rc("alloc:900M"), 2, "{}", r.text());
    assert_eq!(refused(&host), 1.0);
    // Two more, and one allocation that fits (counts nothing).
    let r = run(&mut host.probe(
        "m",
        &limits,
        &["init", "ctx", "alloc:900M", "alloc:100M", "alloc:900M"],
    ));
    assert_eq!(r.rc("alloc:100M"), 0, "{}", r.text());
    let (m, _) = host.scrape();
    assert_eq!(
        counter(&m, "gpuslice_slice_refused_allocations", &m_gpu),
        3.0
    );
    // As the ledger holds it.
    let ledger = Ledger::open(&host.ledger("m")).unwrap();
    let slot = ledger.devices()[0].slot;
    assert_eq!(ledger.refused_allocations(slot), 3);
}

/// A probe of slice `c` (30% of the GPU, 2 GiB) launching 200 µs kernels on the fake
/// GPU's clock paced to the host's for `seconds`, recorded as 37% busy by the fake NVML;
/// returns once it launches. The agent starts after it, so that the agent's window
/// holds only the slice's steady work.
fn computing(seconds: u64) -> (MetricsHost, Instant) {
    let mut bench = Bench::new();
    bench.set("FAKE_CUDA_KERNEL_US", "200");
    bench.set("FAKE_CUDA_REALTIME", "1");
    bench.set("FAKE_CUDA_SM_UTIL", "37");
    let mut host = MetricsHost::new(bench, &["c=0:2GiB:compute=30"]);
    let ready = host.bench.dir.path().join("probe.ready");
    let step = format!("loop:kernel:{}", seconds * 1000);
    let probe = host
        .probe(
            "c",
            &[("GPUSLICE_MEMORY", "2GiB"), ("GPUSLICE_COMPUTE", "30")],
            &["init", "ctx", &format!("ready:{}", ready.display()), &step],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start cuda-probe");
    host.running.0.push(probe);
    wait_for(&ready, "the probe");
    let started = Instant::now();
    host.start_agent();
    (host, started)
}

#[test]
fn a_compute_limited_slice_shows_its_share_and_the_gpu_its_utilization() {
    let (host, _) = computing(30);
    let gpu = fake_uuid(0);
    let c = [("slice", "c"), ("gpu_uuid", gpu.as_str())];
    // The sampler reads the ledger once a second: after 4 s the window spans about 4 s
    // of steady work.
    std::thread::sleep(Duration::from_secs(4));
    let (m, body) = host.scrape();
    let used = gauge(&m, "gpuslice_slice_compute_used_ratio", &c);
    assert!(
        (0.15..=0.45).contains(&used),
        "{used} of the GPU under a 30% limit"
    );
    assert_eq!(unit(&m, "gpuslice_slice_compute_used_ratio"), "ratio");
    assert_eq!(gauge(&m, "gpuslice_slice_compute_limit_ratio", &c), 0.3);
    let g = [("gpu_uuid", gpu.as_str())];
    assert_eq!(
        gauge(&m, "gpuslice_gpu_slices_compute_limit_ratio", &g),
        0.3
    );
    // The fake NVML's utilization: what its one busy process records.
    assert_eq!(gauge(&m, "gpuslice_gpu_utilization_ratio", &g), 0.37);
    let (errors, _) = value(&m, "gpuslice_agent_nvml_errors", &[]).unwrap();
    assert_eq!(errors, 0.0);
    promtool_lints(&body);
}

#[test]
fn the_time_a_compute_limited_slice_is_held_back_grows() {
    let (host, started) = computing(10);
    let gpu = fake_uuid(0);
    let c = [("slice", "c"), ("gpu_uuid", gpu.as_str())];
    let throttled = || {
        let (m, _) = host.scrape();
        counter(&m, "gpuslice_slice_throttled_seconds", &c)
    };
    std::thread::sleep(Duration::from_secs(2));
    let first = throttled();
    std::thread::sleep(Duration::from_secs(2));
    let second = throttled();
    let ran = started.elapsed().as_secs_f64() + 1.0;
    assert!(
        first > 0.0 && second > first,
        "held back {first} s, then {second} s"
    );
    // One thread launches: it cannot have been held back longer than it ran, and under
    // a 30% limit it rests most of the time.
    assert!(second <= ran, "held back {second} s in {ran} s");
    assert!(
        second >= 0.3 * (ran - 1.0),
        "held back {second} s in {ran} s"
    );
}
