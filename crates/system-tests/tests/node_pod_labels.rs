//! `gpuslice node` with its agent on the fake GPU names the pod of each slice in
//! `/metrics`: the fake kubelet's device plugin flow hands out two slices, the fake
//! kubelet's PodResources server reports one of them in a pod's container, and the
//! scrape (parsed with an OpenMetrics parser, which wants one label set per family)
//! carries that pod's `namespace`, `pod` and `container` on every series of that slice,
//! and the same labels, empty, on the other's. The same for a DRA claim prepared by the
//! node through the fake kubelet's DRA client and the fake API server, reported by a
//! PodResources server whose `List` leaves claims out (so the node asks `Get`): the
//! slice's series also name the claim.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_kubelet::FakeKubelet;
use fake_kubelet::apiserver::{FakeApiServer, Share, allocated_claim};
use fake_kubelet::dra::{DraDriver, claim};
use fake_kubelet::podresources::FakePodResources;
use fake_kubelet::podresources::build::{claim_container, device_container, pod};
use gpuslice_host::provision::slice_name;
use gpuslice_node::host_provider::claim_slice_name;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use system_tests::{Bench, fake_uuid, http_get, metrics_addr};

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

const CONFIG: &str = "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n  reserve: 1GiB\n";

/// Stops the node when the test ends, however it ends.
struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The labels of `family`'s sample for `slice` (none when it has no such sample).
fn labels_of(m: &Exposition, family: &str, slice: &str) -> Option<Vec<(String, String)>> {
    let f = m.families.get(family)?;
    f.iter_samples().find_map(|s| {
        let set = s.get_labelset().ok()?;
        (set.get_label_value("slice") == Some(slice)).then(|| {
            set.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
    })
}

fn scrape(addr: &str) -> (String, Exposition) {
    let (head, body) = http_get(addr, "/metrics");
    assert!(head.contains(" 200"), "{head}");
    let m = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not OpenMetrics text: {e:?}\n{body}"));
    (body, m)
}

/// `gpuslice node` on the fake GPU of `bench`'s folder, with `config`, the kubelet folder
/// `kubelet_dir` and `/metrics` on any free port.
fn node_command(bench: &Bench, config: &Path, kubelet_dir: &Path) -> Command {
    let mut cmd = bench.node(config, "node-1", kubelet_dir);
    cmd.arg("--no-probe")
        .args(["--metrics-addr", "127.0.0.1:0"])
        .arg("--agent-socket")
        .arg(bench.dir.path().join("agent/agent.sock"));
    cmd
}

#[test]
fn metrics_name_the_pod_container_and_namespace_of_a_device_plugin_slice() {
    let bench = Bench::new();
    let host = bench.dir.path();
    let config = host.join("config.yaml");
    std::fs::write(&config, CONFIG).unwrap();
    system_tests::fake_device_nodes(host);
    let kubelet_dir = host.join("kubelet");
    let plugins = kubelet_dir.join("device-plugins");
    let pod_resources = kubelet_dir.join("pod-resources");
    std::fs::create_dir_all(&plugins).unwrap();
    std::fs::create_dir_all(&pod_resources).unwrap();
    let log = host.join("node.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut kubelet = FakeKubelet::start(&plugins).await.unwrap();
        let mut lister = FakePodResources::start(&pod_resources.join("kubelet.sock"))
            .await
            .unwrap();
        let mut cmd = node_command(&bench, &config, &kubelet_dir);
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut node = Node(cmd.spawn().expect("start gpuslice node"));
        let mut plugin = kubelet
            .next_registration(Duration::from_secs(60))
            .await
            .expect("a registration");
        assert_eq!(plugin.resource(), "gpuslice.io/slice-8g-30");
        let held = format!("{}::8g-30-0", fake_uuid(0));
        let idle = format!("{}::8g-30-1", fake_uuid(0));
        for id in [&held, &idle] {
            plugin.allocate(&[&[id.as_str()]]).await.expect("allocate");
        }
        // The kubelet started a pod with the first slice; the second's pod is gone.
        lister.set_pods(vec![pod(
            "ml",
            "train-0",
            vec![device_container(
                "trainer",
                "gpuslice.io/slice-8g-30",
                &[held.as_str()],
            )],
        )]);
        let addr = metrics_addr(&log);
        let (held, idle) = (slice_name(&held), slice_name(&idle));
        let want = [
            ("namespace", "ml"),
            ("pod", "train-0"),
            ("container", "trainer"),
        ];
        // The first scrape that meets the slice asks the kubelet; a later one has it.
        let (body, m) = scrape_until_named(&addr, &held, &want, &log).await;
        for family in [
            "gpuslice_slice_memory_limit_bytes",
            "gpuslice_slice_memory_used_bytes",
            "gpuslice_slice_compute_limit_ratio",
            "gpuslice_slice_processes",
            "gpuslice_slice_info",
        ] {
            let labels = labels_of(&m, family, &held)
                .unwrap_or_else(|| panic!("{family} of {held} missing:\n{body}"));
            for (k, v) in want {
                assert!(
                    labels.contains(&(k.to_string(), v.to_string())),
                    "{family} of {held}: no {k}={v} in {labels:?}"
                );
            }
            assert!(
                labels.contains(&("claim".to_string(), String::new())),
                "a device plugin's slice has no claim: {labels:?}"
            );
            let other = labels_of(&m, family, &idle)
                .unwrap_or_else(|| panic!("{family} of {idle} missing:\n{body}"));
            for k in ["namespace", "pod", "container", "claim"] {
                assert!(
                    other.contains(&(k.to_string(), String::new())),
                    "{family} of {idle}, held by no pod: {k} not empty in {other:?}"
                );
            }
        }
        assert!(lister.list_calls() >= 1);
        drop(plugin);
        // SAFETY: signalling our own child, which has not been waited for yet.
        unsafe { libc::kill(node.0.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        loop {
            if let Some(status) = node.0.try_wait().unwrap() {
                assert!(
                    status.success(),
                    "{status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gpuslice node did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lister.stop().await;
        kubelet.stop().await;
    });
}

/// Scrapes until `family`'s sample for `slice` has every label of `want`; returns the
/// last scrape.
async fn scrape_until_named(
    addr: &str,
    slice: &str,
    want: &[(&str, &str)],
    log: &Path,
) -> (String, Exposition) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (body, m) = scrape(addr);
        let labels = labels_of(&m, "gpuslice_slice_memory_limit_bytes", slice);
        if labels.as_ref().is_some_and(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&(k.to_string(), v.to_string())))
        }) {
            return (body, m);
        }
        assert!(
            Instant::now() < deadline,
            "no labels {want:?} on {slice} within 30 s:\n{body}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn metrics_name_the_pod_and_claim_of_a_dra_slice_found_through_get() {
    let bench = Bench::new();
    let host = bench.dir.path();
    let config = host.join("config.yaml");
    std::fs::write(&config, "default:\n  mode: dra\n").unwrap();
    system_tests::fake_device_nodes(host);
    let kubelet_dir = host.join("kubelet");
    for dir in ["device-plugins", "plugins_registry", "pod-resources"] {
        std::fs::create_dir_all(kubelet_dir.join(dir)).unwrap();
    }
    let log = host.join("node.log");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let api = FakeApiServer::start().await.unwrap();
        api.add_node("node-1");
        let kubeconfig = host.join("kubeconfig.yaml");
        std::fs::write(&kubeconfig, api.kubeconfig()).unwrap();
        let mut lister = FakePodResources::start(&kubelet_dir.join("pod-resources/kubelet.sock"))
            .await
            .unwrap();
        lister.list_without_claims(true);
        let mut cmd = node_command(&bench, &config, &kubelet_dir);
        cmd.arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("HOME", host.join("home"))
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let mut node = Node(cmd.spawn().expect("start gpuslice node"));
        api.wait_slice("node-1-gpuslice.io", Duration::from_secs(60))
            .await
            .unwrap_or_else(|| {
                panic!(
                    "no ResourceSlice:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            });
        let uid = api.put_claim(allocated_claim(
            "team-a",
            "gpu",
            "node-1",
            &[Share {
                device: "gpu-0".into(),
                memory: Some("1Gi".into()),
                compute: None,
            }],
            false,
        ));
        let mut driver = DraDriver::register(
            &kubelet_dir.join("plugins_registry"),
            Duration::from_secs(60),
        )
        .await
        .expect("the DRA driver registers");
        let response = driver
            .prepare(&[claim("team-a", "gpu", &uid)])
            .await
            .expect("prepare");
        let prepared = &response.claims[&uid];
        assert_eq!(prepared.error, "", "{prepared:?}");
        let cdi: Vec<&str> = prepared
            .devices
            .iter()
            .flat_map(|d| d.cdi_device_ids.iter().map(String::as_str))
            .collect();
        let slice = claim_slice_name(&uid, &fake_uuid(0));
        // The kubelet gives the claim to two containers of one pod, and reports back the
        // CDI devices the driver answered.
        let container = |name: &str| {
            claim_container(
                name,
                ("team-a", "gpu"),
                ("gpuslice.io", "node-1", "gpu-0"),
                &cdi,
            )
        };
        lister.set_pods(vec![pod(
            "team-a",
            "infer-0",
            vec![container("server"), container("warmup")],
        )]);
        let addr = metrics_addr(&log);
        let want = [
            ("namespace", "team-a"),
            ("pod", "infer-0"),
            ("container", "server,warmup"),
            ("claim", "gpu"),
        ];
        let (body, m) = scrape_until_named(&addr, &slice, &want, &log).await;
        let info = labels_of(&m, "gpuslice_slice_info", &slice)
            .unwrap_or_else(|| panic!("no slice_info of {slice}:\n{body}"));
        for (k, v) in want {
            assert!(
                info.contains(&(k.to_string(), v.to_string())),
                "slice_info: no {k}={v} in {info:?}"
            );
        }
        assert!(
            info.contains(&("source".to_string(), "dra".to_string())),
            "{info:?}"
        );
        assert!(lister.get_calls() >= 1, "the claim came through Get");
        // SAFETY: signalling our own child, which has not been waited for yet.
        unsafe { libc::kill(node.0.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while node.0.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gpuslice node did not stop on SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lister.stop().await;
    });
}
