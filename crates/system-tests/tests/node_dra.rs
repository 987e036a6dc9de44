//! `gpuslice node` as a DRA driver, the real binary on the fake GPU, against the fake API
//! server and the fake kubelet:
//!
//! * mode `auto` follows what the cluster answers: DRA with consumable capacity, else
//!   the device plugins (no API server, no `resource.k8s.io/v1`, the gate off, in which
//!   case the slice it wrote is taken back); mode `dra` on a cluster without DRA stops
//!   with an error naming why; mode `both` offers each GPU one way only;
//! * a claim allocated in the fake API server is prepared by the binary; its CDI device is
//!   applied to a real OCI container (`gpuslice-cdi-inject`, then `runc` or `crun`), where
//!   a probe sees the claim's memory limit and is refused past it; unprepare leaves no
//!   file behind. This part needs root, python3 and `runc` or `crun`; without them it
//!   prints why it was skipped.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use fake_kubelet::FakeKubelet;
use fake_kubelet::apiserver::{Cluster, FakeApiServer, Share, allocated_claim};
use fake_kubelet::dra::{DraDriver, claim};
use gpuslice_node::dra::claims::ClaimSlice;
use gpuslice_node::dra::state::PreparedClaim;
use gpuslice_node::host_provider::claim_slice_name;
use system_tests::{
    Bench, GIB, Report, fake_uuid, inject_cdi_device, oci_runtime, probe_bundle, run_container,
};

const NODE: &str = "node-1";
const WAIT: Duration = Duration::from_secs(30);

/// One host for the binary: its folders, a kubeconfig for the fake API server.
struct Host<'a> {
    bench: &'a Bench,
    root: PathBuf,
}

