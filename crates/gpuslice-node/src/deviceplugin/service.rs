//! The `DevicePlugin` gRPC service of one resource: its device list (with each GPU's
//! health), the preferred allocation, and `Allocate` through the [`SliceProvider`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use kubelet_api::deviceplugin::v1beta1::{
    self as api, AllocateRequest, AllocateResponse, CdiDevice, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, device_plugin_server::DevicePlugin,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::health::HealthMap;
use super::preferred::preferred;
use crate::inventory::{GpuHealth, Inventory, Resource, SliceDevice};
use crate::provider::{Allocation, SliceProvider};

/// The options every gpuslice device plugin registers with.
pub fn plugin_options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The device list of `resource` under `health`.
pub fn devices(resource: &Resource, health: &HealthMap) -> Vec<api::Device> {
    resource
        .slices
        .iter()
        .map(|s| api::Device {
            id: s.id.to_string(),
            health: match health.get(&s.gpu_uuid) {
                Some(GpuHealth::Healthy) => api::HEALTHY,
                _ => api::UNHEALTHY,
            }
            .to_string(),
            topology: None,
        })
        .collect()
}

/// The device plugin of one resource.
#[derive(Debug)]
pub struct SlicePlugin {
    inventory: Arc<Inventory>,
    resource: usize,
    health: watch::Receiver<HealthMap>,
    provider: Arc<dyn SliceProvider>,
    stop: CancellationToken,
}

impl SlicePlugin {
    /// The plugin of `inventory.resources()[resource]`. Its `ListAndWatch` streams end
    /// when `stop` is cancelled.
    pub fn new(
        inventory: Arc<Inventory>,
        resource: usize,
        health: watch::Receiver<HealthMap>,
        provider: Arc<dyn SliceProvider>,
        stop: CancellationToken,
    ) -> Self {
        Self {
            inventory,
            resource,
            health,
            provider,
            stop,
        }
    }

    fn resource(&self) -> &Resource {
        &self.inventory.resources()[self.resource]
    }

    /// The slices of one container's request, checked: known to this resource, on a
    /// GPU that is healthy now.
    fn container_slices(&self, ids: &[String]) -> Result<Vec<SliceDevice>, Status> {
        let resource = self.resource();
        if ids.is_empty() {
            return Err(Status::invalid_argument(format!(
                "a container request for {} lists no device",
                resource.name
            )));
        }
        let health = self.health.borrow().clone();
        let mut seen = BTreeSet::new();
        let mut slices = Vec::new();
        for id in ids {
            if !seen.insert(id.as_str()) {
                continue;
            }
            let slice = resource
                .slices
                .iter()
                .find(|s| s.id.as_str() == id)
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "unknown device ID {id:?}: {} has no such slice on this node",
                        resource.name
                    ))
                })?;
            match health.get(&slice.gpu_uuid) {
                Some(GpuHealth::Healthy) => {}
                other => {
                    let why = match other {
                        Some(GpuHealth::Unhealthy(why)) => why.as_str(),
                        _ => "no health known",
                    };
                    return Err(Status::failed_precondition(format!(
                        "device {id:?} is on GPU {} ({}), which is unhealthy: {why}",
                        slice.gpu_index, slice.gpu_uuid
                    )));
                }
            }
            slices.push(slice.clone());
        }
        Ok(slices)
    }
}

fn to_response(a: Allocation) -> ContainerAllocateResponse {
    let path = |p: std::path::PathBuf| p.to_string_lossy().into_owned();
    ContainerAllocateResponse {
        envs: a.envs.into_iter().collect::<HashMap<_, _>>(),
        mounts: a
            .mounts
            .into_iter()
            .map(|m| api::Mount {
                container_path: path(m.container_path),
                host_path: path(m.host_path),
                read_only: m.read_only,
            })
            .collect(),
        devices: a
            .device_nodes
            .into_iter()
            .map(|d| api::DeviceSpec {
                container_path: path(d.container_path),
                host_path: path(d.host_path),
                permissions: d.permissions,
            })
            .collect(),
        annotations: a.annotations.into_iter().collect(),
        cdi_devices: a
            .cdi_devices
            .into_iter()
            .map(|name| CdiDevice { name })
            .collect(),
    }
}

#[tonic::async_trait]
impl DevicePlugin for SlicePlugin {
    async fn get_device_plugin_options(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(plugin_options()))
    }

    type ListAndWatchStream = ReceiverStream<Result<ListAndWatchResponse, Status>>;

    async fn list_and_watch(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let inventory = self.inventory.clone();
        let index = self.resource;
        let mut health = self.health.clone();
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let resource = &inventory.resources()[index];
            let mut last: Option<Vec<api::Device>> = None;
            loop {
                let now = devices(resource, &health.borrow_and_update());
                if last.as_ref() != Some(&now) {
                    let sent = tx.send(Ok(ListAndWatchResponse {
                        devices: now.clone(),
                    }));
                    tokio::select! {
                        r = sent => if r.is_err() { return },
                        () = stop.cancelled() => return,
                    }
                    last = Some(now);
                }
                tokio::select! {
                    changed = health.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let resource = self.resource();
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            let size = usize::try_from(c.allocation_size).map_err(|_| {
                Status::invalid_argument(format!(
                    "allocation_size {} for {} is negative",
                    c.allocation_size, resource.name
                ))
            })?;
            let ids = preferred(
                self.inventory.policy(),
                resource,
                &c.available_device_i_ds,
                &c.must_include_device_i_ds,
                size,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
            container_responses.push(ContainerPreferredAllocationResponse { device_i_ds: ids });
        }
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let mut container_responses = Vec::new();
        for c in request.into_inner().container_requests {
            let slices = self.container_slices(&c.devices_ids)?;
            let provider = self.provider.clone();
            let names: Vec<String> = slices.iter().map(|s| s.id.to_string()).collect();
            let allocation = tokio::task::spawn_blocking(move || provider.allocate(&slices))
                .await
                .map_err(|e| Status::internal(format!("allocating {names:?}: {e}")))?
                .map_err(|e| {
                    tracing::error!("allocating {names:?}: {e}");
                    Status::internal(format!("cannot prepare slice(s) {names:?}: {e}"))
                })?;
            tracing::info!(resource = %self.resource().name, "allocated {names:?}");
            container_responses.push(to_response(allocation));
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _request: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}
