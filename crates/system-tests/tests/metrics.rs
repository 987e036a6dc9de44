//! `gpuslice agent`'s `/metrics`, end to end on the fake GPU. `gpuslice cdi generate`
//! writes two slices (one compute-limited) into a state folder; a `cuda-probe` with the
//! interposer charges memory in one of them; a third slice's ledger is cut short (a
//! damaged file). The agent serves `/metrics` on a free port; the scrape is parsed with
//! an OpenMetrics parser (`openmetrics-parser`) and every number is checked against what
//! the ledgers and the fake GPU hold, with its type and unit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

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
    let dev = host.join("root/dev");
    std::fs::create_dir_all(&dev).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
        std::os::unix::fs::symlink("/dev/null", dev.join(node)).unwrap();
    }
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
        .err()
        .expect("a cut ledger does not open")
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
    // Units.
    for (family, u) in [
        ("gpuslice_slice_memory_limit_bytes", "bytes"),
        ("gpuslice_slice_memory_used_bytes", "bytes"),
        ("gpuslice_gpu_memory_total_bytes", "bytes"),
        ("gpuslice_gpu_memory_used_bytes", "bytes"),
        ("gpuslice_gpu_slices_memory_limit_bytes", "bytes"),
        ("gpuslice_slice_compute_limit_ratio", "ratio"),
        ("gpuslice_slice_compute_burst_ratio", "ratio"),
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
