//! The pod labels' resolver ([`gpuslice_node::podresources`]) against the fake kubelet's
//! PodResources server: a device plugin's slice maps to its container, a DRA claim's
//! slice to its containers and claim (through `Get` when `List` leaves claims out), a
//! device of another resource or driver maps to nothing, and a node without the socket
//! gets no labels and keeps going.

use std::sync::Arc;
use std::time::Duration;

use fake_kubelet::podresources::FakePodResources;
use fake_kubelet::podresources::build::{claim_container, device_container, pod};
use gpuslice_agent::owners::{SliceOwner, SliceOwners};
use gpuslice_host::provision::slice_name;
use gpuslice_node::dra::StateDir;
use gpuslice_node::dra::claims::ClaimSlice;
use gpuslice_node::dra::state::PreparedClaim;
use gpuslice_node::host_provider::claim_slice_name;
use gpuslice_node::podresources::{
    PodOwners, PodResourcesClient, PodResourcesError, PodResourcesOptions, refresh, resolve,
};
use tokio_util::sync::CancellationToken;

const GPU: &str = "GPU-aaaa1111-2222-3333-4444-555566667777";
const CLAIM_UID: &str = "9f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";

fn owner(namespace: &str, pod: &str, container: &str, claim: Option<&str>) -> SliceOwner {
    SliceOwner {
        namespace: namespace.into(),
        pod: pod.into(),
        container: container.into(),
        claim: claim.map(str::to_string),
    }
}

/// The DRA plugin's record of the claim `ml/shared` prepared on `GPU`.
fn prepare_claim(dir: &std::path::Path) -> String {
    let slice = claim_slice_name(CLAIM_UID, GPU);
    StateDir::open(dir)
        .unwrap()
        .store(&PreparedClaim {
            namespace: "ml".into(),
            name: "shared".into(),
            uid: CLAIM_UID.into(),
            devices: Vec::new(),
            slices: vec![ClaimSlice {
                claim_uid: CLAIM_UID.into(),
                gpu_uuid: GPU.into(),
                memory: 4 << 30,
                compute: None,
            }],
            cdi_device_ids: vec![vec![format!("gpuslice.io/slice={slice}")]],
        })
        .unwrap();
    slice
}

fn pods_of_the_node(dra_slice: &str) -> Vec<kubelet_api::podresources::v1::PodResources> {
    let cdi = format!("gpuslice.io/slice={dra_slice}");
    vec![
        pod(
            "ml",
            "train-0",
            vec![
                device_container(
                    "main",
                    "gpuslice.io/slice-8g-30",
                    &[&format!("{GPU}::8g-30-1")],
                ),
                // Another vendor's device, and a device ID gpuslice never advertised
                // under another resource: neither is a slice.
                device_container("side", "nvidia.com/gpu", &[&format!("{GPU}::8g-30-0")]),
            ],
        ),
        pod(
            "ml",
            "serve-0",
            vec![
                claim_container(
                    "infer",
                    ("ml", "shared"),
                    ("gpuslice.io", "node-1", "gpu-0"),
                    &[&cdi],
                ),
                claim_container(
                    "other",
                    ("ml", "theirs"),
                    ("gpu.example.com", "node-1", "gpu-0"),
                    &["gpu.example.com/gpu=gpu-0"],
                ),
            ],
        ),
        pod(
            "web",
            "frontend",
            vec![device_container("app", "example.com/nic", &["nic-0"])],
        ),
    ]
}

#[tokio::test]
async fn list_maps_device_plugin_and_dra_slices_to_their_containers() {
    let dir = tempfile::tempdir().unwrap();
    let dra = dir.path().join("dra");
    let dra_slice = prepare_claim(&dra);
    let mut kubelet = FakePodResources::start(&dir.path().join("kubelet.sock"))
        .await
        .unwrap();
    kubelet.set_pods(pods_of_the_node(&dra_slice));
    let client = PodResourcesClient::new(kubelet.socket(), Duration::from_secs(10));
    let table = resolve(&client, Some(&dra)).await.unwrap();
    assert_eq!(table.len(), 2, "{table:?}");
    assert_eq!(
        table[&slice_name(&format!("{GPU}::8g-30-1"))],
        owner("ml", "train-0", "main", None)
    );
    assert_eq!(
        table[&dra_slice],
        owner("ml", "serve-0", "infer", Some("shared"))
    );
    assert!(
        !table.contains_key(&slice_name(&format!("{GPU}::8g-30-0"))),
        "a device of another resource is not a slice: {table:?}"
    );
    assert_eq!(kubelet.get_calls(), 0, "List said everything");
    kubelet.stop().await;
}

