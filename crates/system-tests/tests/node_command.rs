//! The `gpuslice node` command itself, on the fake GPU (fake NVML): `--dry-run` prints the
//! inventory a node would advertise, a config that would oversubscribe a GPU is refused
//! naming the field, and the real binary registers its device plugins with a fake
//! kubelet, hands out a slice (ledger and CDI spec on disk) and stops on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fake_kubelet::FakeKubelet;
use gpuslice_host::provision::slice_name;
use system_tests::{Bench, fake_uuid};

const CONFIG: &str = "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n    - {name: 4g-20, memory: 4GiB, compute: 20}\n  reserve: 1GiB\n";

fn node_command(bench: &Bench, config: &Path, extra: &[&str]) -> Command {
    let mut cmd = bench.plain(&bench.build.join("gpuslice"));
    cmd.arg("node")
        .arg("--config")
        .arg(config)
        .args(["--node-name", "node-1"])
        .args(extra);
    cmd
}

#[test]
fn dry_run_prints_what_the_node_would_advertise() {
    let bench = Bench::new();
    let config = bench.dir.path().join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = node_command(&bench, &config, &["--dry-run"])
        .output()
        .expect("run gpuslice node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "gpuslice.io/slice-8g-30".to_string(),
        "gpuslice.io/slice-4g-20".to_string(),
        format!("{}::8g-30-1", fake_uuid(0)),
        format!("{}::4g-20-0", fake_uuid(0)),
    ] {
        assert!(text.contains(&want), "no {want} in\n{text}");
    }
}

#[test]
fn a_config_that_oversubscribes_the_gpu_is_refused_naming_it() {
    let bench = Bench::new();
    let config = bench.dir.path().join("config.yaml");
    // The fake GPU has 80 GiB: two 40 GiB slices leave nothing for the 1 GiB reserve.
    std::fs::write(
        &config,
        "default:\n  profiles:\n    - {name: big, memory: 40GiB, count: 2}\n",
    )
    .unwrap();
    let out = node_command(&bench, &config, &["--dry-run"])
        .output()
        .expect("run gpuslice node");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted:\n{err}");
    assert!(
        err.contains(&fake_uuid(0)) || err.contains("GPU 0"),
        "{err}"
    );
}

#[test]
fn the_node_registers_with_the_kubelet_hands_out_a_slice_and_stops_on_sigterm() {
    let bench = Bench::new();
    let host = bench.dir.path();
    let config = host.join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    system_tests::fake_device_nodes(host);
    let plugins = host.join("kubelet/device-plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&plugins).await.unwrap();
        let mut child = node_command(
            &bench,
            &config,
            &[
                "--no-agent",
                "--kubelet-dir",
                &host.join("kubelet").display().to_string(),
                "--state-dir",
                &host.join("state").display().to_string(),
                "--cdi-dir",
                &host.join("cdi").display().to_string(),
                "--driver-root",
                &host.join("root").display().to_string(),
                "--lib",
                &bench.interposer().display().to_string(),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start gpuslice node");
        let wait = Duration::from_secs(30);
        let mut resources = Vec::new();
        let mut plugin = None;
        for _ in 0..2 {
            let p = kubelet
                .next_registration(wait)
                .await
                .expect("a registration");
            resources.push(p.resource().to_string());
            if p.resource() == "gpuslice.io/slice-8g-30" {
                plugin = Some(p);
            }
        }
        resources.sort();
        assert_eq!(
            resources,
            ["gpuslice.io/slice-4g-20", "gpuslice.io/slice-8g-30"]
        );
        let mut plugin = plugin.expect("the 8g-30 plugin");
        let id = format!("{}::8g-30-0", fake_uuid(0));
        let response = plugin.allocate(&[&[id.as_str()]]).await.expect("allocate");
        let c = &response.container_responses[0];
        let name = slice_name(&id);
        assert_eq!(c.cdi_devices.len(), 1, "{c:?}");
        assert_eq!(c.cdi_devices[0].name, format!("gpuslice.io/slice={name}"));
        assert!(
            host.join("state/slices")
                .join(&name)
                .join("ledger")
                .exists()
        );
        let specs: Vec<_> = std::fs::read_dir(host.join("cdi"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(specs.iter().any(|s| s.contains(&name)), "{specs:?}");
        drop(plugin);
        // SAFETY: signalling our own child, not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > wait {
                let _ = child.kill();
                panic!("gpuslice node did not stop within {wait:?} of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(status.success(), "{status}: {err}");
        kubelet.stop().await;
    });
}
