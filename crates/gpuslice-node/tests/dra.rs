//! The DRA driver against a fake API server and the fake kubelet's plugin watcher and
//! DRA client: the published ResourceSlice field by field, its republishing after a
//! wipe, registration with the path `:authority`, prepare and unprepare (twice each,
//! several claims, bad claims, across a plugin restart), and the state left behind.

use std::sync::Arc;
use std::time::Duration;

use fake_kubelet::apiserver::{Cluster, FakeApiServer, Share, allocated_claim};
use fake_kubelet::dra::{DraDriver, claim};
use gpuslice_node::dra::{DraOptions, TestClaimSlices, run_dra};
use gpuslice_node::inventory::{GpuHealth, GpuInfo, StaticGpus};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const NODE: &str = "gpu-node-1";
const GIB: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(20);
const TEST_LIMIT: Duration = Duration::from_secs(120);

fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        uuid: format!("GPU-{index:08x}-aaaa-bbbb-cccc-ddddeeeeffff"),
        index,
        name: "NVIDIA H200".into(),
        memory: 141 * GIB + (300 << 20),
        health: GpuHealth::Healthy,
    }
}

async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("the test did not finish in time");
}

struct Env {
    api: FakeApiServer,
    dir: tempfile::TempDir,
    options: DraOptions,
    slices: TestClaimSlices,
    gpus: Arc<StaticGpus>,
}

struct Running {
    stop: CancellationToken,
    task: JoinHandle<Result<(), gpuslice_node::dra::DraError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the DRA driver did not stop")
            .expect("the DRA driver panicked")
            .expect("the DRA driver failed");
    }
}

impl Env {
    async fn new() -> Self {
        let api = FakeApiServer::start().await.expect("fake API server");
        api.add_node(NODE);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut options = DraOptions::new(NODE);
        options.registry_dir = dir.path().join("plugins_registry");
        options.plugins_dir = dir.path().join("plugins");
        options.state_dir = dir.path().join("state");
        options.driver_version = Some("570.124.06".into());
        options.resync = Duration::from_millis(100);
        options.api_timeout = Duration::from_secs(5);
        std::fs::create_dir_all(&options.registry_dir).expect("registry dir");
        let slices = TestClaimSlices::new(&dir.path().join("slices")).expect("slices dir");
        let gpus = Arc::new(StaticGpus::new(vec![gpu(0), gpu(1)]));
        Self {
            api,
            dir,
            options,
            slices,
            gpus,
        }
    }

    fn client(&self) -> kube::Client {
        let mut config = kube::Config::new(self.api.url().parse().expect("url"));
        config.connect_timeout = Some(Duration::from_secs(5));
        config.read_timeout = Some(Duration::from_secs(5));
        gpuslice_node::dra::api_client(config).expect("kube client")
    }

