//! The node plugin against the fake kubelet: registration (with both `:authority`
//! forms), ListAndWatch, GetPreferredAllocation, Allocate for several containers,
//! PreStartContainer, kubelet restarts, GPU health, and bad requests.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{CONFIG, Node, WAIT, bounded, id, uuid};
use fake_kubelet::{FakeKubelet, FakeKubeletError};
use gpuslice_node::inventory::GpuHealth;
use gpuslice_node::inventory::StaticGpus;
use gpuslice_node::provider::TestProvider;
use kubelet_api::deviceplugin::v1beta1::{Device, HEALTHY, UNHEALTHY};
use tonic::Code;

fn ids(devices: &[Device]) -> Vec<String> {
    let mut ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    ids.sort();
    ids
}

fn health_of(devices: &[Device], gpu: u32) -> Vec<&str> {
    devices
        .iter()
        .filter(|d| d.id.starts_with(&uuid(gpu)))
        .map(|d| d.health.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_flow_through_the_fake_kubelet() {
    bounded(async {
        let mut node = Node::start(CONFIG).await;
        let mut regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        assert_eq!(regs[0].resource(), "gpuslice.io/slice-4g-40");
        assert_eq!(regs[1].resource(), "gpuslice.io/slice-8g-30");
        for reg in &regs {
            assert_eq!(reg.request.version, "v1beta1");
            let options = reg.request.options.unwrap();
            assert!(options.get_preferred_allocation_available);
            assert!(!options.pre_start_required);
            // The kubelet dialled back with both `:authority` forms and got one answer.
            assert_eq!(reg.options_via_localhost, options);
            assert_eq!(reg.options_via_path, options);
        }
        assert_eq!(regs[1].request.endpoint, "gpuslice-8g-30.sock");

        let eight = &mut regs[1];
        let devices = eight
            .wait_devices(WAIT, "4 healthy slices", |d| {
                d.len() == 4 && d.iter().all(|d| d.health == HEALTHY)
            })
            .await
            .unwrap();
        assert_eq!(
            ids(&devices),
            [
                id(0, "8g-30-0"),
                id(0, "8g-30-1"),
                id(1, "8g-30-0"),
                id(1, "8g-30-1")
            ]
        );
        assert!(devices.iter().all(|d| d.id.len() <= 63));

        // Pack: with GPU 1 half used, the next slice goes to GPU 1.
        let free = [id(0, "8g-30-0"), id(0, "8g-30-1"), id(1, "8g-30-1")];
        let free: Vec<&str> = free.iter().map(String::as_str).collect();
        let picked = eight.preferred(&free, &[], 1).await.unwrap();
        assert_eq!(picked, [id(1, "8g-30-1")]);
        let picked = eight.preferred(&free, &[free[0]], 2).await.unwrap();
        assert_eq!(picked, [id(0, "8g-30-0"), id(0, "8g-30-1")]);

        // One pod, three containers: two of them given the same slice.
        let a = id(0, "8g-30-0");
        let b = id(1, "8g-30-1");
        let response = eight
            .allocate(&[&[a.as_str()], &[b.as_str()], &[a.as_str()]])
            .await
            .unwrap();
        assert_eq!(response.container_responses.len(), 3);
        let first = &response.container_responses[0];
        assert_eq!(first.cdi_devices.len(), 1);
        assert_eq!(first.cdi_devices[0].name, format!("gpuslice.io/slice={a}"));
        assert_eq!(first.envs["GPUSLICE_SLICE"], a);
        assert_eq!(first.envs["NVIDIA_VISIBLE_DEVICES"], uuid(0));
        assert!(first.devices.iter().any(|d| d.host_path == "/dev/nvidia0"));
        assert!(first.mounts.iter().any(|m| m.read_only));
        assert_eq!(
            response.container_responses[1].cdi_devices[0].name,
            format!("gpuslice.io/slice={b}")
        );
        assert_eq!(response.container_responses[2], *first);
        eight.pre_start(&[a.as_str()]).await.unwrap();

        let four = &mut regs[0];
        let devices = four
            .wait_devices(WAIT, "2 slices", |d| d.len() == 2)
            .await
            .unwrap();
        assert_eq!(ids(&devices), [id(0, "4g-40-0"), id(1, "4g-40-0")]);

        // The kubelet restarts: it wipes the folder, serves a new kubelet.sock, and every
        // plugin registers again on a fresh socket.
        drop(regs);
        node.kubelet.restart().await.unwrap();
        let mut regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        assert_eq!(regs[1].resource(), "gpuslice.io/slice-8g-30");
        assert_eq!(regs[1].options_via_path, regs[1].options_via_localhost);
        regs[1]
            .wait_devices(WAIT, "4 healthy slices after the restart", |d| {
                d.len() == 4 && d.iter().all(|d| d.health == HEALTHY)
            })
            .await
            .unwrap();
        let response = regs[1].allocate(&[&[b.as_str()]]).await.unwrap();
        assert_eq!(response.container_responses.len(), 1);

        // And again.
        drop(regs);
        node.kubelet.restart().await.unwrap();
        let regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        assert_eq!(regs.len(), 2);
        drop(regs);

        let dir = node.dir.path().to_path_buf();
        node.shutdown().await.unwrap();
        assert!(!dir.join("gpuslice-8g-30.sock").exists());
        assert!(!dir.join("gpuslice-4g-40.sock").exists());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_gpu_makes_its_slices_unhealthy_until_it_returns() {
    bounded(async {
        let node = Node::start(CONFIG).await;
        let mut regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        let eight = &mut regs[1];
        eight
            .wait_devices(WAIT, "all healthy", |d| {
                d.len() == 4 && d.iter().all(|d| d.health == HEALTHY)
            })
            .await
            .unwrap();

        // GPU 1 falls off the bus.
        let lost = node.gpus.remove(&uuid(1)).unwrap();
        let devices = eight
            .wait_devices(WAIT, "GPU 1's slices unhealthy", |d| {
                health_of(d, 1) == [UNHEALTHY, UNHEALTHY]
            })
            .await
            .unwrap();
        assert_eq!(health_of(&devices, 0), [HEALTHY, HEALTHY]);
        regs[0]
            .wait_devices(WAIT, "GPU 1's 4g slice unhealthy", |d| {
                health_of(d, 1) == [UNHEALTHY] && health_of(d, 0) == [HEALTHY]
            })
            .await
            .unwrap();

        // Allocating a slice of the lost GPU fails, naming the GPU.
        let gone = id(1, "8g-30-0");
        let e = regs[1].allocate(&[&[gone.as_str()]]).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains(&gone), "{}", e.message());
        assert!(
            e.message().contains(&format!("GPU 1 ({})", uuid(1))),
            "{}",
            e.message()
        );
        assert!(e.message().contains("gone"), "{}", e.message());

        // It comes back.
        node.gpus.insert(lost);
        regs[1]
            .wait_devices(WAIT, "GPU 1's slices healthy again", |d| {
                d.iter().all(|d| d.health == HEALTHY)
            })
            .await
            .unwrap();
        regs[1].allocate(&[&[gone.as_str()]]).await.unwrap();

        // An XID-style fault on GPU 0, then NVML failing altogether: fail closed.
        node.gpus
            .set_health(&uuid(0), GpuHealth::Unhealthy("XID 79".into()));
        regs[1]
            .wait_devices(WAIT, "GPU 0's slices unhealthy", |d| {
                health_of(d, 0) == [UNHEALTHY, UNHEALTHY] && health_of(d, 1) == [HEALTHY, HEALTHY]
            })
            .await
            .unwrap();
        node.gpus.fail(Some("NVML: Unknown Error"));
        regs[1]
            .wait_devices(WAIT, "every slice unhealthy", |d| {
                d.iter().all(|d| d.health == UNHEALTHY)
            })
            .await
            .unwrap();
        let e = regs[1]
            .allocate(&[&[id(1, "8g-30-1").as_str()]])
            .await
            .unwrap_err();
        assert!(
            e.message().contains("NVML: Unknown Error"),
            "{}",
            e.message()
        );
        node.gpus.fail(None);
        node.gpus.set_health(&uuid(0), GpuHealth::Healthy);
        regs[1]
            .wait_devices(WAIT, "all healthy again", |d| {
                d.iter().all(|d| d.health == HEALTHY)
            })
            .await
            .unwrap();
        drop(regs);
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_device_ids_get_a_clear_error_and_the_plugin_keeps_serving() {
    bounded(async {
        let node = Node::start(CONFIG).await;
        let mut regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        let eight = &mut regs[1];
        for bad in [
            "GPU-ffffffff-0000-0000-0000-000000000000::8g-30-0".to_string(),
            // A real device, but of the other resource.
            id(0, "4g-40-0"),
            String::new(),
        ] {
            let good = id(0, "8g-30-0");
            let e = eight
                .allocate(&[&[good.as_str()], &[bad.as_str()]])
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}: {e}");
            assert!(e.message().contains(&format!("{bad:?}")), "{}", e.message());
            assert!(
                e.message().contains("gpuslice.io/slice-8g-30"),
                "{}",
                e.message()
            );
        }
        let e = eight.allocate(&[&[]]).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("lists no device"), "{}", e.message());
        let e = eight.preferred(&["nope"], &[], 1).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("\"nope\""), "{}", e.message());
        let one = id(0, "8g-30-0");
        let e = eight.preferred(&[one.as_str()], &[], 2).await.unwrap_err();
        assert!(e.message().contains("only 1 are free"), "{}", e.message());

        // Still serving.
        let ok = id(1, "8g-30-1");
        eight.allocate(&[&[ok.as_str()]]).await.unwrap();
        assert!(!node.task.is_finished());
        drop(regs);
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_is_an_error_naming_the_slice() {
    bounded(async {
        let provider = gpuslice_node::provider::TestProvider {
            refuse: Some("cannot write the CDI spec /etc/cdi/gpuslice.json: read-only".into()),
        };
        let node = Node::start_with(CONFIG, provider).await;
        let mut regs = node.kubelet.registrations(2, WAIT).await.unwrap();
        let a = id(0, "4g-40-0");
        let e = regs[0].allocate(&[&[a.as_str()]]).await.unwrap_err();
        assert_eq!(e.code(), Code::Internal);
        assert!(e.message().contains(&a), "{}", e.message());
        assert!(e.message().contains("read-only"), "{}", e.message());
        drop(regs);
        node.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_waits_for_a_kubelet_that_is_not_there_yet() {
    bounded(async {
        // The plugin starts first: no kubelet.sock yet.
        let dir = tempfile::tempdir().unwrap();
        let gpus = Arc::new(StaticGpus::new(vec![common::gpu(0)]));
        let config = gpuslice_node::NodeConfig::from_yaml(CONFIG, "c").unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = common::options(dir.path());
        let task = tokio::spawn(async move {
            gpuslice_node::run(
                &config,
                options,
                gpus,
                Arc::new(TestProvider::default()),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        });
        let socket = dir.path().join("gpuslice-8g-30.sock");
        tokio::time::timeout(WAIT, async {
            while !socket.exists() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the plugin serves without a kubelet");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished());

        // The kubelet comes up (wiping the folder) and refuses the first registration.
        let mut kubelet = FakeKubelet::start(dir.path()).await.unwrap();
        kubelet.refuse_next(1);
        let mut accepted = Vec::new();
        let mut refused = 0;
        while accepted.len() < 2 {
            match kubelet.next_registration(WAIT).await {
                Ok(r) => accepted.push(r),
                Err(FakeKubeletError::Refused(why)) => {
                    assert!(why.contains("refused on purpose"), "{why}");
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 1);
        let mut names: Vec<&str> = accepted.iter().map(|r| r.resource()).collect();
        names.sort();
        assert_eq!(
            names,
            ["gpuslice.io/slice-4g-40", "gpuslice.io/slice-8g-30"]
        );
        drop(accepted);

        // It goes away for a while (no kubelet.sock), then comes back.
        kubelet.stop().await;
        assert!(!kubelet.any_registration(Duration::from_millis(300)).await);
        kubelet.restart().await.unwrap();
        let regs = kubelet.registrations(2, WAIT).await.unwrap();
        assert_eq!(regs.len(), 2);
        drop(regs);
        let _ = stop.send(());
        tokio::time::timeout(WAIT, task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    })
    .await;
}
