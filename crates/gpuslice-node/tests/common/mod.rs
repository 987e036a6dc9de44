//! Shared by the node plugin's tests: two fake GPUs, a two-profile config, and a plugin
//! started against a fake kubelet in a temporary folder. Every wait is bounded.

#![allow(dead_code)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fake_kubelet::FakeKubelet;
use gpuslice_node::inventory::{GpuHealth, GpuInfo, StaticGpus};
use gpuslice_node::provider::TestProvider;
use gpuslice_node::{NodeConfig, NodeError, NodeOptions};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);
/// The bound of a whole test.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

pub const GIB: u64 = 1 << 30;

/// Two profiles: 2 × 8 GiB at 30% and 1 × 4 GiB at 40% on each GPU (20 GiB, 100%).
pub const CONFIG: &str = "\
default:
  profiles:
    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}
    - {name: 4g-40, memory: 4GiB, compute: 40}
  policy: pack
";

pub fn uuid(index: u32) -> String {
    format!("GPU-{index:08x}-aaaa-bbbb-cccc-ddddeeeeffff")
}

pub fn gpu(index: u32) -> GpuInfo {
    GpuInfo {
        uuid: uuid(index),
        index,
        name: "Fake GPU".into(),
        memory: 24 * GIB,
        health: GpuHealth::Healthy,
    }
}

pub fn id(gpu: u32, slice: &str) -> String {
    format!("{}::{slice}", uuid(gpu))
}

/// Runs `body` within [`TEST_LIMIT`]: a hang becomes a failure.
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    tokio::time::timeout(TEST_LIMIT, body)
        .await
        .expect("the test did not finish in time");
}

/// A running plugin.
pub struct Node {
    pub dir: tempfile::TempDir,
    pub gpus: Arc<StaticGpus>,
    pub kubelet: FakeKubelet,
    pub task: JoinHandle<Result<(), NodeError>>,
    stop: Option<oneshot::Sender<()>>,
}

pub fn options(dir: &std::path::Path) -> NodeOptions {
    let mut options = NodeOptions::new("node-1");
    options.device_plugin_dir = dir.to_path_buf();
    options.health_interval = Duration::from_millis(50);
    options.register_retry = Duration::from_millis(100);
    options.register_timeout = WAIT;
    options
}

impl Node {
    /// A fake kubelet, then the plugin with `config` on two healthy GPUs.
    pub async fn start(config: &str) -> Self {
        Self::start_with(config, TestProvider::default()).await
    }

    pub async fn start_with(config: &str, provider: TestProvider) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kubelet = FakeKubelet::start(dir.path()).await.unwrap();
        let gpus = Arc::new(StaticGpus::new(vec![gpu(0), gpu(1)]));
        let config = NodeConfig::from_yaml(config, "test config").unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = options(dir.path());
        let source: Arc<StaticGpus> = gpus.clone();
        let task = tokio::spawn(async move {
            gpuslice_node::run(&config, options, source, Arc::new(provider), async {
                let _ = stopped.await;
            })
            .await
        });
        Self {
            dir,
            gpus,
            kubelet,
            task,
            stop: Some(stop),
        }
    }

    /// Stops the plugin and returns how `run` ended.
    pub async fn shutdown(mut self) -> Result<(), NodeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the plugin did not stop in time")
            .expect("the plugin task failed")
    }
}
