//! A fake Kubernetes API server for tests, on 127.0.0.1: it holds Nodes, ResourceClaims
//! and ResourceSlices as `k8s-openapi` objects and answers the calls a DRA driver makes
//! (`GET` a Node, `GET` a ResourceClaim, `GET`/`POST`/`PUT`/`DELETE` ResourceSlices),
//! with Kubernetes' `Status` errors (404 `NotFound`, 409 `AlreadyExists`/`Conflict`).
//! It keeps each slice's JSON as sent, so tests can check field names, and can wipe a
//! node's slices as the kubelet does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Store {
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

async fn create_slice(State(s): State<Shared>, Json(body): Json<Value>) -> Response {
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
    if store.slices.contains_key(&name) {
        return status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("resourceslices.resource.k8s.io \"{name}\" already exists"),
        );
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

impl FakeApiServer {
    /// Serves on a free port of 127.0.0.1.
    pub async fn start() -> std::io::Result<Self> {
        let store = Shared::default();
        let app = Router::new()
            .route("/api/v1/nodes/{name}", get(get_node))
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
        Ok(Self { addr, store, task })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
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
