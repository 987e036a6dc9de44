//! The kubelet's PodResources API (`v1.PodResourcesLister`), for tests: serves `List`,
//! `Get` and `GetAllocatableResources` on a socket of the test's, answering from the pods
//! the test sets. Like kubelets before the `KubeletPodResourcesDynamicResources` feature,
//! it can leave the containers' DRA claims out of `List` (they stay in `Get`), and like a
//! kubelet without `KubeletPodResourcesGet`, it can refuse `Get` (`Unimplemented`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use kubelet_api::podresources::v1::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};
use tokio::net::UnixListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::FakeKubeletError;

/// What the fake serves, shared with its service.
#[derive(Debug, Default)]
struct Pods {
    pods: RwLock<Vec<PodResources>>,
    allocatable: RwLock<Vec<ContainerDevices>>,
    list_without_claims: AtomicBool,
    no_get: AtomicBool,
    lists: AtomicUsize,
    gets: AtomicUsize,
}

#[derive(Clone)]
struct Service(Arc<Pods>);

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.0.lists.fetch_add(1, Ordering::SeqCst);
        let mut pods = self
            .0
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if self.0.list_without_claims.load(Ordering::SeqCst) {
            for c in pods.iter_mut().flat_map(|p| p.containers.iter_mut()) {
                c.dynamic_resources.clear();
            }
        }
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: pods,
        }))
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        Ok(Response::new(AllocatableResourcesResponse {
            devices: self
                .0
                .allocatable
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            ..Default::default()
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        self.0.gets.fetch_add(1, Ordering::SeqCst);
        if self.0.no_get.load(Ordering::SeqCst) {
            return Err(Status::unimplemented(
                "PodResources Get is off (feature gate KubeletPodResourcesGet)",
            ));
        }
        let want = request.into_inner();
        let pods = self.0.pods.read().unwrap_or_else(PoisonError::into_inner);
        let pod = pods
            .iter()
            .find(|p| p.namespace == want.pod_namespace && p.name == want.pod_name)
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "pod {} in namespace {} not found",
                    want.pod_name, want.pod_namespace
                ))
            })?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

/// A fake PodResources server on a unix socket.
#[derive(Debug)]
pub struct FakePodResources {
    socket: PathBuf,
    pods: Arc<Pods>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FakePodResources {
    /// Serves on `socket` (its folder must exist), with no pods.
    pub async fn start(socket: &Path) -> Result<Self, FakeKubeletError> {
        let _ = std::fs::remove_file(socket);
        let listener = UnixListener::bind(socket).map_err(|source| FakeKubeletError::Io {
            what: format!("binding {}", socket.display()),
            source,
        })?;
        let pods = Arc::new(Pods::default());
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(Service(pods.clone())))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        Ok(Self {
            socket: socket.to_path_buf(),
            pods,
            stop,
            task: Some(task),
        })
    }

    /// The socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Replaces the pods the kubelet reports.
    pub fn set_pods(&self, pods: Vec<PodResources>) {
        *self
            .pods
            .pods
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pods;
    }

    /// Replaces the devices `GetAllocatableResources` reports.
    pub fn set_allocatable(&self, devices: Vec<ContainerDevices>) {
        *self
            .pods
            .allocatable
            .write()
            .unwrap_or_else(PoisonError::into_inner) = devices;
    }

    /// Whether `List` leaves the containers' DRA claims out (`Get` keeps them).
    pub fn list_without_claims(&self, yes: bool) {
        self.pods.list_without_claims.store(yes, Ordering::SeqCst);
    }

    /// Whether `Get` is refused as unimplemented.
    pub fn refuse_get(&self, yes: bool) {
        self.pods.no_get.store(yes, Ordering::SeqCst);
    }

    /// How many `List` calls were answered.
    pub fn list_calls(&self) -> usize {
        self.pods.lists.load(Ordering::SeqCst)
    }

    /// How many `Get` calls were answered.
    pub fn get_calls(&self) -> usize {
        self.pods.gets.load(Ordering::SeqCst)
    }

    /// Stops serving and removes the socket.
    pub async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for FakePodResources {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Builders of the messages a test sets, as the kubelet fills them.
pub mod build {
    use kubelet_api::podresources::v1::{
        CdiDevice, ClaimResource, ContainerDevices, ContainerResources, DynamicResource,
        PodResources,
    };

    /// A pod with `containers`.
    pub fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodResources {
        PodResources {
            name: name.into(),
            namespace: namespace.into(),
            containers,
            ..Default::default()
        }
    }

    /// A container given the device plugin devices `ids` of `resource`.
    pub fn device_container(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
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

    /// A container using the claim `namespace/claim`, whose device `device` of `pool` the
    /// driver `driver` prepared as the CDI devices `cdi`.
    pub fn claim_container(
        name: &str,
        (namespace, claim): (&str, &str),
        (driver, pool, device): (&str, &str, &str),
        cdi: &[&str],
    ) -> ContainerResources {
        ContainerResources {
            name: name.into(),
            dynamic_resources: vec![DynamicResource {
                claim_name: claim.into(),
                claim_namespace: namespace.into(),
                claim_resources: vec![ClaimResource {
                    cdi_devices: cdi
                        .iter()
                        .map(|n| CdiDevice {
                            name: n.to_string(),
                        })
                        .collect(),
                    driver_name: driver.into(),
                    pool_name: pool.into(),
                    device_name: device.into(),
                    share_id: None,
                }],
            }],
            ..Default::default()
        }
    }
}
