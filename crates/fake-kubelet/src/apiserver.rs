//! A fake Kubernetes API server for tests, on 127.0.0.1: it holds Nodes, ResourceClaims
//! and ResourceSlices as `k8s-openapi` objects and answers the calls a DRA driver makes
//! (`GET` a Node, `GET` a ResourceClaim, `GET`/`POST`/`PUT`/`DELETE` ResourceSlices),
//! with Kubernetes' `Status` errors (404 `NotFound`, 409 `AlreadyExists`/`Conflict`).
//! It keeps each slice's JSON as sent, so tests can check field names, and can wipe a
//! node's slices as the kubelet does. It answers discovery of `resource.k8s.io/v1`, and
//! can play a cluster without DRA, or with DRA but consumable capacity off
//! ([`Cluster`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    AllocationResult, CapacityRequirements, DeviceAllocationResult, DeviceClaim, DeviceRequest,
    DeviceRequestAllocationResult, ExactDeviceRequest, ResourceClaim, ResourceClaimSpec,
    ResourceClaimStatus, ResourceSlice,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// What kind of cluster the fake API server plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cluster {
    /// DRA with consumable capacity (1.36, or 1.34/1.35 with the gate on).
    #[default]
    ConsumableCapacity,
    /// DRA, consumable capacity off: written slices lose their devices'
    /// `allowMultipleAllocations` and capacities' `requestPolicy`, as a real API server
    /// drops the fields of a disabled feature gate.
    NoConsumableCapacity,
    /// No `resource.k8s.io/v1` at all (before 1.34): its paths answer 404.
    NoDra,
}

#[derive(Default)]
struct Store {
    cluster: Cluster,
    device_classes: BTreeMap<String, Value>,
    nodes: BTreeMap<String, Node>,
    claims: BTreeMap<(String, String), ResourceClaim>,
    slices: BTreeMap<String, (ResourceSlice, Value)>,
    version: u64,
    uids: u64,
    slice_writes: u64,
}

impl Store {
    fn next_version(&mut self) -> String {
        self.version += 1;
        self.version.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uids += 1;
        format!("00000000-0000-4000-8000-{:012}", self.uids)
    }
}

type Shared = Arc<Mutex<Store>>;

fn lock(store: &Shared) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}

fn not_found(kind: &str, name: &str) -> Response {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        format!("{kind} \"{name}\" not found"),
    )
}

fn object<T: serde::Serialize>(code: StatusCode, value: &T) -> Response {
    (
        code,
        Json(serde_json::to_value(value).unwrap_or(Value::Null)),
    )
        .into_response()
}

/// What a disabled `DRAConsumableCapacity` gate takes from a slice on write.
fn drop_gated_fields(slice: &mut ResourceSlice) {
    for d in slice.spec.devices.iter_mut().flatten() {
        d.allow_multiple_allocations = None;
        for c in d.capacity.iter_mut().flat_map(|c| c.values_mut()) {
            c.request_policy = None;
        }
    }
}

fn no_dra(s: &Shared) -> Option<Response> {
    (lock(s).cluster == Cluster::NoDra).then(|| {
        status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource".into(),
        )
    })
}

async fn discovery(State(s): State<Shared>) -> Response {
    if let Some(r) = no_dra(&s) {
        return r;
    }
    let resource = |name: &str, kind: &str, namespaced: bool| {
        json!({"name": name, "singularName": "", "namespaced": namespaced, "kind": kind,
               "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]})
    };
    let body = json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "resource.k8s.io/v1",
        "resources": [
            resource("deviceclasses", "DeviceClass", false),
            resource("resourceclaims", "ResourceClaim", true),
            resource("resourceclaimtemplates", "ResourceClaimTemplate", true),
            resource("resourceslices", "ResourceSlice", false),
        ],
    });
    (StatusCode::OK, Json(body)).into_response()
}

async fn get_node(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    match lock(&s).nodes.get(&name) {
        Some(n) => object(StatusCode::OK, n),
        None => not_found("nodes", &name),
    }
}

async fn get_claim(State(s): State<Shared>, Path((ns, name)): Path<(String, String)>) -> Response {
    match lock(&s).claims.get(&(ns, name.clone())) {
        Some(c) => object(StatusCode::OK, c),
        None => not_found("resourceclaims.resource.k8s.io", &name),
    }
}

async fn get_slice(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    if let Some(r) = no_dra(&s) {
        return r;
    }
    match lock(&s).slices.get(&name) {
        Some((slice, _)) => object(StatusCode::OK, slice),
        None => not_found("resourceslices.resource.k8s.io", &name),
    }
}

async fn list_slices(State(s): State<Shared>) -> Response {
    let store = lock(&s);
    let items: Vec<&ResourceSlice> = store.slices.values().map(|(s, _)| s).collect();
    let body = json!({
        "kind": "ResourceSliceList", "apiVersion": "resource.k8s.io/v1",
        "metadata": {"resourceVersion": store.version.to_string()}, "items": items,
    });
    (StatusCode::OK, Json(body)).into_response()
}

