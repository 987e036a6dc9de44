//! Who holds each slice of the node, from the kubelet's PodResources API (`v1`, on
//! `/var/lib/kubelet/pod-resources/kubelet.sock`), for the labels of the node agent's
//! `/metrics` (the way dcgm-exporter names the pods of its GPUs).
//!
//! * A device plugin's slice: a container whose `devices` list the resource
//!   `gpuslice.io/slice-<profile>` with the device ID `GPU-<uuid>::<profile>-<n>` holds the
//!   slice named after that ID, by the same function the slice was made with
//!   ([`gpuslice_host::provision::slice_name`]).
//! * A DRA slice: a container whose `dynamic_resources` list a claim with a device of
//!   the driver `gpuslice.io` holds the slices of that device's CDI devices: the DRA
//!   plugin answers `NodePrepareResources` with `gpuslice.io/slice=<slice name>`, and the
//!   kubelet reports those names back, so the slice's name is read, not guessed. The claim
//!   is named by its name alone: a pod's claims live in the pod's namespace.
//!
//! `List` gives every pod. A kubelet whose `List` leaves out DRA claims (older ones filled
//! them in `Get` only) is asked `Get` for the pods of the namespaces where the DRA
//! plugin's prepared claims ([`crate::dra::StateDir`]) hold slices that `List` did not
//! explain.
//!
//! [`PodOwners`] is the table the agent reads ([`SliceOwners`], synchronous, never
//! waiting on the kubelet); [`refresh`] keeps it current in a tokio task: every
//! [`PodResourcesOptions::interval`], and sooner (at most once per
//! [`PodResourcesOptions::min_interval`]) when a scrape asks about a slice it does not
//! know. A node without the socket (the kubelet's PodResources off, or not mounted) is
//! logged once and gets no labels; the node goes on.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use gpuslice_agent::owners::{SliceOwner, SliceOwners};
use gpuslice_host::provision::slice_name;
use gpuslice_host::slice::KIND;
use kubelet_api::podresources::v1::{
    GetPodResourcesRequest, ListPodResourcesRequest, PodResources,
    pod_resources_lister_client::PodResourcesListerClient,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::config::RESOURCE_PREFIX;
use crate::dra::DRIVER_NAME;
use crate::host_provider::claim_slice_name;

/// The kubelet's PodResources socket under the kubelet's folder `kubelet_dir`
/// (`/var/lib/kubelet`): `pod-resources/kubelet.sock`.
pub fn default_socket(kubelet_dir: &Path) -> PathBuf {
    kubelet_dir
        .join("pod-resources")
        .join(kubelet_api::podresources::v1::KUBELET_SOCKET_NAME)
}

/// How the kubelet's PodResources API is asked.
#[derive(Debug, Clone)]
pub struct PodResourcesOptions {
    /// The kubelet's socket.
    pub socket: PathBuf,
    /// The DRA plugin's state folder (its prepared claims), to know when `Get` is needed;
    /// `None`: `List` only.
    pub dra_state: Option<PathBuf>,
    /// How often the table is refreshed.
    pub interval: Duration,
    /// The shortest time between two refreshes asked for by scrapes.
    pub min_interval: Duration,
    /// How long one call may take.
    pub timeout: Duration,
}

impl PodResourcesOptions {
    /// The defaults for `socket`: every 10 s, on demand at most once a second, 5 s a call.
    pub fn new(socket: PathBuf) -> Self {
        Self {
            socket,
            dra_state: None,
            interval: Duration::from_secs(10),
            min_interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }
}

/// Why the kubelet's pods could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    /// The socket is not there.
    #[error("the kubelet's PodResources socket {0} does not exist (is it mounted into the pod?)")]
    NoSocket(PathBuf),
    /// A call failed.
    #[error("the kubelet's PodResources socket {socket}: {call}: {status}")]
    Call {
        /// The socket.
        socket: PathBuf,
        /// The call (`List`, `Get <namespace>/<pod>`).
        call: String,
        /// What the kubelet (or the connection) answered.
        status: Box<tonic::Status>,
    },
    /// A call took too long.
    #[error("the kubelet's PodResources socket {socket}: {call} did not answer within {timeout:?}")]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// The call.
        call: String,
        /// The limit.
        timeout: Duration,
    },
}

