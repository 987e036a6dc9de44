//! The `fake-kubelet` binary's two flows end to end against the real `gpuslice node`
//! binary on the fake GPU, as the GPU checks (`tests/gpu/k8s-*-check.sh`) run them:
//! `fake-kubelet device-plugin` (two profiles, one slice of each allocated, the CDI device
//! named in the JSON and its spec and ledger on disk, both processes stopping cleanly at
//! SIGTERM), and `fake-kubelet dra` (the node reaches its fake API server through the
//! kubeconfig it writes; the claims are prepared with the capacities of the flags, their
//! CDI specs say so, and at SIGTERM they are unprepared, leaving no spec and no state).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpuslice_host::provision::{slice_name, spec_file};
use gpuslice_node::host_provider::claim_slice_name;
use system_tests::{Bench, fake_uuid, wait_for};

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
        "default:\n  mode: device-plugin\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 1}\n    \
         - {name: 4g-70, memory: 4GiB, compute: 70, count: 1}\n  gpus: [0]\n",
    )
    .unwrap();
    system_tests::fake_device_nodes(host);
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
    let node = Reaped::spawn(bench.node(&config, "h200", &kubelet_dir).arg("--no-agent"));
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

/// The env of the one device of the CDI spec of slice `name`.
fn spec_env(cdi: &Path, name: &str) -> Vec<String> {
    let spec = read_json(&cdi.join(spec_file(name)));
    spec["devices"][0]["containerEdits"]["env"]
        .as_array()
        .unwrap_or_else(|| panic!("no env in {spec:#}"))
        .iter()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

#[test]
fn dra_flow_against_gpuslice_node_on_the_fake_gpu() {
    let bench = Bench::new();
    let host = bench.dir.path();
    let path = |p: &Path| p.display().to_string();
    let config = host.join("config.yaml");
    std::fs::write(&config, "default:\n  mode: dra\n  gpus: [0]\n").unwrap();
    system_tests::fake_device_nodes(host);
    let kubelet_dir = host.join("kubelet");
    let (cdi, state) = (host.join("cdi"), host.join("state"));
    let kubeconfig = host.join("kubeconfig.yaml");
    let out = host.join("claims.json");
    let mut kubelet = Reaped::spawn(
        bench
            .plain(&bench.build.join("fake-kubelet"))
            .arg("dra")
            .args(["--kubelet-dir", &path(&kubelet_dir)])
            .args(["--node", "h200", "--kubeconfig-out", &path(&kubeconfig)])
            .args(["--claim", "a=8Gi,30", "--claim", "c=1536Mi,"])
            .args(["--out", &path(&out), "--timeout-secs", "60"]),
    );
    wait_while_running(&kubeconfig, &mut kubelet, "kubeconfig");
    let node = Reaped::spawn(
        bench
            .node(&config, "h200", &kubelet_dir)
            .arg("--no-agent")
            .args(["--kubeconfig", &path(&kubeconfig)])
            .env("HOME", host.join("home"))
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST"),
    );
    wait_while_running(&out, &mut kubelet, "prepared claims");

    let got = read_json(&out);
    let uuid = fake_uuid(0);
    let mut names = Vec::new();
    for claim in ["a", "c"] {
        let c = &got[claim];
        assert_eq!(c["error"], serde_json::Value::Null, "{got:#}");
        let uid = c["uid"].as_str().expect("a uid");
        let name = claim_slice_name(uid, &uuid);
        assert_eq!(
            c["cdi_devices"],
            serde_json::json!([format!("gpuslice.io/slice={name}")]),
            "{got:#}"
        );
        names.push(name);
    }
    // The slices made: 8 GiB at 30%, and 1.5 GiB with no compute limit (c asked none).
    let a = spec_env(&cdi, &names[0]);
    assert!(a.contains(&format!("GPUSLICE_MEMORY={uuid}=8GiB")), "{a:?}");
    assert!(a.contains(&"GPUSLICE_COMPUTE=30".to_string()), "{a:?}");
    let c = spec_env(&cdi, &names[1]);
    assert!(
        c.contains(&format!("GPUSLICE_MEMORY={uuid}=1536MiB")),
        "{c:?}"
    );
    assert!(
        !c.iter().any(|e| e.starts_with("GPUSLICE_COMPUTE=")),
        "{c:?}"
    );

    let (ok, text) = kubelet.terminate();
    assert!(ok, "fake-kubelet: {text}");
    assert!(
        text.contains("fake-kubelet: resourceslice h200-gpuslice.io: {"),
        "{text}"
    );
    let unprepared = read_json(&host.join("claims.json.unprepared"));
    assert_eq!(
        unprepared,
        serde_json::json!({"a": null, "c": null}),
        "{text}"
    );
    for name in &names {
        assert!(!cdi.join(spec_file(name)).exists(), "{name}'s spec is left");
    }
    let left: Vec<_> = std::fs::read_dir(state.join("dra"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "state left behind: {left:?}");
    let (ok, text) = node.terminate();
    assert!(ok, "gpuslice node: {text}");
}