impl<'a> Host<'a> {
    fn new(bench: &'a Bench) -> Self {
        let root = bench.dir.path().to_path_buf();
        let dev = root.join("root/dev");
        std::fs::create_dir_all(&dev).unwrap();
        for node in [
            "nvidia0",
            "nvidia1",
            "nvidiactl",
            "nvidia-uvm",
            "nvidia-uvm-tools",
        ] {
            let _ = std::os::unix::fs::symlink("/dev/null", dev.join(node));
        }
        for dir in ["kubelet/device-plugins", "kubelet/plugins_registry"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        Self { bench, root }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Starts `gpuslice node` with `config`; `api` gives it a kubeconfig, and without one
    /// it finds no API server at all.
    fn start(&self, config: &str, api: Option<&FakeApiServer>, gpus: u32) -> Child {
        let s = |p: PathBuf| p.display().to_string();
        let config_path = self.path("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = self.bench.plain(&self.bench.build.join("gpuslice"));
        cmd.arg("node")
            .arg("--config")
            .arg(&config_path)
            .args(["--node-name", NODE, "--no-agent"])
            .args(["--kubelet-dir", &s(self.path("kubelet"))])
            .args(["--state-dir", &s(self.path("state"))])
            .args(["--cdi-dir", &s(self.path("cdi"))])
            .args(["--driver-root", &s(self.path("root"))])
            .args(["--lib", &s(self.bench.interposer())])
            .env("FAKE_GPU_COUNT", gpus.to_string())
            .env("HOME", self.path("home"))
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(api) = api {
            let kubeconfig = self.path("kubeconfig.yaml");
            std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
            cmd.arg("--kubeconfig").arg(kubeconfig);
        }
        cmd.spawn().expect("start gpuslice node")
    }
}

/// Stops `child` with SIGTERM and returns its exit status and standard error.
async fn stop(mut child: Child) -> (std::process::ExitStatus, String) {
    // SAFETY: signalling our own child, which is not reaped yet.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    finish(&mut child, WAIT).await
}

async fn finish(child: &mut Child, within: Duration) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            panic!("gpuslice node did not stop within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    (status, err)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn slice_name() -> String {
    format!("{NODE}-gpuslice.io")
}

const PROFILES: &str = "  profiles: [{name: 1g, memory: 1GiB, count: 2}]\n";

#[test]
fn mode_auto_follows_what_the_cluster_answers_and_mode_dra_fails_visibly() {
    let bench = Bench::new();
    let host = Host::new(&bench);
    runtime().block_on(async {
        tokio::time::timeout(Duration::from_secs(240), async {
            let mut kubelet = FakeKubelet::start(&host.path("kubelet/device-plugins"))
                .await
                .unwrap();
            let api = FakeApiServer::start().await.unwrap();
            api.add_node(NODE);
            let auto = format!("default:\n{PROFILES}");

            // No API server configured, no DRA, consumable capacity off: the device plugin.
            for (case, cluster) in [
                ("no API server", None),
                ("no DRA", Some(Cluster::NoDra)),
                ("gate off", Some(Cluster::NoConsumableCapacity)),
            ] {
                if let Some(c) = cluster {
                    api.set_cluster(c);
                }
                let mut child = host.start(&auto, cluster.map(|_| &api), 1);
                let plugin = match kubelet.next_registration(WAIT).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = child.kill();
                        let (_, err) = finish(&mut child, WAIT).await;
                        panic!("{case}: no device plugin: {e}\n{err}");
                    }
                };
                assert_eq!(plugin.resource(), "gpuslice.io/slice-1g", "{case}");
                assert!(api.slices().is_empty(), "{case}: {:?}", api.slices());
                drop(plugin);
                let (status, err) = stop(child).await;
                assert!(status.success(), "{case}: {status}: {err}");
                if cluster == Some(Cluster::NoConsumableCapacity) {
                    assert!(err.contains("DRAConsumableCapacity"), "{case}: {err}");
                }
            }

            // A cluster upgraded under the device-plugin-only install: DRA with consumable
            // capacity, but no DeviceClass gpuslice.io. The device plugins stay.
            api.set_cluster(Cluster::ConsumableCapacity);
            api.remove_device_class("gpuslice.io");
            let child = host.start(&auto, Some(&api), 1);
            let plugin = kubelet
                .next_registration(WAIT)
                .await
                .expect("device plugin");
            assert!(api.slices().is_empty(), "{:?}", api.slices());
            drop(plugin);
            let (status, err) = stop(child).await;
            assert!(status.success(), "{status}: {err}");
            assert!(err.contains("no DeviceClass gpuslice.io"), "{err}");
            api.add_device_class("gpuslice.io");

            // Consumable capacity on: DRA only, and no device plugin registers.
            let child = host.start(&auto, Some(&api), 1);
            let slice = api
                .wait_slice(&slice_name(), WAIT)
                .await
                .expect("published");
            let devices = slice.spec.devices.unwrap_or_default();
            assert_eq!(devices.len(), 1);
            assert_eq!(devices[0].allow_multiple_allocations, Some(true));
            let driver = DraDriver::register(&host.path("kubelet/plugins_registry"), WAIT)
                .await
                .expect("the DRA driver registers");
            assert_eq!(driver.info.name, "gpuslice.io");
            assert!(!kubelet.any_registration(Duration::from_secs(2)).await);
            let (status, err) = stop(child).await;
            assert!(status.success(), "{status}: {err}");

            // Mode both: GPU 1 through DRA, GPU 0 through the profiles.
            let both = format!("default:\n  mode: both\n  draGpus: [1]\n{PROFILES}");
            api.wipe_node_slices(NODE);
            let child = host.start(&both, Some(&api), 2);
            let slice = api
                .wait_slice(&slice_name(), WAIT)
                .await
                .expect("published");
            let devices = slice.spec.devices.unwrap_or_default();
            let names: Vec<&str> = devices.iter().map(|d| d.name.as_str()).collect();
            assert_eq!(names, ["gpu-1"]);
            let mut plugin = kubelet
                .next_registration(WAIT)
                .await
                .expect("device plugin");
            let ids: Vec<String> = plugin
                .wait_devices(WAIT, "devices", |d| !d.is_empty())
                .await
                .expect("devices")
                .into_iter()
                .map(|d| d.id)
                .collect();
            assert_eq!(
                ids.len(),
                2,
                "two 1g slices, of GPU 0 only: {ids:?} (GPU 1 is {})",
                fake_uuid(1)
            );
            assert!(
                ids.iter().all(|id| id.starts_with(&fake_uuid(0))),
                "{ids:?}"
            );
            drop(plugin);
            let (status, err) = stop(child).await;
            assert!(status.success(), "{status}: {err}");

            // Mode device-plugin on two GPUs after a run that prepared a DRA claim on GPU 0
            // (the mode changed): GPU 0 stays out of the profiles while the claim holds it.
            let dra_state = host.path("state/dra");
            std::fs::create_dir_all(&dra_state).unwrap();
            let uid = "00000000-0000-4000-8000-00000000abcd";
            let held = PreparedClaim {
                namespace: "team-a".into(),
                name: "held".into(),
                uid: uid.into(),
                devices: Vec::new(),
                slices: vec![ClaimSlice {
                    claim_uid: uid.into(),
                    gpu_uuid: fake_uuid(0),
                    memory: GIB,
                    compute: None,
                }],
                cdi_device_ids: vec![Vec::new()],
            };
            std::fs::write(
                dra_state.join(format!("{uid}.json")),
                serde_json::to_vec(&held).unwrap(),
            )
            .unwrap();
            let child = host.start(
                &format!("default:\n  mode: device-plugin\n{PROFILES}"),
                None,
                2,
            );
            let mut plugin = kubelet
                .next_registration(WAIT)
                .await
                .expect("device plugin");
            let ids: Vec<String> = plugin
                .wait_devices(WAIT, "devices", |d| !d.is_empty())
                .await
                .expect("devices")
                .into_iter()
                .map(|d| d.id)
                .collect();
            assert!(
                ids.iter().all(|id| id.starts_with(&fake_uuid(1))),
                "{ids:?}"
            );
            drop(plugin);
            let (status, err) = stop(child).await;
            assert!(status.success(), "{status}: {err}");
            assert!(err.contains("team-a/held is still prepared"), "{err}");
            std::fs::remove_file(dra_state.join(format!("{uid}.json"))).unwrap();

            // Mode dra on a cluster without DRA: a visible error, not a quiet fallback.
            api.set_cluster(Cluster::NoDra);
            let mut child = host.start("default:\n  mode: dra\n", Some(&api), 1);
            let (status, err) = finish(&mut child, WAIT).await;
            assert!(!status.success(), "{err}");
            assert!(
                err.contains("mode dra") && err.contains("does not serve resource.k8s.io/v1"),
                "{err}"
            );
            kubelet.stop().await;
        })
        .await
        .expect("the test did not finish in time");
    });
}

/// Prepares claim `a` (1 GiB of GPU 0, no compute request) through the binary; returns
/// its UID, its CDI device and the registered driver, after checking the ledger it made.
async fn prepare_claim(host: &Host<'_>, api: &FakeApiServer) -> (String, String, DraDriver) {
    api.wait_slice(&slice_name(), WAIT)
        .await
        .expect("published");
    let uid = api.put_claim(allocated_claim(
        "team-a",
        "a",
        NODE,
        &[Share {
            device: "gpu-0".into(),
            memory: Some("1Gi".into()),
            compute: Some("1".into()),
        }],
        false,
    ));
    let mut driver = DraDriver::register(&host.path("kubelet/plugins_registry"), WAIT)
        .await
        .expect("the DRA driver registers");
    let response = driver
        .prepare(&[claim("team-a", "a", &uid)])
        .await
        .expect("prepare");
    let prepared = &response.claims[&uid];
    assert_eq!(prepared.error, "", "{prepared:?}");
    let cdi: Vec<&String> = prepared
        .devices
        .iter()
        .flat_map(|d| &d.cdi_device_ids)
        .collect();
    let name = claim_slice_name(&uid, &fake_uuid(0));
    assert_eq!(cdi, [&format!("gpuslice.io/slice={name}")]);
    let ledger = host.path("state/slices").join(&name).join("ledger");
    let ledger = gpuslice_ledger::Ledger::open(&ledger).expect("the claim's ledger");
    assert_eq!(ledger.devices()[0].limit, GIB);
    assert_eq!(
        ledger.compute_limits(),
        None,
        "no compute request, no compute limit"
    );
    (uid, cdi[0].clone(), driver)
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p.display().to_string());
        }
    }
    out
}

