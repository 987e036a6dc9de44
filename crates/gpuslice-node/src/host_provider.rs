//! The real slice providers, over gpuslice's host code (`gpuslice_host::provision`):
//! each slice gets its ledger and pinned configuration in the state folder and a CDI
//! spec of its own.
//!
//! * [`HostProvider`] ([`SliceProvider`], the device plugins): the slice is named after
//!   its device ID, so every container given one device shares one slice, and two slices
//!   of a GPU never share a ledger. It also answers with the same edits as device nodes,
//!   mounts and environment for runtimes without CDI. A container gets one slice of a
//!   resource: two slices in one process would be two ledgers with one
//!   `GPUSLICE_LEDGER`, so a request for more is refused, naming it.
//! * [`HostClaimProvider`] ([`ClaimSliceProvider`], DRA): the slice of one claim on one
//!   GPU, named after the claim's UID and the GPU ([`claim_slice_name`]); removed again
//!   when the claim is released.

use std::sync::Arc;

use gpuslice_config::{ComputeShares, canonical_uuid};
use gpuslice_host::Slice;
use gpuslice_host::cdi::CdiError;
use gpuslice_host::gpus::HostGpu;
use gpuslice_host::provision::{Provisioner, slice_name};
use gpuslice_host::slice::is_valid_name;

use crate::dra::claims::ClaimSlice;
use crate::dra::provider::ClaimSliceProvider;
use crate::inventory::SliceDevice;
use crate::provider::{Allocation, DeviceNode, Mount, ProviderError, SliceProvider};

/// Lists the host's GPUs with their device minor numbers (NVML on a real node).
pub type HostGpus = Box<dyn Fn() -> Result<Vec<HostGpu>, CdiError> + Send + Sync>;

/// The host's side of both providers: one provisioner (one lock), and the GPUs.
pub struct HostSlices {
    provisioner: Provisioner,
    gpus: HostGpus,
}

impl std::fmt::Debug for HostSlices {
    /// The provisioner; the GPU lister is a closure.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostSlices")
            .field("provisioner", &self.provisioner)
            .finish_non_exhaustive()
    }
}

impl HostSlices {
    /// Makes slices with `provisioner`, finding GPUs' device nodes through `gpus`.
    pub fn new(provisioner: Provisioner, gpus: HostGpus) -> Arc<Self> {
        Arc::new(Self { provisioner, gpus })
    }

    /// The slice `name` on the GPU `gpu_uuid`; `what` names it in errors.
    fn slice(
        &self,
        what: &str,
        name: String,
        gpu_uuid: &str,
        memory: u64,
        compute: Option<u32>,
    ) -> Result<Slice, ProviderError> {
        if !is_valid_name(&name) {
            return Err(ProviderError::new(format!(
                "{what}: {name:?} cannot name a slice"
            )));
        }
        let want = canonical_uuid(gpu_uuid);
        let gpus = (self.gpus)().map_err(|e| {
            ProviderError::with_source(format!("{what}: cannot list the GPUs: {e}"), e)
        })?;
        let gpu = gpus
            .into_iter()
            .find(|g| canonical_uuid(&g.uuid) == want)
            .ok_or_else(|| {
                ProviderError::new(format!(
                    "{what}: GPU {gpu_uuid} is not on this node any more"
                ))
            })?;
        let compute = match compute {
            None => None,
            Some(c) => ComputeShares::new(c, None)
                .map_err(|e| ProviderError::with_source(format!("{what}: compute {c}%: {e}"), e))?,
        };
        Ok(Slice {
            name,
            gpus: vec![gpu],
            memory,
            compute,
        })
    }
}

/// The [`SliceProvider`] of a real node.
#[derive(Debug)]
pub struct HostProvider {
    host: Arc<HostSlices>,
}

impl HostProvider {
    /// Provides the device plugins' slices on `host`.
    pub fn new(host: Arc<HostSlices>) -> Self {
        Self { host }
    }

    /// The slice a device ID stands for.
    fn slice(&self, device: &SliceDevice) -> Result<Slice, ProviderError> {
        self.host.slice(
            &format!("slice {}", device.id),
            slice_name(device.id.as_str()),
            &device.gpu_uuid,
            device.memory,
            device.compute,
        )
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
            .host
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

/// The slice name of a claim's share of one GPU: `<claim uid>_<first 24 hex digits of
/// the GPU's UUID>` (61 characters; unique per claim and GPU, stable across restarts).
pub fn claim_slice_name(claim_uid: &str, gpu_uuid: &str) -> String {
    let hex: String = canonical_uuid(gpu_uuid)
        .trim_start_matches("GPU-")
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(24)
        .collect();
    format!("{claim_uid}_{hex}")
}

/// The [`ClaimSliceProvider`] of a real node.
#[derive(Debug)]
pub struct HostClaimProvider {
    host: Arc<HostSlices>,
}

impl HostClaimProvider {
    /// Provides claims' slices on `host`.
    pub fn new(host: Arc<HostSlices>) -> Self {
        Self { host }
    }
}

impl ClaimSliceProvider for HostClaimProvider {
    fn make(&self, claim: &ClaimSlice) -> Result<Vec<String>, ProviderError> {
        let name = claim_slice_name(&claim.claim_uid, &claim.gpu_uuid);
        let what = format!("claim {} on {}", claim.claim_uid, claim.gpu_uuid);
        let slice = self
            .host
            .slice(&what, name, &claim.gpu_uuid, claim.memory, claim.compute)?;
        let provided = self
            .host
            .provisioner
            .provide(&slice)
            .map_err(|e| ProviderError::with_source(format!("{what}: {e}"), e))?;
        for w in &provided.warnings {
            tracing::warn!("{what}: {w}");
        }
        Ok(vec![provided.cdi_device])
    }

    fn remove(&self, claim: &ClaimSlice) -> Result<(), ProviderError> {
        let name = claim_slice_name(&claim.claim_uid, &claim.gpu_uuid);
        let what = format!("claim {} on {}", claim.claim_uid, claim.gpu_uuid);
        let unknown = self
            .host
            .provisioner
            .withdraw(&name)
            .map_err(|e| ProviderError::with_source(format!("{what}: {e}"), e))?;
        if !unknown.is_empty() {
            tracing::warn!(
                "{what}: its ledger still listed processes of another PID namespace (PID {unknown:?}); removed with it"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_slice_names_are_valid_unique_per_gpu_and_stable() {
        let uid = "9f1c2d3e-4b5a-4c6d-8e7f-0123456789ab";
        let a = claim_slice_name(uid, "GPU-aaaa1111-2222-3333-4444-555566667777");
        let b = claim_slice_name(uid, "gpu-AAAA1111-2222-3333-4444-999966667777");
        assert_eq!(a, format!("{uid}_aaaa11112222333344445555"));
        assert!(is_valid_name(&a), "{a}");
        assert!(a.len() <= gpuslice_host::slice::MAX_NAME_LEN);
        assert_ne!(a, b);
        assert_eq!(
            a,
            claim_slice_name(uid, "GPU-aaaa1111-2222-3333-4444-555566667777")
        );
    }
}
