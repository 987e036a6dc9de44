//! The node's ResourceSlice: what the scheduler sees of this node's GPUs. One slice per
//! node (driver `gpuslice.io`, pool = node name), each GPU one device that many claims
//! can share (`allowMultipleAllocations`), with its attributes and two consumable
//! capacities, `memory` (bytes) and `compute` (percent). [`Publisher`] keeps it in the
//! API server: on start, whenever it is gone (the kubelet wipes a node's slices), and
//! whenever the GPUs change.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::resource::v1::{
    CapacityRequestPolicy, CapacityRequestPolicyRange, Device, DeviceAttribute, DeviceCapacity,
    DeviceClass, ResourcePool, ResourceSlice, ResourceSliceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PostParams};

use super::{DRIVER_NAME, quantity};
use crate::inventory::GpuInfo;

/// The name of the memory capacity (bytes).
pub const MEMORY: &str = "memory";
/// The name of the compute capacity (percent of the GPU's SMs' time).
pub const COMPUTE: &str = "compute";
/// Memory is consumed in steps of 256 MiB (the smallest slice gpuslice makes).
pub const MEMORY_STEP: u64 = 256 << 20;
/// What a claim that does not ask for memory consumes: 1 GiB (or the whole usable
/// memory of a smaller GPU), a small, visible limit rather than the whole GPU.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// What a claim that does not ask for compute consumes in the scheduler's books: 1%, the
/// least. The plugin gives such a claim no compute limit (see `claims`).
pub const DEFAULT_COMPUTE: u64 = 1;

/// A device's name in the slice: `gpu-<index>`.
pub fn device_name(gpu: &GpuInfo) -> String {
    format!("gpu-{}", gpu.index)
}

/// The ResourceSlice's name: `<node>-gpuslice.io`.
pub fn slice_name(node: &str) -> String {
    format!("{node}-{DRIVER_NAME}")
}

/// The memory a GPU offers to claims: its memory less `reserve`, rounded down to
/// [`MEMORY_STEP`].
pub fn usable_memory(gpu: &GpuInfo, reserve: u64) -> u64 {
    let left = gpu.memory.saturating_sub(reserve);
    left - left % MEMORY_STEP
}

/// The driver version as a semantic version (`570.124.06` → `570.124.6`), if it is one.
fn semver(version: &str) -> Option<String> {
    let parts: Vec<u64> = version
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    match parts.as_slice() {
        [a] => Some(format!("{a}.0.0")),
        [a, b] => Some(format!("{a}.{b}.0")),
        [a, b, c] => Some(format!("{a}.{b}.{c}")),
        _ => None,
    }
}

/// One GPU as a shareable device.
pub fn device(gpu: &GpuInfo, reserve: u64, driver_version: Option<&str>) -> Device {
    let string = |s: &str| DeviceAttribute {
        string: Some(s.to_string()),
        ..Default::default()
    };
    let mut attributes = BTreeMap::from([
        ("uuid".to_string(), string(&gpu.uuid)),
        ("model".to_string(), string(&gpu.name)),
        (
            "index".to_string(),
            DeviceAttribute {
                int: Some(i64::from(gpu.index)),
                ..Default::default()
            },
        ),
    ]);
    if let Some(v) = driver_version {
        let attribute = match semver(v) {
            Some(version) => DeviceAttribute {
                version: Some(version),
                ..Default::default()
            },
            None => string(v),
        };
        attributes.insert("driverVersion".to_string(), attribute);
    }
    let memory = usable_memory(gpu, reserve);
    let capacity = BTreeMap::from([
        (
            MEMORY.to_string(),
            DeviceCapacity {
                value: quantity::bytes(memory),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(quantity::bytes(DEFAULT_MEMORY.min(memory))),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: quantity::bytes(MEMORY_STEP),
                        max: Some(quantity::bytes(memory)),
                        step: Some(quantity::bytes(MEMORY_STEP)),
                    }),
                    valid_values: None,
                }),
            },
        ),
        (
            COMPUTE.to_string(),
            DeviceCapacity {
                value: quantity::count(100),
                request_policy: Some(CapacityRequestPolicy {
                    default: Some(quantity::count(DEFAULT_COMPUTE)),
                    valid_range: Some(CapacityRequestPolicyRange {
                        min: quantity::count(1),
                        max: Some(quantity::count(100)),
                        step: Some(quantity::count(1)),
                    }),
                    valid_values: None,
                }),
            },
        ),
    ]);
    Device {
        name: device_name(gpu),
        allow_multiple_allocations: Some(true),
        attributes: Some(attributes),
        capacity: Some(capacity),
        ..Default::default()
    }
}

