//! `gpuslice doctor` on the fake GPU: the built binary, the fake NVML, a state folder and
//! spec written by `gpuslice cdi generate`, and a slice process killed with SIGKILL. A bad
//! spec, a missing host file and the killed process's stale ledger entry are each
//! reported as a problem with a fix, and the exit status says so; on the repaired host
//! (the entry swept by `gpuslice status`, the spec generated again) the exit status is 0.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use system_tests::{Bench, fake_uuid, output_within, wait_for};

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn doctor_reports_a_bad_spec_a_missing_host_file_and_a_stale_entry() {
    let bench = Bench::new();
    let root = bench.dir.path();
    let s = |rel: &str| root.join(rel).display().to_string();
    // The device nodes the fake GPU stands for: links to a real character device.
    std::fs::create_dir_all(root.join("dev")).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm"] {
        symlink("/dev/null", root.join("dev").join(node)).unwrap();
    }
    // The fake driver laid out as a driver root, as docs/cdi.md shows.
    let libs = root.join("driver/usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&libs).unwrap();
    symlink(bench.build.join("libcuda.so"), libs.join("libcuda.so.1")).unwrap();
    symlink(
        bench.build.join("libnvidia_ml.so"),
        libs.join("libnvidia-ml.so.1"),
    )
    .unwrap();
    let gpuslice = |args: &[&str]| {
        let mut cmd = bench.plain(&bench.build.join("gpuslice"));
        cmd.args(args);
        output_within(&mut cmd, Duration::from_secs(60))
    };
    let generate = || {
        gpuslice(&[
            "cdi",
            "generate",
            "--slice",
            "a=0:1GiB",
            "--output-dir",
            &s("cdi"),
            "--state-dir",
            &s("state"),
            "--agent-dir",
            &s("agent"),
            "--dev-root",
            &s(""),
            "--driver-libs",
            "off",
            "--lib",
            &bench.interposer().display().to_string(),
        ])
    };
    let out = generate();
    assert!(out.status.success(), "{}", text(&out));

    // A process of slice a, killed while it holds memory: its entry stays behind.
    let ledger = root.join("state/slices/a/ledger");
    let ready = root.join("ready");
    let memory = format!("{}=1GiB", fake_uuid(0));
    let mut probe = bench
        .probe(
            &[
                ("GPUSLICE_LEDGER", &ledger.display().to_string()),
                ("GPUSLICE_MEMORY", &memory),
            ],
            &[
                "alloc:64M",
                &format!("ready:{}", ready.display()),
                "sleep:60000",
            ],
        )
        .spawn()
        .unwrap();
    wait_for(&ready, "the slice's process");
    probe.kill().unwrap();
    probe.wait().unwrap();

    // A spec no runtime can read, and a host file of slice a gone.
    std::fs::write(root.join("cdi/broken.json"), "{ \"cdiVersion\": ").unwrap();
    std::fs::remove_file(root.join("state/config/a.env")).unwrap();

    let doctor = || {
        gpuslice(&[
            "doctor",
            "--state-dir",
            &s("state"),
            "--agent-dir",
            &s("agent"),
            "--spec-dir",
            &s("cdi"),
            "--dev-root",
            &s(""),
            "--driver-root",
            &s("driver"),
            "--ledger-dir",
            &s("ledgers"),
        ])
    };
    let start = Instant::now();
    let out = doctor();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(start.elapsed() < Duration::from_secs(30), "{report}");
    for part in [
        &format!("ok: GPU 0 {}", fake_uuid(0)),
        "broken.json is not a readable CDI spec",
        "config/a.env, which does not exist",
        "slice a: its pinned configuration",
        "slice a: 1 stale entry of processes that are gone: PID",
        "fix: run gpuslice cdi generate again",
        "warning: not running (no socket at",
    ] {
        assert!(report.contains(part), "missing {part:?} in:\n{report}");
    }
    assert!(report.contains("PROBLEM: "), "{report}");

    // Repaired: the broken spec removed, the spec generated again, the dead process's
    // entry swept (it died in this PID namespace, so gpuslice status can tell).
    std::fs::remove_file(root.join("cdi/broken.json")).unwrap();
    let out = generate();
    assert!(out.status.success(), "{}", text(&out));
    let out = gpuslice(&[
        "status",
        "--state-dir",
        &s("state"),
        "--ledger-dir",
        &s("ledgers"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("slice a (cdi)"), "{}", text(&out));
    let out = doctor();
    let report = text(&out);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("slice a: 0 process(es), no stale entries"),
        "{report}"
    );
    assert!(Path::new(&s("cdi/gpuslice.io-slice.json")).exists());
}