    fn start(&self) -> Running {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_dra(
            self.options.clone(),
            self.gpus.clone(),
            self.client(),
            Arc::new(self.slices.clone()),
            stop.clone().cancelled_owned(),
        ));
        Running { stop, task }
    }

    /// A claim allocated `shares` (device, memory, compute) by the scheduler; `asks`
    /// says whether the claim's request named `compute`.
    fn claim(&self, name: &str, pool: &str, shares: &[(&str, &str, &str)], asks: bool) -> String {
        let shares: Vec<Share> = shares
            .iter()
            .map(|(device, memory, compute)| Share {
                device: (*device).into(),
                memory: Some((*memory).into()),
                compute: Some((*compute).into()),
            })
            .collect();
        self.api
            .put_claim(allocated_claim("team-a", name, pool, &shares, asks))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_resource_slice_and_republishes_after_a_wipe() {
    bounded(async {
        let env = Env::new().await;
        let running = env.start();
        let name = format!("{NODE}-gpuslice.io");
        env.api
            .wait_slice(&name, WAIT)
            .await
            .expect("the slice was published at start");
        let sent = env.api.slice_json(&name).expect("the slice's JSON");
        assert_eq!(sent["apiVersion"], "resource.k8s.io/v1");
        assert_eq!(sent["kind"], "ResourceSlice");
        assert_eq!(sent["metadata"]["name"], name);
        assert_eq!(sent["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(sent["metadata"]["ownerReferences"][0]["name"], NODE);
        let spec = &sent["spec"];
        assert_eq!(spec["driver"], "gpuslice.io");
        assert_eq!(spec["nodeName"], NODE);
        assert_eq!(
            spec["pool"],
            json!({"name": NODE, "generation": 1, "resourceSliceCount": 1})
        );
        let devices = spec["devices"].as_array().expect("devices");
        assert_eq!(devices.len(), 2);
        // 141 GiB + 300 MiB less the 1 GiB reserve, rounded down to 256 MiB: 140 GiB + 256 MiB.
        let memory = "143616Mi";
        for (i, device) in devices.iter().enumerate() {
            let want = json!({
                "name": format!("gpu-{i}"),
                "allowMultipleAllocations": true,
                "attributes": {
                    "uuid": {"string": gpu(u32::try_from(i).unwrap()).uuid},
                    "model": {"string": "NVIDIA H200"},
                    "index": {"int": i},
                    "driverVersion": {"version": "570.124.6"},
                },
                "capacity": {
                    "memory": {
                        "value": memory,
                        "requestPolicy": {
                            "default": "1Gi",
                            "validRange": {"min": "256Mi", "max": memory, "step": "256Mi"},
                        },
                    },
                    "compute": {
                        "value": "100",
                        "requestPolicy": {
                            "default": "1",
                            "validRange": {"min": "1", "max": "100", "step": "1"},
                        },
                    },
                },
            });
            assert_eq!(device, &want, "device {i}");
        }

        // The kubelet wipes the node's slices: the driver publishes again.
        assert_eq!(env.api.wipe_node_slices(NODE), 1);
        let again = env
            .api
            .wait_slice(&name, WAIT)
            .await
            .expect("the slice was published again after the wipe");
        assert_eq!(again.spec.devices.as_ref().map(Vec::len), Some(2));

        // A GPU lost: the slice is replaced, with a higher generation.
        env.gpus.remove(&gpu(1).uuid);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = env.api.slices().remove(&name);
            if s.as_ref()
                .and_then(|s| s.spec.devices.as_ref())
                .map(Vec::len)
                == Some(1)
            {
                assert_eq!(s.map(|s| s.spec.pool.generation), Some(2));
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the lost GPU stayed published"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        running.stop().await;

        // A restart of the plugin publishes again too.
        env.api.wipe_node_slices(NODE);
        let running = env.start();
        env.api
            .wait_slice(&name, WAIT)
            .await
            .expect("the slice was published after a restart");
        running.stop().await;
    })
    .await;
}

/// The CDI device ID the test provider gives the slice of `uid` on `gpu`.
fn cdi(uid: &str, gpu_index: u32) -> String {
    format!("gpuslice.io/claim={uid}-{}", gpu(gpu_index).uuid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepares_and_unprepares_claims_idempotently_across_a_restart() {
    bounded(async {
        let env = Env::new().await;
        let running = env.start();
        let mut kubelet = DraDriver::register(&env.options.registry_dir, WAIT)
            .await
            .expect("the plugin watcher registered the driver");
        assert_eq!(kubelet.info.name, "gpuslice.io");
        assert_eq!(
            kubelet.info.supported_versions,
            ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
        );
        assert_eq!(
            kubelet.info.endpoint,
            env.dir
                .path()
                .join("plugins/gpuslice.io/dra.sock")
                .display()
                .to_string()
        );

        let a = env.claim("a", NODE, &[("gpu-0", "8Gi", "30")], true);
        let b = env.claim("b", NODE, &[("gpu-0", "4Gi", "1")], false);
        let c = env.claim("c", NODE, &[("gpu-1", "1536Mi", "70")], true);
        let claims = [
            claim("team-a", "a", &a),
            claim("team-a", "b", &b),
            claim("team-a", "c", &c),
            claim("team-a", "missing", "00000000-dead-4000-8000-000000000000"),
        ];
        let first = kubelet
            .prepare(&claims)
            .await
            .expect("NodePrepareResources");
        let second = kubelet
            .prepare(&claims)
            .await
            .expect("NodePrepareResources again");
        assert_eq!(first, second, "a second prepare gives the same answer");
        assert_eq!(first.claims.len(), 4);
        for (uid, gpu_index) in [(&a, 0), (&b, 0), (&c, 1)] {
            let got = &first.claims[uid.as_str()];
            assert_eq!(got.error, "", "claim {uid}");
            assert_eq!(got.devices.len(), 1);
            let d = &got.devices[0];
            assert_eq!(d.pool_name, NODE);
            assert_eq!(d.device_name, format!("gpu-{gpu_index}"));
            assert_eq!(d.request_names, ["gpu"]);
            assert!(
                d.share_id
                    .as_deref()
                    .is_some_and(|s| s.ends_with("-share-0"))
            );
            assert_eq!(d.cdi_device_ids, [cdi(uid, gpu_index)]);
        }
        let missing = &first.claims["00000000-dead-4000-8000-000000000000"];
        assert!(missing.devices.is_empty());
        assert_eq!(missing.error, "ResourceClaim team-a/missing not found");

        // The slices made: 8 GiB at 30%, 4 GiB with no compute limit (b did not ask for
        // compute), 1.5 GiB at 70% on the other GPU.
        let made: Vec<(String, u64, Option<u32>)> = env
            .slices
            .slices()
            .into_iter()
            .map(|s| (s.claim_uid, s.memory, s.compute))
            .collect();
        let mut want = vec![
            (a.clone(), 8 * GIB, Some(30)),
            (b.clone(), 4 * GIB, None),
            (c.clone(), 1536 << 20, Some(70)),
        ];
        want.sort();
        assert_eq!(made, want);

        // The v1beta1 service answers the same, from the state.
        let beta = kubelet
            .prepare_v1beta1(&claims[..1])
            .await
            .expect("v1beta1 NodePrepareResources");
        assert_eq!(
            beta.claims[a.as_str()].devices[0].cdi_device_ids,
            [cdi(&a, 0)]
        );

        // The plugin restarts between prepare and unprepare; the kubelet's watcher
        // registers it again.
        running.stop().await;
        assert!(!env.options.registration_socket().exists());
        let running = env.start();
        let mut kubelet = DraDriver::register(&env.options.registry_dir, WAIT)
            .await
            .expect("registered again after the restart");
        let again = kubelet
            .prepare(&claims[..3])
            .await
            .expect("prepare after restart");
        for uid in [&a, &b, &c] {
            assert_eq!(again.claims[uid.as_str()], first.claims[uid.as_str()]);
        }

        for round in 0..2 {
            let done = kubelet
                .unprepare(&claims)
                .await
                .expect("NodeUnprepareResources");
            assert_eq!(done.claims.len(), 4, "round {round}");
            for (uid, r) in &done.claims {
                assert_eq!(r.error, "", "round {round}, claim {uid}");
            }
        }
        assert!(env.slices.slices().is_empty(), "every slice was removed");
        let left: Vec<_> = std::fs::read_dir(&env.options.state_dir)
            .expect("state dir")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "state left behind: {left:?}");
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_claims_get_errors_naming_them_and_the_others_are_prepared() {
    bounded(async {
        let env = Env::new().await;
        let running = env.start();
        let mut kubelet = DraDriver::register(&env.options.registry_dir, WAIT)
            .await
            .expect("registered");
        let good = env.claim("good", NODE, &[("gpu-1", "2Gi", "50")], true);
        let elsewhere = env.claim("elsewhere", "gpu-node-2", &[("gpu-0", "2Gi", "50")], true);
        let too_big = env.claim("too-big", NODE, &[("gpu-0", "200Gi", "10")], true);
        let too_much = env.claim("too-much", NODE, &[("gpu-0", "1Gi", "150")], true);
        let unknown = env.claim("unknown", NODE, &[("gpu-7", "1Gi", "10")], true);
        let claims = [
            claim("team-a", "good", &good),
            claim("team-a", "elsewhere", &elsewhere),
            claim("team-a", "too-big", &too_big),
            claim("team-a", "too-much", &too_much),
            claim("team-a", "unknown", &unknown),
            claim("team-a", "good", "00000000-0000-4000-8000-0000000000ff"),
        ];
        let answer = kubelet.prepare(&claims).await.expect("NodePrepareResources");
        let error = |uid: &str| answer.claims[uid].error.clone();
        assert_eq!(error(&good), "");
        assert_eq!(answer.claims[good.as_str()].devices[0].cdi_device_ids, [cdi(&good, 1)]);
        assert_eq!(
            error(&elsewhere),
            "ResourceClaim team-a/elsewhere: device gpu-0 is allocated in pool gpu-node-2, \
             on another node than this one (gpu-node-1)"
        );
        let big = error(&too_big);
        assert!(
            big.starts_with("ResourceClaim team-a/too-big: device gpu-0: consumedCapacity memory is 214748364800 bytes, more than the")
                && big.contains("GPU 0 ("),
            "{big}"
        );
        let much = error(&too_much);
        assert!(
            much.starts_with("ResourceClaim team-a/too-much: device gpu-0: consumedCapacity compute is 150%, outside 1..100%"),
            "{much}"
        );
        assert_eq!(
            error(&unknown),
            "ResourceClaim team-a/unknown: unknown device gpu-7 in pool gpu-node-1 \
             (this node has gpu-0, gpu-1)"
        );
        let replaced = error("00000000-0000-4000-8000-0000000000ff");
        assert!(
            replaced.starts_with("ResourceClaim team-a/good has UID"),
            "{replaced}"
        );
        // Only the good claim has a slice.
        let made: Vec<String> = env.slices.slices().into_iter().map(|s| s.claim_uid).collect();
        assert_eq!(made, [good.as_str()]);
        running.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_dra_or_without_consumable_capacity_is_told_and_keeps_no_slice() {
    bounded(async {
        let env = Env::new().await;
        let run = || {
            run_dra(
                env.options.clone(),
                env.gpus.clone(),
                env.client(),
                Arc::new(env.slices.clone()),
                std::future::pending(),
            )
        };
        env.api.set_cluster(Cluster::NoDra);
        let e = run().await.expect_err("no DRA").to_string();
        assert!(e.contains("does not serve resource.k8s.io/v1"), "{e}");
        env.api.set_cluster(Cluster::NoConsumableCapacity);
        let e = run().await.expect_err("no consumable capacity").to_string();
        assert!(
            e.contains("dropped allowMultipleAllocations") && e.contains("DRAConsumableCapacity"),
            "{e}"
        );
        // Nothing was published: the check is a dry-run create.
        assert!(env.api.slices().is_empty(), "{:?}", env.api.slices());
        assert!(!env.options.registration_socket().exists());
        // A slice an earlier run published (when the gate was on) is taken back: the
        // scheduler must not hand out whole GPUs, nor GPUs offered another way.
        env.api.set_cluster(Cluster::ConsumableCapacity);
        let running = env.start();
        let name = format!("{NODE}-gpuslice.io");
        env.api.wait_slice(&name, WAIT).await.expect("published");
        running.stop().await;
        env.api.set_cluster(Cluster::NoConsumableCapacity);
        let e = run().await.expect_err("no consumable capacity").to_string();
        assert!(e.contains("DRAConsumableCapacity"), "{e}");
        assert!(env.api.slices().is_empty(), "{:?}", env.api.slices());
        // The device-plugin-only install has no DeviceClass: not taken for DRA either.
        env.api.set_cluster(Cluster::ConsumableCapacity);
        env.api.remove_device_class("gpuslice.io");
        let e = run().await.expect_err("no DeviceClass").to_string();
        assert!(e.contains("no DeviceClass gpuslice.io"), "{e}");
        env.api.add_device_class("gpuslice.io");
        // The same driver on a cluster with consumable capacity publishes and serves.
        let running = env.start();
        let slice = env.api.wait_slice(&name, WAIT).await.expect("published");
        let devices = slice.spec.devices.unwrap_or_default();
        assert!(
            devices
                .iter()
                .all(|d| d.allow_multiple_allocations == Some(true)),
            "{devices:?}"
        );
        running.stop().await;
    })
    .await;
}
