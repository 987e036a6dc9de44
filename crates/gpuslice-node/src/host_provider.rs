//! The real [`SliceProvider`]: gives a container its slice through gpuslice's host code
//! (`gpuslice_host::provision`): the slice's ledger and pinned configuration in the state
//! folder, a CDI spec of its own, and the same edits as device nodes, mounts and
//! environment for runtimes without CDI. The slice is named after its device ID, so every
//! container given one device shares one slice, and two slices of a GPU never share a
//! ledger.
//!
//! A container gets one slice of a resource: two slices in one process would be two
//! ledgers with one `GPUSLICE_LEDGER`, so a request for more is refused, naming it.

use gpuslice_config::{ComputeShares, canonical_uuid};
use gpuslice_host::Slice;
use gpuslice_host::cdi::CdiError;
use gpuslice_host::gpus::HostGpu;
use gpuslice_host::provision::{Provisioner, slice_name};

use crate::inventory::SliceDevice;
use crate::provider::{Allocation, DeviceNode, Mount, ProviderError, SliceProvider};

/// Lists the host's GPUs with their device minor numbers (NVML on a real node).
pub type HostGpus = Box<dyn Fn() -> Result<Vec<HostGpu>, CdiError> + Send + Sync>;

/// The [`SliceProvider`] of a real node.
pub struct HostProvider {
    provisioner: Provisioner,
    gpus: HostGpus,
}

impl HostProvider {
    /// Provides slices with `provisioner`, finding GPUs' device nodes through `gpus`.
    pub fn new(provisioner: Provisioner, gpus: HostGpus) -> Self {
        Self { provisioner, gpus }
    }

    /// The slice a device ID stands for.
    fn slice(&self, device: &SliceDevice) -> Result<Slice, ProviderError> {
        let want = canonical_uuid(&device.gpu_uuid);
        let gpus = (self.gpus)().map_err(|e| {
            ProviderError::with_source(format!("slice {}: cannot list the GPUs: {e}", device.id), e)
        })?;
        let gpu = gpus
            .into_iter()
            .find(|g| canonical_uuid(&g.uuid) == want)
            .ok_or_else(|| {
                ProviderError::new(format!(
                    "slice {}: GPU {} is not on this node any more",
                    device.id, device.gpu_uuid
                ))
            })?;
        let compute = match device.compute {
            None => None,
            Some(c) => ComputeShares::new(c, None).map_err(|e| {
                ProviderError::with_source(format!("slice {}: compute {c}%: {e}", device.id), e)
            })?,
        };
        Ok(Slice {
            name: slice_name(device.id.as_str()),
            gpus: vec![gpu],
            memory: device.memory,
            compute,
        })
    }
}

impl SliceProvider for HostProvider {
    fn allocate(&self, slices: &[SliceDevice]) -> Result<Allocation, ProviderError> {
        let [device] = slices else {
            let ids: Vec<&str> = slices.iter().map(|s| s.id.as_str()).collect();
            return Err(ProviderError::new(format!(
                "a container gets one gpuslice slice of a resource, and this one was given {} ({}); ask for 1",
                slices.len(),
                ids.join(", ")
            )));
        };
        let slice = self.slice(device)?;
        let provided = self
            .provisioner
            .provide(&slice)
            .map_err(|e| ProviderError::with_source(format!("slice {}: {e}", device.id), e))?;
        for w in &provided.warnings {
            tracing::warn!("slice {}: {w}", device.id);
        }
        let edits = provided.edits;
        let mut a = Allocation {
            cdi_devices: vec![provided.cdi_device],
            ..Allocation::default()
        };
        for e in &edits.env {
            if let Some((k, v)) = e.split_once('=') {
                a.envs.insert(k.to_string(), v.to_string());
            }
        }
        a.mounts = edits
            .mounts
            .iter()
            .map(|m| Mount {
                container_path: m.container_path.clone().into(),
                host_path: m.host_path.clone().into(),
                read_only: m.options.iter().any(|o| o == "ro"),
            })
            .collect();
        a.device_nodes = edits
            .device_nodes
            .iter()
            .map(|n| DeviceNode {
                container_path: n.path.clone().into(),
                host_path: n.host_path.clone().unwrap_or_else(|| n.path.clone()).into(),
                permissions: n.permissions.clone().unwrap_or_else(|| "rw".into()),
            })
            .collect();
        Ok(a)
    }
}
