//! The `fake-kubelet` binary's two flows end to end, as the GPU checks
//! (`tests/gpu/k8s-*-check.sh`) run them: `fake-kubelet device-plugin` against the real
//! `gpuslice node` binary on the fake GPU (two profiles, one slice of each allocated, the
//! CDI device named in the JSON and its spec and ledger on disk, both processes stopping
//! cleanly at SIGTERM), and `fake-kubelet dra` against the DRA driver of `gpuslice-node`
//! (the library, with the test slice provider), reaching its fake API server through the
//! kubeconfig it writes: the claims prepared with the capacities of the flags, and
//! unprepared at SIGTERM, leaving nothing behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpuslice_host::provision::slice_name;
use gpuslice_node::dra::provider::TEST_CDI_KIND;
use gpuslice_node::dra::{DraOptions, TestClaimSlices, run_dra};
use gpuslice_node::inventory::{GpuHealth, GpuInfo, StaticGpus};
use system_tests::{Bench, fake_uuid, wait_for};

const GIB: u64 = 1 << 30;
/// Far more than any step needs: only a hang reaches it.
const LIMIT: Duration = Duration::from_secs(60);

/// A child killed (and reaped) when the test ends, however it ends.
struct Reaped(Option<Child>);

impl Reaped {
    fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Self(Some(child))
    }

    /// SIGTERM, then the exit within LIMIT: (success, stdout and stderr).
    fn terminate(mut self) -> (bool, String) {
        let mut child = self.0.take().expect("running");
        // SAFETY: kill(2) on our own child, which is not reaped yet (we hold it).
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            if start.elapsed() > LIMIT {
                let _ = child.kill();
                panic!("{} did not stop within {LIMIT:?} of SIGTERM", child.id());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("output");
        (
            out.status.success(),
            format!(
                "{}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn exited(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_some())
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for `path`, failing with the output of `watched` if it exits first.
fn wait_while_running(path: &Path, watched: &mut Reaped, what: &str) {
    let start = Instant::now();
    while !path.exists() {
        if watched.exited() || start.elapsed() > LIMIT {
            let printed = watched.0.take().map(|mut c| {
                let _ = c.kill();
                let out = c.wait_with_output().expect("output");
                format!(
                    "{}: {}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )
            });
            panic!("no {what} ({}): {printed:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn device_plugin_flow_against_gpuslice_node_on_the_fake_gpu() {
    let bench = Bench::new();
    let host = bench.dir.path();
    let config = host.join("config.yaml");
    std::fs::write(
        &config,
        "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 1}\n    \
         - {name: 4g-70, memory: 4GiB, compute: 70, count: 1}\n  gpus: [0]\n",
    )
    .unwrap();
    let dev = host.join("root/dev");
    std::fs::create_dir_all(&dev).unwrap();
    for node in ["nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"] {
        std::os::unix::fs::symlink("/dev/null", dev.join(node)).unwrap();
    }
    let kubelet_dir = host.join("kubelet");
    let out = host.join("allocations.json");
    let path = |p: &Path| p.display().to_string();
    let mut kubelet = Reaped::spawn(
        bench
            .plain(&bench.build.join("fake-kubelet"))
            .arg("device-plugin")
            .args(["--kubelet-dir", &path(&kubelet_dir)])
            .args(["--resource", "gpuslice.io/slice-8g-30"])
            .args(["--resource", "gpuslice.io/slice-4g-70"])
            .args(["--out", &path(&out), "--timeout-secs", "60"]),
    );
    wait_for(
        &kubelet_dir.join("device-plugins/kubelet.sock"),
        "the fake kubelet's socket",
    );
    let node = Reaped::spawn(
        bench
            .plain(&bench.build.join("gpuslice"))
            .arg("node")
            .args(["--config", &path(&config), "--node-name", "h200"])
            .args(["--kubelet-dir", &path(&kubelet_dir)])
            .args(["--state-dir", &path(&host.join("state"))])
            .args(["--cdi-dir", &path(&host.join("cdi"))])
            .args(["--driver-root", &path(&host.join("root"))])
            .args(["--lib", &path(&bench.interposer()), "--no-agent"]),
    );
    wait_while_running(&out, &mut kubelet, "allocations");

    let got = read_json(&out);
    for (profile, resource) in [
        ("8g-30", "gpuslice.io/slice-8g-30"),
        ("4g-70", "gpuslice.io/slice-4g-70"),
    ] {
        let a = &got[resource];
        let id = format!("{}::{profile}-0", fake_uuid(0));
        assert_eq!(a["device_id"], id.as_str(), "{got:#}");
        let name = slice_name(&id);
        assert_eq!(
            a["cdi_devices"],
            serde_json::json!([format!("gpuslice.io/slice={name}")]),
            "{got:#}"
        );
        assert!(a["envs"].is_object() && a["mounts"].is_array() && a["devices"].is_array());
        assert!(
            host.join("state/slices")
                .join(&name)
                .join("ledger")
                .exists(),
            "no ledger for {name}"
        );
        let specs: Vec<String> = std::fs::read_dir(host.join("cdi"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(specs.iter().any(|s| s.contains(&name)), "{specs:?}");
    }

    let (ok, text) = kubelet.terminate();
    assert!(ok, "fake-kubelet: {text}");
    assert!(text.contains("fake-kubelet: stopped"), "{text}");
    let (ok, text) = node.terminate();
    assert!(ok, "gpuslice node: {text}");
}

#[test]
fn dra_flow_against_the_dra_driver() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path = |p: &Path| p.display().to_string();
    let kubeconfig = d.join("kubeconfig.yaml");
    let out = d.join("claims.json");
    let mut kubelet = Reaped::spawn(
        Command::new(system_tests::build_dir().join("fake-kubelet"))
            .arg("dra")
            .args(["--kubelet-dir", &path(&d.join("kubelet"))])
            .args(["--node", "h200", "--kubeconfig-out", &path(&kubeconfig)])
            .args(["--claim", "a=8Gi,30", "--claim", "c=1536Mi,"])
            .args(["--out", &path(&out), "--timeout-secs", "60"]),
    );
    wait_while_running(&kubeconfig, &mut kubelet, "kubeconfig");
    let doc: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&kubeconfig).unwrap()).unwrap();
    let server = doc["clusters"][0]["cluster"]["server"]
        .as_str()
        .expect("a server in the kubeconfig")
        .to_string();

    let mut options = DraOptions::new("h200");
    options.registry_dir = d.join("kubelet/plugins_registry");
    options.plugins_dir = d.join("kubelet/plugins");
    options.state_dir = d.join("state");
    options.resync = Duration::from_millis(200);
    options.api_timeout = Duration::from_secs(5);
    let slices = TestClaimSlices::new(&d.join("slices")).unwrap();
    let uuid = fake_uuid(0);
    let gpus = Arc::new(StaticGpus::new(vec![GpuInfo {
        uuid: uuid.clone(),
        index: 0,
        name: "NVIDIA H200".into(),
        memory: 141 * GIB,
        health: GpuHealth::Healthy,
    }]));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = {
        let mut config = kube::Config::new(server.parse().expect("the server URL"));
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(5));
        let _guard = rt.enter();
        let client = kube::Client::try_from(config).expect("kube client");
        rt.spawn(run_dra(
            options.clone(),
            gpus,
            client,
            Arc::new(slices.clone()),
            async {
                let _ = stopped.await;
            },
        ))
    };

    wait_while_running(&out, &mut kubelet, "prepared claims");
    let got = read_json(&out);
    let mut uids = Vec::new();
    for claim in ["a", "c"] {
        let c = &got[claim];
        assert_eq!(c["error"], serde_json::Value::Null, "{got:#}");
        let uid = c["uid"].as_str().expect("a uid").to_string();
        assert_eq!(
            c["cdi_devices"],
            serde_json::json!([format!("{TEST_CDI_KIND}={uid}-{uuid}")]),
            "{got:#}"
        );
        uids.push(uid);
    }
    // The slices made: 8 GiB at 30%, and 1.5 GiB with no compute limit (c asked none).
    let mut made: Vec<(String, u64, Option<u32>)> = slices
        .slices()
        .into_iter()
        .map(|s| (s.claim_uid, s.memory, s.compute))
        .collect();
    made.sort();
    let mut want = vec![
        (uids[0].clone(), 8 * GIB, Some(30)),
        (uids[1].clone(), 1536 << 20, None),
    ];
    want.sort();
    assert_eq!(made, want);

    let (ok, text) = kubelet.terminate();
    assert!(ok, "fake-kubelet: {text}");
    assert!(
        text.contains("fake-kubelet: resourceslice h200-gpuslice.io: {"),
        "{text}"
    );
    let unprepared = read_json(&d.join("claims.json.unprepared"));
    assert_eq!(
        unprepared,
        serde_json::json!({"a": null, "c": null}),
        "{text}"
    );
    assert!(
        slices.slices().is_empty(),
        "slices left: {:?}",
        slices.slices()
    );
    let left: Vec<_> = std::fs::read_dir(&options.state_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");

    let _ = stop.send(());
    rt.block_on(async {
        tokio::time::timeout(LIMIT, driver)
            .await
            .expect("the DRA driver did not stop")
            .expect("the DRA driver panicked")
            .expect("the DRA driver failed");
    });
}