/// One container holding a slice.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Holder {
    namespace: String,
    pod: String,
    container: String,
    claim: Option<String>,
}

/// The slices the containers of `pods` hold, each with its holders.
fn holders(pods: &[PodResources]) -> HashMap<String, BTreeSet<Holder>> {
    let mut out: HashMap<String, BTreeSet<Holder>> = HashMap::new();
    for pod in pods {
        for c in &pod.containers {
            let holder = |claim: Option<&str>| Holder {
                namespace: pod.namespace.clone(),
                pod: pod.name.clone(),
                container: c.name.clone(),
                claim: claim.map(str::to_string),
            };
            for d in c
                .devices
                .iter()
                .filter(|d| d.resource_name.starts_with(RESOURCE_PREFIX))
            {
                for id in &d.device_ids {
                    out.entry(slice_name(id)).or_default().insert(holder(None));
                }
            }
            for claim in &c.dynamic_resources {
                for resource in claim
                    .claim_resources
                    .iter()
                    // Kubelets before 1.31 did not name the driver: the CDI kind says it.
                    .filter(|r| r.driver_name.is_empty() || r.driver_name == DRIVER_NAME)
                {
                    for cdi in &resource.cdi_devices {
                        if let Some(slice) = cdi
                            .name
                            .strip_prefix(KIND)
                            .and_then(|rest| rest.strip_prefix('='))
                        {
                            out.entry(slice.to_string())
                                .or_default()
                                .insert(holder(Some(&claim.claim_name)));
                        }
                    }
                }
            }
        }
    }
    out
}

/// One owner for a slice's labels: its holder, or, when several containers share it (a
/// DRA claim used by several containers or pods), their pods and containers, each list
/// sorted, without repeats, joined by commas.
fn owner_of(holders: &BTreeSet<Holder>) -> Option<SliceOwner> {
    let first = holders.first()?;
    let join = |part: fn(&Holder) -> &str| {
        let parts: BTreeSet<&str> = holders.iter().map(part).collect();
        parts.into_iter().collect::<Vec<_>>().join(",")
    };
    Some(SliceOwner {
        namespace: join(|h| &h.namespace),
        pod: join(|h| &h.pod),
        container: join(|h| &h.container),
        claim: first
            .claim
            .as_ref()
            .map(|_| join(|h| h.claim.as_deref().unwrap_or_default())),
    })
}

/// The owner of every slice the containers of `pods` hold.
pub fn owners_of(pods: &[PodResources]) -> HashMap<String, SliceOwner> {
    holders(pods)
        .iter()
        .filter_map(|(slice, h)| Some((slice.clone(), owner_of(h)?)))
        .collect()
}

/// The table of owners the agent's `/metrics` reads, and the wish for a refresh.
#[derive(Debug, Default)]
pub struct PodOwners {
    table: RwLock<HashMap<String, SliceOwner>>,
    /// Slices asked about and not known, since they were last looked for.
    asked: Mutex<HashSet<String>>,
    wake: Notify,
}

/// At most this many unknown slices are remembered between refreshes.
const MAX_ASKED: usize = 4096;

impl PodOwners {
    /// An empty table.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Replaces the table.
    fn set(&self, table: HashMap<String, SliceOwner>) {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|s| !table.contains_key(s));
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = table;
    }

    /// The number of slices with a known owner.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no slice has a known owner.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl SliceOwners for PodOwners {
    fn owner(&self, slice: &str) -> Option<SliceOwner> {
        let found = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(slice)
            .cloned();
        if found.is_none() {
            // A slice seen for the first time: look for it now rather than at the next
            // periodic refresh. One not found stays asked until it is, so it does not
            // make every scrape ask the kubelet.
            let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
            if asked.len() >= MAX_ASKED {
                asked.clear();
            }
            if asked.insert(slice.to_string()) {
                self.wake.notify_one();
            }
        }
        found
    }
}

/// A client of the kubelet's PodResources API.
#[derive(Debug)]
pub struct PodResourcesClient {
    socket: PathBuf,
    client: PodResourcesListerClient<Channel>,
    timeout: Duration,
}