/// The ResourceSlice of `node` with `gpus` (GPUs with too little memory for one step are
/// left out), owned by the Node object `owner` when known so that it goes with the node.
pub fn resource_slice(
    node: &str,
    gpus: &[GpuInfo],
    reserve: u64,
    driver_version: Option<&str>,
    owner: Option<&Node>,
    generation: i64,
) -> ResourceSlice {
    let mut gpus: Vec<&GpuInfo> = gpus
        .iter()
        .filter(|g| usable_memory(g, reserve) >= MEMORY_STEP)
        .collect();
    gpus.sort_by_key(|g| g.index);
    let owner_references = owner.and_then(|n| {
        Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Node".into(),
            name: n.metadata.name.clone()?,
            uid: n.metadata.uid.clone()?,
            controller: Some(true),
            block_owner_deletion: None,
        }])
    });
    ResourceSlice {
        metadata: ObjectMeta {
            name: Some(slice_name(node)),
            owner_references,
            ..Default::default()
        },
        spec: ResourceSliceSpec {
            driver: DRIVER_NAME.to_string(),
            node_name: Some(node.to_string()),
            pool: ResourcePool {
                name: node.to_string(),
                generation,
                resource_slice_count: 1,
            },
            devices: Some(
                gpus.iter()
                    .map(|g| device(g, reserve, driver_version))
                    .collect(),
            ),
            ..Default::default()
        },
    }
}

/// Why the slice could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The API server refused or did not answer.
    #[error("cannot publish ResourceSlice {name}: {source}")]
    Api {
        /// The slice's name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },
    /// The API server stored the slice without its devices' `allowMultipleAllocations`:
    /// consumable capacity is off (the `DRAConsumableCapacity` feature gate, off by
    /// default before Kubernetes 1.36), so every claim would take a whole GPU.
    #[error(
        "the API server dropped allowMultipleAllocations from ResourceSlice {name}: consumable capacity is off in this cluster (Kubernetes 1.36 has it on by default; on 1.34 and 1.35 turn on the DRAConsumableCapacity feature gate of the API server, scheduler, controller manager and kubelet)"
    )]
    ConsumableCapacityOff {
        /// The slice's name.
        name: String,
    },
}

impl PublishError {
    /// Whether trying again later can help (the API server was busy or away, or the
    /// object changed meanwhile), as opposed to a definite answer: a 4xx refusal.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(status) => {
                    status.code >= 500 || matches!(status.code, 408 | 409 | 429)
                }
                _ => true,
            },
            Self::ConsumableCapacityOff { .. } => false,
        }
    }
}

/// Whether `slice` has devices and every one kept `allowMultipleAllocations` (the API
/// server drops the field when consumable capacity is off).
pub fn keeps_shared_devices(slice: &ResourceSlice) -> bool {
    let devices = slice.spec.devices.as_deref().unwrap_or_default();
    !devices.is_empty()
        && devices
            .iter()
            .all(|d| d.allow_multiple_allocations == Some(true))
}

/// Why the cluster cannot take this DRA driver, when the API server says so; `None`
/// when it can. Three questions, each answered for sure or not at all (an error):
/// * does it serve `resource.k8s.io/v1` ResourceSlices (Kubernetes 1.34 and later)?
/// * is there the DeviceClass `gpuslice.io`, which the full install creates and the
///   device-plugin-only install leaves out (so that a cluster upgraded from before 1.34
///   keeps its device plugins until the DRA install is applied)?
/// * does it keep `allowMultipleAllocations`? Asked with a dry-run create of the slice
///   `probe` under another name, so nothing is stored, and a slice stored earlier (whose
///   gated fields an update would keep) cannot answer for the cluster of today.
pub async fn missing_dra(
    client: &kube::Client,
    probe: &ResourceSlice,
) -> Result<Option<String>, kube::Error> {
    match client.list_api_group_resources("resource.k8s.io/v1").await {
        Ok(list) if list.resources.iter().any(|r| r.name == "resourceslices") => {}
        Ok(_) => {
            return Ok(Some(
                "the API server serves resource.k8s.io/v1 without resourceslices".into(),
            ));
        }
        Err(kube::Error::Api(status)) if status.code == 404 => {
            return Ok(Some(
                "the API server does not serve resource.k8s.io/v1 (DRA is GA from Kubernetes 1.34)"
                    .into(),
            ));
        }
        Err(e) => return Err(e),
    }
    let classes: Api<DeviceClass> = Api::all(client.clone());
    if classes.get_opt(DRIVER_NAME).await?.is_none() {
        return Ok(Some(format!(
            "there is no DeviceClass {DRIVER_NAME} (kubectl apply -k deploy/kubernetes creates it; the device-plugin-only install leaves it out)"
        )));
    }
    let mut probe = probe.clone();
    let name = format!("{}-probe", probe.metadata.name.clone().unwrap_or_default());
    probe.metadata.name = Some(name.clone());
    probe.metadata.owner_references = None;
    let slices: Api<ResourceSlice> = Api::all(client.clone());
    let stored = slices
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &probe,
        )
        .await?;
    if keeps_shared_devices(&stored) {
        Ok(None)
    } else {
        Ok(Some(
            PublishError::ConsumableCapacityOff { name }.to_string(),
        ))
    }
}