/// The slice in `body`, or the API server's `Invalid` answer.
fn parse_slice(body: &Value) -> Result<ResourceSlice, Box<Response>> {
    serde_json::from_value(body.clone()).map_err(|e| {
        Box::new(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("not a ResourceSlice: {e}"),
        ))
    })
}

async fn get_device_class(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    if let Some(r) = no_dra(&s) {
        return r;
    }
    match lock(&s).device_classes.get(&name) {
        Some(c) => (StatusCode::OK, Json(c.clone())).into_response(),
        None => not_found("deviceclasses.resource.k8s.io", &name),
    }
}

/// The query of a write: `?dryRun=All` checks and answers without storing.
#[derive(serde::Deserialize, Default)]
struct WriteQuery {
    #[serde(rename = "dryRun")]
    dry_run: Option<String>,
}

async fn create_slice(
    State(s): State<Shared>,
    Query(query): Query<WriteQuery>,
    Json(body): Json<Value>,
) -> Response {
    if let Some(r) = no_dra(&s) {
        return r;
    }
    let mut slice = match parse_slice(&body) {
        Ok(slice) => slice,
        Err(r) => return *r,
    };
    let Some(name) = slice.metadata.name.clone() else {
        return status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            "metadata.name: Required value".into(),
        );
    };
    let mut store = lock(&s);
    if store.cluster == Cluster::NoConsumableCapacity {
        drop_gated_fields(&mut slice);
    }
    if store.slices.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("resourceslices.resource.k8s.io \"{name}\" already exists"),
        );
    }
    if query.dry_run.as_deref() == Some("All") {
        return object(StatusCode::CREATED, &slice);
    }
    slice.metadata.uid = Some(store.next_uid());
    slice.metadata.resource_version = Some(store.next_version());
    store.slice_writes += 1;
    store.slices.insert(name, (slice.clone(), body));
    object(StatusCode::CREATED, &slice)
}

async fn replace_slice(
    State(s): State<Shared>,
    Path(name): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let mut slice = match parse_slice(&body) {
        Ok(slice) => slice,
        Err(r) => return *r,
    };
    let mut store = lock(&s);
    if store.cluster == Cluster::NoConsumableCapacity {
        drop_gated_fields(&mut slice);
    }
    let Some((old, _)) = store.slices.get(&name) else {
        return not_found("resourceslices.resource.k8s.io", &name);
    };
    if slice.metadata.resource_version.is_some()
        && slice.metadata.resource_version != old.metadata.resource_version
    {
        return status(
            StatusCode::CONFLICT,
            "Conflict",
            format!("resourceslices.resource.k8s.io \"{name}\": the object has been modified"),
        );
    }
    slice.metadata.uid = old.metadata.uid.clone();
    slice.metadata.resource_version = Some(store.next_version());
    store.slice_writes += 1;
    store.slices.insert(name, (slice.clone(), body));
    object(StatusCode::OK, &slice)
}

async fn delete_slice(State(s): State<Shared>, Path(name): Path<String>) -> Response {
    match lock(&s).slices.remove(&name) {
        Some((slice, _)) => object(StatusCode::OK, &slice),
        None => not_found("resourceslices.resource.k8s.io", &name),
    }
}

/// One share of a device that the scheduler allocated to a claim, with what it consumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// The device (`gpu-0`).
    pub device: String,
    /// The consumed `memory` (`8Gi`), if any.
    pub memory: Option<String>,
    /// The consumed `compute` (`30`), if any.
    pub compute: Option<String>,
}

