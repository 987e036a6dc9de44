//! Bad input to `gpuslice node`: a node config that would oversubscribe a GPU, malformed
//! or impossible configs, GPUs that are missing, a missing device-plugin folder. Each
//! is refused before anything is served or registered, with a message naming the thing,
//! and never a crash.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{WAIT, bounded, gpu, options};
use fake_kubelet::FakeKubelet;
use gpuslice_node::inventory::StaticGpus;
use gpuslice_node::provider::TestProvider;
use gpuslice_node::{NodeConfig, NodeError};

/// Runs the plugin on two 24 GiB GPUs against a fake kubelet; returns how `run` ended
/// (it must end by itself), and whether anything registered or left a socket.
async fn run_with(config: &str, gpus: StaticGpus) -> (Result<(), NodeError>, bool) {
    let dir = tempfile::tempdir().unwrap();
    let kubelet = FakeKubelet::start(dir.path()).await.unwrap();
    let config = NodeConfig::from_yaml(config, "node-config.yaml").unwrap();
    let result = tokio::time::timeout(
        WAIT,
        gpuslice_node::run(
            &config,
            options(dir.path()),
            Arc::new(gpus),
            Arc::new(TestProvider::default()),
            std::future::pending(),
        ),
    )
    .await
    .expect("run should refuse the config at once, not serve");
    let registered = kubelet.any_registration(Duration::from_millis(200)).await;
    let sockets = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .any(|e| e.file_name() != "kubelet.sock");
    (result, registered || sockets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_that_oversubscribes_a_gpu_is_refused_at_start() {
    bounded(async {
        // 3 × 8 GiB on a 24 GiB GPU leaves nothing of the 1 GiB reserve.
        let config = "default:\n  profiles:\n    - {name: 8g, memory: 8GiB, count: 3}\n";
        let (result, touched) = run_with(config, StaticGpus::new(vec![gpu(0), gpu(1)])).await;
        let e = result.unwrap_err();
        assert!(matches!(e, NodeError::Inventory(_)), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("GPU 0 (GPU-00000000-aaaa"), "{text}");
        assert!(text.contains("oversubscribed"), "{text}");
        assert!(text.contains("3 × 8GiB (8g)"), "{text}");
        assert!(!touched, "nothing may be served or registered");

        // A node override that does it, on that node only.
        let config = "default:\n  profiles: [{name: a, memory: 4GiB}]\nnodes:\n  node-1:\n    profiles: [{name: a, memory: 30GiB}]\n";
        let (result, touched) = run_with(config, StaticGpus::new(vec![gpu(0)])).await;
        assert!(result.unwrap_err().to_string().contains("30GiB"));
        assert!(!touched);
    })
    .await;
}

#[test]
fn malformed_and_impossible_configs_name_the_field() {
    let cases = [
        (
            "default:\n  profiles: [{name: a, memory: 8GiB\n",
            "node-config.yaml is malformed",
        ),
        (
            "default:\n  profiles: [{name: a, memory: 8GiB, colour: red}]\n",
            "unknown field `colour`",
        ),
        (
            "default:\n  profiles:\n    - {name: a, memory: 8GiB, compute: 60}\n    - {name: b, memory: 8GiB, compute: 50}\n",
            "default.profiles: the compute shares of one GPU add up to 110%",
        ),
        (
            "nodes:\n  gpu-3:\n    profiles: [{name: a, memory: eight}]\n",
            "nodes.gpu-3.profiles[0].memory",
        ),
        (
            "default:\n  split: {count: 4}\n  reserve: lots\n",
            "default.reserve",
        ),
    ];
    for (text, want) in cases {
        let e = NodeConfig::from_yaml(text, "node-config.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{text:?}: wanted {want:?} in {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_gpus_and_a_missing_folder_are_named() {
    bounded(async {
        let config = "default:\n  split: {count: 2}\n  gpus: [0, 3]\n";
        let (result, touched) = run_with(config, StaticGpus::new(vec![gpu(0), gpu(1)])).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("GPU 3") && e.contains("no such GPU"), "{e}");
        assert!(!touched);

        let gpus = StaticGpus::new(vec![gpu(0)]);
        gpus.fail(Some("NVML: driver/library version mismatch"));
        let (result, touched) = run_with("default:\n  split: {count: 2}\n", gpus).await;
        let e = result.unwrap_err().to_string();
        assert!(e.contains("driver/library version mismatch"), "{e}");
        assert!(!touched);

        let (result, _) =
            run_with("default:\n  split: {count: 2}\n", StaticGpus::new(vec![])).await;
        assert!(result.unwrap_err().to_string().contains("no GPU"));

        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(&dir.path().join("device-plugins"));
        opts.node_name = "node-1".into();
        let config = NodeConfig::from_yaml("default:\n  split: {count: 2}\n", "c").unwrap();
        let e = gpuslice_node::run(
            &config,
            opts,
            Arc::new(StaticGpus::new(vec![gpu(0)])),
            Arc::new(TestProvider::default()),
            std::future::pending(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("device-plugins") && e.contains("does not exist"),
            "{e}"
        );
    })
    .await;
}