/// What [`Publisher::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// The slice was missing and was created.
    Created,
    /// The slice differed and was replaced.
    Replaced,
    /// The slice was already right.
    Unchanged,
}

/// Keeps a node's ResourceSlice in the API server.
#[derive(Debug)]
pub struct Publisher {
    slices: Api<ResourceSlice>,
    nodes: Api<Node>,
    node: String,
    reserve: u64,
    driver_version: Option<String>,
    owner: Option<Node>,
}

impl Publisher {
    /// A publisher for `node`'s slice.
    pub fn new(
        client: kube::Client,
        node: &str,
        reserve: u64,
        driver_version: Option<String>,
    ) -> Self {
        Self {
            slices: Api::all(client.clone()),
            nodes: Api::all(client),
            node: node.to_string(),
            reserve,
            driver_version,
            owner: None,
        }
    }

    /// Makes the API server's slice match `gpus`: creates it when it is missing (first
    /// start, or wiped by the kubelet), replaces it (with the pool's generation raised)
    /// when it differs, leaves it alone otherwise.
    pub async fn sync(&mut self, gpus: &[GpuInfo]) -> Result<Synced, PublishError> {
        let name = slice_name(&self.node);
        let err = |source| PublishError::Api {
            name: name.clone(),
            source: Box::new(source),
        };
        let check = |stored: ResourceSlice| {
            if keeps_shared_devices(&stored) {
                Ok(())
            } else {
                Err(PublishError::ConsumableCapacityOff { name: name.clone() })
            }
        };
        let current = self.slices.get_opt(&name).await.map_err(err)?;
        if self.owner.is_none() || current.is_none() {
            // The Node again before each create: one deleted and registered again has
            // another UID, and a slice owned by the old one would be collected at once.
            // Without the Node (not readable, or a test without one) the slice has no
            // owner; the kubelet still removes it with the node's other slices.
            self.owner = self.nodes.get_opt(&self.node).await.ok().flatten();
        }
        let build = |generation| {
            resource_slice(
                &self.node,
                gpus,
                self.reserve,
                self.driver_version.as_deref(),
                self.owner.as_ref(),
                generation,
            )
        };
        match current {
            None => {
                let stored = self
                    .slices
                    .create(&PostParams::default(), &build(1))
                    .await
                    .map_err(err)?;
                check(stored)?;
                Ok(Synced::Created)
            }
            Some(existing) => {
                let generation = existing.spec.pool.generation;
                let wanted = build(generation);
                if existing.spec == wanted.spec {
                    return Ok(Synced::Unchanged);
                }
                let mut next = build(generation + 1);
                next.metadata.resource_version = existing.metadata.resource_version.clone();
                let stored = self
                    .slices
                    .replace(&name, &PostParams::default(), &next)
                    .await
                    .map_err(err)?;
                check(stored)?;
                Ok(Synced::Replaced)
            }
        }
    }
}

impl Publisher {
    /// The slice this publisher would write for `gpus` (for [`missing_dra`]'s probe).
    pub fn wanted(&self, gpus: &[GpuInfo]) -> ResourceSlice {
        resource_slice(
            &self.node,
            gpus,
            self.reserve,
            self.driver_version.as_deref(),
            None,
            1,
        )
    }

    /// Deletes the node's slice (a node that leaves DRA, or finds consumable capacity
    /// off, must not leave devices the scheduler would allocate).
    pub async fn withdraw(&mut self) -> Result<(), PublishError> {
        let name = slice_name(&self.node);
        match self.slices.delete(&name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(source) => Err(PublishError::Api {
                name,
                source: Box::new(source),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::GpuHealth;

    fn gpu(index: u32, memory: u64) -> GpuInfo {
        GpuInfo {
            uuid: format!("GPU-{index:08}-0000-0000-0000-000000000000"),
            index,
            name: "NVIDIA H200".into(),
            memory,
            health: GpuHealth::Healthy,
        }
    }

    #[test]
    fn driver_versions_become_semver() {
        assert_eq!(semver("570.124.06").as_deref(), Some("570.124.6"));
        assert_eq!(semver("550.54").as_deref(), Some("550.54.0"));
        assert_eq!(semver("r570-beta"), None);
    }

    #[test]
    fn small_gpus_are_left_out_and_memory_is_stepped() {
        let s = resource_slice(
            "n",
            &[
                gpu(1, (1 << 30) + (100 << 20)),
                gpu(0, (3 << 30) + (300 << 20)),
            ],
            1 << 30,
            None,
            None,
            1,
        );
        let devices = s.spec.devices.unwrap();
        assert_eq!(devices.len(), 1);
        let memory = &devices[0].capacity.as_ref().unwrap()[MEMORY];
        assert_eq!(memory.value.0, "2304Mi");
    }
}