#[tokio::test]
async fn a_claim_that_list_leaves_out_is_found_through_get() {
    let dir = tempfile::tempdir().unwrap();
    let dra = dir.path().join("dra");
    let dra_slice = prepare_claim(&dra);
    let mut kubelet = FakePodResources::start(&dir.path().join("kubelet.sock"))
        .await
        .unwrap();
    kubelet.set_pods(pods_of_the_node(&dra_slice));
    kubelet.list_without_claims(true);
    let client = PodResourcesClient::new(kubelet.socket(), Duration::from_secs(10));
    let table = resolve(&client, Some(&dra)).await.unwrap();
    assert_eq!(
        table.get(&dra_slice),
        Some(&owner("ml", "serve-0", "infer", Some("shared"))),
        "{table:?}"
    );
    // Only the pods of the claim's namespace without claims in List were asked for:
    // train-0 and serve-0, not web/frontend.
    assert_eq!(kubelet.get_calls(), 2);
    // Without the DRA state there is no claim to look for: List only.
    let table = resolve(&client, None).await.unwrap();
    assert!(!table.contains_key(&dra_slice), "{table:?}");
    assert_eq!(kubelet.get_calls(), 2);
    // A kubelet without Get: the device plugin's slice is still known.
    kubelet.refuse_get(true);
    let table = resolve(&client, Some(&dra)).await.unwrap();
    assert_eq!(table.len(), 1, "{table:?}");
    assert_eq!(kubelet.get_calls(), 3, "the first refusal stops the Gets");
    kubelet.stop().await;
}

#[tokio::test]
async fn no_socket_means_no_labels_and_the_refresher_keeps_going() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let client = PodResourcesClient::new(&socket, Duration::from_secs(5));
    match resolve(&client, None).await {
        Err(PodResourcesError::NoSocket(path)) => assert_eq!(path, socket),
        other => panic!("{other:?}"),
    }
    // The refresher starts without the socket, then finds the kubelet when it comes.
    let owners = PodOwners::new();
    let stop = CancellationToken::new();
    let mut options = PodResourcesOptions::new(socket.clone());
    options.interval = Duration::from_millis(100);
    options.min_interval = Duration::from_millis(10);
    let task = tokio::spawn(refresh(owners.clone(), options, stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(owners.is_empty());
    assert!(
        !task.is_finished(),
        "the refresher stopped without the socket"
    );
    let mut kubelet = FakePodResources::start(&socket).await.unwrap();
    kubelet.set_pods(pods_of_the_node("unused"));
    let slice = slice_name(&format!("{GPU}::8g-30-1"));
    let found = wait_for_owner(&owners, &slice, Duration::from_secs(30)).await;
    assert_eq!(found, owner("ml", "train-0", "main", None));
    // The kubelet goes away: the labels go with it.
    kubelet.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !owners.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "labels kept");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the refresher stops when told")
        .unwrap();
}

#[tokio::test]
async fn a_scrape_asking_for_a_new_slice_refreshes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("kubelet.sock");
    let mut kubelet = FakePodResources::start(&socket).await.unwrap();
    let owners = PodOwners::new();
    let stop = CancellationToken::new();
    let mut options = PodResourcesOptions::new(socket);
    // The periodic refresh never comes within the test: only the ask can bring it.
    options.interval = Duration::from_secs(3600);
    options.min_interval = Duration::from_millis(10);
    let task = tokio::spawn(refresh(owners.clone(), options, stop.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kubelet.list_calls() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no first List");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    kubelet.set_pods(pods_of_the_node("unused"));
    let slice = slice_name(&format!("{GPU}::8g-30-1"));
    let found = wait_for_owner(&owners, &slice, Duration::from_secs(30)).await;
    assert_eq!(found.pod, "train-0");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    kubelet.stop().await;
}

/// Asks `owners` (as scrapes do) until `slice` has an owner.
async fn wait_for_owner(owners: &Arc<PodOwners>, slice: &str, within: Duration) -> SliceOwner {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(found) = owners.owner(slice) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no owner of {slice} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