#[test]
fn a_claim_prepared_by_the_node_holds_in_a_real_container_and_unprepare_leaves_nothing() {
    let bench = Bench::new();
    let oci = match oci_runtime(&bench) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("SKIPPED a_claim_prepared_by_the_node_holds_in_a_real_container: {why}");
            return;
        }
    };
    let host = Host::new(&bench);
    let rt = runtime();
    let api = rt.block_on(async {
        let api = FakeApiServer::start().await.unwrap();
        api.add_node(NODE);
        api
    });
    let child = host.start("default:\n  mode: dra\n", Some(&api), 1);
    let (uid, cdi, mut driver) = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), prepare_claim(&host, &api))
            .await
            .expect("prepare in time")
    });

    // The container: its image asks for 64 GiB; the claim's edits win.
    let bundle = host.path("bundle");
    let probe = bench.build.join("cuda-probe").display().to_string();
    let script =
        format!("set -e; test -z \"$LD_PRELOAD\"; {probe} init ctx meminfo alloc:2G fill:64M");
    probe_bundle(&bench, &bundle, "dra1", &host.root, &script);
    inject_cdi_device(&bench, &host.path("cdi"), &cdi, &bundle);
    let out = run_container(
        &oci,
        &host.path("runtime-state"),
        &bundle,
        &format!("gs-dra-{}", std::process::id()),
        Duration::from_secs(120),
    );
    let r = Report::from(&out);
    assert!(out.status.success(), "{oci} run failed: {}", r.text());
    assert_eq!(r.rc("init"), 0, "{}", r.text());
    assert_eq!(r.num("meminfo", "total"), GIB, "{}", r.text());
    assert_ne!(r.rc("alloc:2G"), 0, "2 GiB in a 1 GiB claim: {}", r.text());
    assert!(r.num("fill:64M", "bytes") < GIB, "{}", r.text());
    assert!(bench.peak(0) <= GIB, "peak {} > 1 GiB", bench.peak(0));

    // Released: twice (the kubelet retries), and nothing of the claim is left.
    rt.block_on(async {
        for _ in 0..2 {
            let done = driver
                .unprepare(&[claim("team-a", "a", &uid)])
                .await
                .expect("unprepare");
            assert_eq!(done.claims[&uid].error, "", "{done:?}");
        }
        let left: Vec<String> = [
            files_under(&host.path("cdi")),
            files_under(&host.path("state/slices")),
            files_under(&host.path("state/config")),
            files_under(&host.path("state/dra")),
        ]
        .concat();
        assert!(left.is_empty(), "left behind: {left:?}");
        let (status, err) = stop(child).await;
        assert!(status.success(), "{status}: {err}");
    });
}