impl PodResourcesClient {
    /// A client of `socket` (connected on the first call), each call at most `timeout`.
    pub fn new(socket: &Path, timeout: Duration) -> Self {
        Self {
            socket: socket.to_path_buf(),
            client: PodResourcesListerClient::new(crate::transport::channel(socket)),
            timeout,
        }
    }

    async fn call<T>(
        &self,
        call: String,
        answer: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, PodResourcesError> {
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(PodResourcesError::Call {
                socket: self.socket.clone(),
                call,
                status: Box::new(status),
            }),
            Err(_) => Err(PodResourcesError::Timeout {
                socket: self.socket.clone(),
                call,
                timeout: self.timeout,
            }),
        }
    }

    /// `List`: every pod of the node.
    pub async fn list(&self) -> Result<Vec<PodResources>, PodResourcesError> {
        if !self.socket.exists() {
            return Err(PodResourcesError::NoSocket(self.socket.clone()));
        }
        let mut client = self.client.clone();
        let answer = self
            .call("List".into(), client.list(ListPodResourcesRequest {}))
            .await?;
        Ok(answer.pod_resources)
    }

    /// `Get`: one pod (`None` when the kubelet no longer has it).
    pub async fn get(
        &self,
        namespace: &str,
        pod: &str,
    ) -> Result<Option<PodResources>, PodResourcesError> {
        let mut client = self.client.clone();
        let request = GetPodResourcesRequest {
            pod_name: pod.to_string(),
            pod_namespace: namespace.to_string(),
        };
        match self
            .call(format!("Get {namespace}/{pod}"), client.get(request))
            .await
        {
            Ok(answer) => Ok(answer.pod_resources),
            Err(PodResourcesError::Call { status, .. })
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The namespaces of the claims the DRA plugin prepared (in `dra_state`) whose slices
/// `known` does not hold.
fn unexplained_claim_namespaces(
    dra_state: &Path,
    known: &HashMap<String, SliceOwner>,
) -> BTreeSet<String> {
    let prepared = match crate::dra::StateDir::prepared_in(dra_state) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("pod labels: {e}");
            return BTreeSet::new();
        }
    };
    prepared
        .iter()
        .filter(|c| {
            c.slices
                .iter()
                .any(|s| !known.contains_key(&claim_slice_name(&c.uid, &s.gpu_uuid)))
        })
        .map(|c| c.namespace.clone())
        .collect()
}

/// Who holds each slice now: `List`, then `Get` for the pods where `List` left DRA
/// claims out (see the module's documentation).
pub async fn resolve(
    client: &PodResourcesClient,
    dra_state: Option<&Path>,
) -> Result<HashMap<String, SliceOwner>, PodResourcesError> {
    let mut pods = client.list().await?;
    let mut table = owners_of(&pods);
    let Some(dra_state) = dra_state else {
        return Ok(table);
    };
    let namespaces = unexplained_claim_namespaces(dra_state, &table);
    if namespaces.is_empty() {
        return Ok(table);
    }
    let mut fetched = false;
    for pod in pods
        .iter_mut()
        .filter(|p| namespaces.contains(&p.namespace))
        .filter(|p| p.containers.iter().all(|c| c.dynamic_resources.is_empty()))
    {
        // A pod gone since `List` fails alone; a kubelet without `Get` fails them all.
        match client.get(&pod.namespace, &pod.name).await {
            Ok(Some(got)) => {
                *pod = got;
                fetched = true;
            }
            Ok(None) => {}
            Err(PodResourcesError::Call { status, .. })
                if status.code() == tonic::Code::Unimplemented =>
            {
                tracing::debug!("pod labels: the kubelet does not serve Get: {status}");
                break;
            }
            Err(e @ PodResourcesError::Timeout { .. }) => {
                tracing::debug!("pod labels: {e}");
                break;
            }
            Err(e) => tracing::debug!("pod labels: {e}"),
        }
    }
    if fetched {
        table = owners_of(&pods);
    }
    Ok(table)
}

/// Keeps `owners` current until `stop`: a refresh every `options.interval`, and one when
/// a scrape asks about an unknown slice, at most once per `options.min_interval`. What
/// goes wrong is logged when it starts and when it ends, not at every refresh; the
/// table keeps its last answer through a failed refresh, and empties when the socket
/// goes away.
pub async fn refresh(
    owners: Arc<PodOwners>,
    options: PodResourcesOptions,
    stop: CancellationToken,
) {
    let client = PodResourcesClient::new(&options.socket, options.timeout);
    let mut failing: Option<String> = None;
    loop {
        match resolve(&client, options.dra_state.as_deref()).await {
            Ok(table) => {
                if failing.take().is_some() {
                    tracing::info!(
                        "pod labels: the kubelet's PodResources socket {} answers again",
                        options.socket.display()
                    );
                }
                owners.set(table);
            }
            Err(e) => {
                let why = e.to_string();
                if failing.as_deref() != Some(why.as_str()) {
                    tracing::warn!("pod labels: {why}; slice metrics go without pod labels");
                    failing = Some(why);
                }
                if matches!(e, PodResourcesError::NoSocket(_)) {
                    owners.set(HashMap::new());
                }
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(options.interval) => {}
            () = owners.wake.notified() => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(options.min_interval) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kubelet_api::podresources::v1::{
        CdiDevice, ClaimResource, ContainerDevices, ContainerResources, DynamicResource,
    };

    fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: namespace.into(),
            containers,
            ..Default::default()
        }
    }

    fn with_devices(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            devices: vec![ContainerDevices {
                resource_name: resource.into(),
                device_ids: ids.iter().map(|s| s.to_string()).collect(),
                topology: None,
            }],
            ..Default::default()
        }
    }

    fn with_claim(name: &str, claim: &str, driver: &str, cdi: &[&str]) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            dynamic_resources: vec![DynamicResource {
                claim_name: claim.into(),
                claim_namespace: "ml".into(),
                claim_resources: vec![ClaimResource {
                    cdi_devices: cdi
                        .iter()
                        .map(|n| CdiDevice {
                            name: n.to_string(),
                        })
                        .collect(),
                    driver_name: driver.into(),
                    pool_name: "node-1".into(),
                    device_name: "gpu-0".into(),
                    share_id: Some("s".into()),
                }],
            }],
            ..Default::default()
        }
    }

    #[test]
    fn device_plugin_and_dra_slices_map_to_their_containers() {
        let id = "GPU-aaaa1111-2222-3333-4444-555566667777::8g-30-1";
        let pods = [
            pod(
                "ml",
                "train-0",
                vec![
                    with_devices("main", "gpuslice.io/slice-8g-30", &[id]),
                    with_devices("side", "nvidia.com/gpu", &["GPU-x"]),
                ],
            ),
            pod(
                "ml",
                "serve-0",
                vec![
                    with_claim("a", "gpu", DRIVER_NAME, &["gpuslice.io/slice=u1_aaaa"]),
                    with_claim("b", "gpu", DRIVER_NAME, &["gpuslice.io/slice=u1_aaaa"]),
                    with_claim("c", "other", "gpu.nvidia.com", &["nvidia.com/gpu=gpu-0"]),
                ],
            ),
        ];
        let table = owners_of(&pods);
        assert_eq!(table.len(), 2, "{table:?}");
        assert_eq!(
            table[&slice_name(id)],
            SliceOwner {
                namespace: "ml".into(),
                pod: "train-0".into(),
                container: "main".into(),
                claim: None,
            }
        );
        assert_eq!(
            table["u1_aaaa"],
            SliceOwner {
                namespace: "ml".into(),
                pod: "serve-0".into(),
                container: "a,b".into(),
                claim: Some("gpu".into()),
            }
        );
    }

    #[test]
    fn an_unknown_slice_asks_for_one_refresh() {
        let owners = PodOwners::new();
        assert!(owners.owner("s").is_none());
        assert!(owners.owner("s").is_none());
        // One wish is stored (the first ask); the second ask did not add another.
        let asked = owners.asked.lock().unwrap().clone();
        assert_eq!(asked, HashSet::from(["s".to_string()]));
        owners.set(HashMap::from([("s".to_string(), SliceOwner::default())]));
        assert!(owners.asked.lock().unwrap().is_empty());
        assert_eq!(owners.owner("s"), Some(SliceOwner::default()));
    }
}