/// The ResourceClaim `namespace/name` as the scheduler leaves it: one request `gpu` of
/// device class `gpuslice.io` asking for `memory` (and `compute` when `asks_compute`),
/// allocated `shares` of devices in `pool` (driver `gpuslice.io`), each with a share ID
/// of its own.
pub fn allocated_claim(
    namespace: &str,
    name: &str,
    pool: &str,
    shares: &[Share],
    asks_compute: bool,
) -> ResourceClaim {
    let mut requests = BTreeMap::from([("memory".to_string(), Quantity("1Gi".into()))]);
    if asks_compute {
        requests.insert("compute".into(), Quantity("1".into()));
    }
    let mut c = ResourceClaim::default();
    c.metadata.namespace = Some(namespace.into());
    c.metadata.name = Some(name.into());
    c.spec = ResourceClaimSpec {
        devices: Some(DeviceClaim {
            requests: Some(vec![DeviceRequest {
                name: "gpu".into(),
                exactly: Some(ExactDeviceRequest {
                    device_class_name: "gpuslice.io".into(),
                    capacity: Some(CapacityRequirements {
                        requests: Some(requests),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    };
    let results = shares
        .iter()
        .enumerate()
        .map(|(i, share)| {
            let mut consumed = BTreeMap::new();
            if let Some(m) = &share.memory {
                consumed.insert("memory".to_string(), Quantity(m.clone()));
            }
            if let Some(c) = &share.compute {
                consumed.insert("compute".to_string(), Quantity(c.clone()));
            }
            DeviceRequestAllocationResult {
                driver: "gpuslice.io".into(),
                pool: pool.into(),
                device: share.device.clone(),
                request: "gpu".into(),
                share_id: Some(format!("{name}-share-{i}")),
                consumed_capacity: Some(consumed),
                ..Default::default()
            }
        })
        .collect();
    c.status = Some(ResourceClaimStatus {
        allocation: Some(AllocationResult {
            devices: Some(DeviceAllocationResult {
                results: Some(results),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    c
}

/// The fake API server.
pub struct FakeApiServer {
    addr: SocketAddr,
    store: Shared,
    task: JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for FakeApiServer {
    /// Its address; the store is shown by the server's own listings.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1, with the DeviceClass `gpuslice.io`.
    pub async fn start() -> std::io::Result<Self> {
        let store = Shared::default();
        let app = Router::new()
            .route("/api/v1/nodes/{name}", get(get_node))
            .route("/apis/resource.k8s.io/v1", get(discovery))
            .route(
                "/apis/resource.k8s.io/v1/deviceclasses/{name}",
                get(get_device_class),
            )
            .route(
                "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims/{name}",
                get(get_claim),
            )
            .route(
                "/apis/resource.k8s.io/v1/resourceslices",
                get(list_slices).post(create_slice),
            )
            .route(
                "/apis/resource.k8s.io/v1/resourceslices/{name}",
                get(get_slice).put(replace_slice).delete(delete_slice),
            )
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let server = Self { addr, store, task };
        // As `kubectl apply -k deploy/kubernetes` leaves a cluster.
        server.add_device_class("gpuslice.io");
        Ok(server)
    }

    /// Adds the DeviceClass `name` (selecting driver `name`), as an install does.
    pub fn add_device_class(&self, name: &str) {
        let class = json!({
            "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
            "metadata": {"name": name},
            "spec": {"selectors": [{"cel": {"expression": format!("device.driver == \"{name}\"")}}]},
        });
        lock(&self.store)
            .device_classes
            .insert(name.to_string(), class);
    }

    /// Removes the DeviceClass `name` (a cluster with the device-plugin-only install).
    pub fn remove_device_class(&self, name: &str) {
        lock(&self.store).device_classes.remove(name);
    }

    /// Plays `cluster` from now on.
    pub fn set_cluster(&self, cluster: Cluster) {
        lock(&self.store).cluster = cluster;
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig (YAML) for this server, with no credentials.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Adds a Node named `name` (with a UID), and returns it.
    pub fn add_node(&self, name: &str) -> Node {
        let mut store = lock(&self.store);
        let mut node = Node::default();
        node.metadata.name = Some(name.to_string());
        node.metadata.uid = Some(store.next_uid());
        node.metadata.resource_version = Some(store.next_version());
        store.nodes.insert(name.to_string(), node.clone());
        node
    }

    /// Adds (or replaces) `claim`, giving it a UID if it has none; returns its UID.
    pub fn put_claim(&self, mut claim: ResourceClaim) -> String {
        let mut store = lock(&self.store);
        if claim.metadata.uid.is_none() {
            claim.metadata.uid = Some(store.next_uid());
        }
        claim.metadata.resource_version = Some(store.next_version());
        let key = (
            claim.metadata.namespace.clone().unwrap_or_default(),
            claim.metadata.name.clone().unwrap_or_default(),
        );
        let uid = claim.metadata.uid.clone().unwrap_or_default();
        store.claims.insert(key, claim);
        uid
    }

    /// The slices now, by name.
    pub fn slices(&self) -> BTreeMap<String, ResourceSlice> {
        lock(&self.store)
            .slices
            .iter()
            .map(|(n, (s, _))| (n.clone(), s.clone()))
            .collect()
    }

    /// The JSON the driver last sent for slice `name`.
    pub fn slice_json(&self, name: &str) -> Option<Value> {
        lock(&self.store).slices.get(name).map(|(_, j)| j.clone())
    }

    /// How many times a slice was created or replaced.
    pub fn slice_writes(&self) -> u64 {
        lock(&self.store).slice_writes
    }

    /// Deletes every slice of `node`, as the kubelet does when it starts or a driver stays
    /// away; returns how many.
    pub fn wipe_node_slices(&self, node: &str) -> usize {
        let mut store = lock(&self.store);
        let before = store.slices.len();
        store
            .slices
            .retain(|_, (s, _)| s.spec.node_name.as_deref() != Some(node));
        before - store.slices.len()
    }

    /// Waits up to `within` for slice `name` to exist.
    pub async fn wait_slice(&self, name: &str, within: Duration) -> Option<ResourceSlice> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((s, _)) = lock(&self.store).slices.get(name) {
                return Some(s.clone());
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
