//! From a ResourceClaim to the slices this node must make for it: reads
//! `status.allocation.devices.results` for driver `gpuslice.io` (device, `shareID`,
//! `consumedCapacity`), checks each result against this node's devices, and gives one
//! [`ClaimSlice`] per GPU of the claim. Every error names the claim and the device.

use std::collections::BTreeMap;

use k8s_openapi::api::resource::v1::{DeviceRequest, ResourceClaim};

use super::publish::{COMPUTE, MEMORY, device_name, usable_memory};
use super::{DRIVER_NAME, quantity};
use crate::inventory::GpuInfo;

/// The slice one claim gets on one GPU. Every container that uses the claim shares it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClaimSlice {
    /// The claim's UID.
    pub claim_uid: String,
    /// The GPU's UUID (`GPU-...`).
    pub gpu_uuid: String,
    /// The memory limit in bytes.
    pub memory: u64,
    /// The compute share in percent, `None` for no compute limit.
    pub compute: Option<u32>,
}

/// One allocation result of the claim, as the kubelet wants it back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AllocatedDevice {
    /// The claim's requests this device serves.
    pub request_names: Vec<String>,
    /// The pool (this node's name).
    pub pool: String,
    /// The device (`gpu-0`).
    pub device: String,
    /// The share of the device, for devices allocated many times.
    pub share_id: Option<String>,
    /// The GPU's UUID.
    pub gpu_uuid: String,
}

/// What a claim needs on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPlan {
    /// The allocation results of this driver.
    pub devices: Vec<AllocatedDevice>,
    /// One slice per GPU.
    pub slices: Vec<ClaimSlice>,
}

/// Why a claim cannot be prepared on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClaimError {
    /// The claim is not in the API server.
    #[error("ResourceClaim {claim} not found")]
    NotFound {
        /// `namespace/name`.
        claim: String,
    },
    /// The claim of that name is another claim (deleted and created again).
    #[error("ResourceClaim {claim} has UID {found}, not {wanted}: the claim was replaced")]
    OtherUid {
        /// `namespace/name`.
        claim: String,
        /// The UID the API server has.
        found: String,
        /// The UID the kubelet asked for.
        wanted: String,
    },
    /// The claim has no allocation (yet).
    #[error("ResourceClaim {claim} is not allocated")]
    NotAllocated {
        /// `namespace/name`.
        claim: String,
    },
    /// None of the claim's devices is this driver's.
    #[error("ResourceClaim {claim} has no device of driver {DRIVER_NAME}")]
    NoDevice {
        /// `namespace/name`.
        claim: String,
    },
    /// A device of the claim is in another node's pool.
    #[error(
        "ResourceClaim {claim}: device {device} is allocated in pool {pool}, on another node than this one ({node})"
    )]
    OtherNode {
        /// `namespace/name`.
        claim: String,
        /// The device.
        device: String,
        /// Its pool.
        pool: String,
        /// This node.
        node: String,
    },
    /// A device of the claim is not one of this node's GPUs.
    #[error(
        "ResourceClaim {claim}: unknown device {device} in pool {pool} (this node has {known})"
    )]
    UnknownDevice {
        /// `namespace/name`.
        claim: String,
        /// The device.
        device: String,
        /// Its pool.
        pool: String,
        /// This node's devices.
        known: String,
    },
    /// A consumed capacity is unreadable or larger than the device has.
    #[error("ResourceClaim {claim}: device {device}: consumedCapacity {capacity} {detail}")]
    Capacity {
        /// `namespace/name`.
        claim: String,
        /// The device.
        device: String,
        /// `memory` or `compute`.
        capacity: String,
        /// What is wrong.
        detail: String,
    },
}

/// What a claim takes of one GPU, over all its shares of it.
#[derive(Default)]
struct Share {
    memory: u64,
    compute: u32,
    uncapped: bool,
}

/// The capacities a request of the claim asks for, by request name (`main` or
/// `main/sub` for a subrequest of `firstAvailable`).
fn requested(claim: &ResourceClaim, request: &str) -> Option<Vec<String>> {
    let requests: &[DeviceRequest] = claim.spec.devices.as_ref()?.requests.as_deref()?;
    let (main, sub) = match request.split_once('/') {
        Some((m, s)) => (m, Some(s)),
        None => (request, None),
    };
    let r = requests.iter().find(|r| r.name == main)?;
    let capacity = match sub {
        None => r.exactly.as_ref()?.capacity.as_ref(),
        Some(sub) => r
            .first_available
            .as_ref()?
            .iter()
            .find(|s| s.name == sub)?
            .capacity
            .as_ref(),
    };
    Some(
        capacity
            .and_then(|c| c.requests.as_ref())
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    )
}

/// What `claim` (the kubelet's `namespace/name` with `uid`) needs on `node`, whose GPUs
/// are `gpus` with `reserve` bytes of each kept back.
///
/// Memory is the consumed `memory` (the whole usable memory when the claim was
/// allocated without consumable capacity). Compute is the consumed `compute` only when a
/// request of the claim asked for `compute`: the scheduler books the policy's default
/// for the others, and they get no compute limit.
pub fn plan(
    claim: &ResourceClaim,
    uid: &str,
    node: &str,
    gpus: &[GpuInfo],
    reserve: u64,
) -> Result<ClaimPlan, ClaimError> {
    let name = format!(
        "{}/{}",
        claim.metadata.namespace.as_deref().unwrap_or_default(),
        claim.metadata.name.as_deref().unwrap_or_default()
    );
    let found = claim.metadata.uid.as_deref().unwrap_or_default();
    if found != uid {
        return Err(ClaimError::OtherUid {
            claim: name,
            found: found.to_string(),
            wanted: uid.to_string(),
        });
    }
    let results = claim
        .status
        .as_ref()
        .and_then(|s| s.allocation.as_ref())
        .ok_or_else(|| ClaimError::NotAllocated {
            claim: name.clone(),
        })?
        .devices
        .as_ref()
        .and_then(|d| d.results.as_deref())
        .unwrap_or_default();
    let ours: Vec<_> = results.iter().filter(|r| r.driver == DRIVER_NAME).collect();
    if ours.is_empty() {
        return Err(ClaimError::NoDevice { claim: name });
    }
    let mut devices: Vec<AllocatedDevice> = Vec::new();
    // Per GPU: memory and compute summed over the claim's shares of it.
    let mut per_gpu: BTreeMap<String, Share> = BTreeMap::new();
    for r in ours {
        if r.pool != node {
            return Err(ClaimError::OtherNode {
                claim: name,
                device: r.device.clone(),
                pool: r.pool.clone(),
                node: node.to_string(),
            });
        }
        let Some(gpu) = gpus.iter().find(|g| device_name(g) == r.device) else {
            return Err(ClaimError::UnknownDevice {
                claim: name,
                device: r.device.clone(),
                pool: r.pool.clone(),
                known: gpus.iter().map(device_name).collect::<Vec<_>>().join(", "),
            });
        };
        let usable = usable_memory(gpu, reserve);
        let capacity_error = |capacity: &str, detail: String| ClaimError::Capacity {
            claim: name.clone(),
            device: r.device.clone(),
            capacity: capacity.to_string(),
            detail,
        };
        let consumed = |key: &str| -> Result<Option<u64>, ClaimError> {
            r.consumed_capacity
                .as_ref()
                .and_then(|c| c.get(key))
                .map(|q| quantity::value(q).map_err(|e| capacity_error(key, e.to_string())))
                .transpose()
        };
        let memory = consumed(MEMORY)?.unwrap_or(usable);
        if memory > usable {
            return Err(capacity_error(
                MEMORY,
                format!(
                    "is {memory} bytes, more than the {usable} bytes of {}",
                    gpu.describe()
                ),
            ));
        }
        if memory == 0 {
            return Err(capacity_error(MEMORY, "is 0 bytes".into()));
        }
        let asks_compute =
            requested(claim, &r.request).is_some_and(|caps| caps.iter().any(|c| c == COMPUTE));
        let compute = if asks_compute {
            match consumed(COMPUTE)?.map(|c| (c, u32::try_from(c))) {
                Some((1..=100, Ok(percent))) => Some(percent),
                Some((c, _)) => {
                    return Err(capacity_error(
                        COMPUTE,
                        format!("is {c}%, outside 1..100% of {}", gpu.describe()),
                    ));
                }
                None => None,
            }
        } else {
            None
        };
        let acc = per_gpu.entry(gpu.uuid.clone()).or_default();
        acc.memory += memory;
        match compute {
            Some(c) => acc.compute += c,
            // One share without a compute limit lifts the limit of the claim's slice.
            None => acc.uncapped = true,
        }
        if acc.memory > usable {
            return Err(capacity_error(
                MEMORY,
                format!(
                    "of all the claim's shares is {} bytes, more than the {usable} bytes of {}",
                    acc.memory,
                    gpu.describe()
                ),
            ));
        }
        if acc.compute > 100 {
            return Err(capacity_error(
                COMPUTE,
                format!(
                    "of all the claim's shares is {}%, more than 100% of {}",
                    acc.compute,
                    gpu.describe()
                ),
            ));
        }
        match devices
            .iter_mut()
            .find(|d| d.device == r.device && d.share_id == r.share_id)
        {
            Some(d) => d.request_names.push(r.request.clone()),
            None => devices.push(AllocatedDevice {
                request_names: vec![r.request.clone()],
                pool: r.pool.clone(),
                device: r.device.clone(),
                share_id: r.share_id.clone(),
                gpu_uuid: gpu.uuid.clone(),
            }),
        }
    }
    let slices = per_gpu
        .into_iter()
        .map(|(gpu_uuid, share)| ClaimSlice {
            claim_uid: uid.to_string(),
            gpu_uuid,
            memory: share.memory,
            compute: (!share.uncapped).then_some(share.compute),
        })
        .collect();
    Ok(ClaimPlan { devices, slices })
}
