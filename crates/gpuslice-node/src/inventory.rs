//! What a node advertises: the GPUs it sees (through the [`GpuInventory`] seam, NVML in
//! production, [`StaticGpus`] in tests) and the concrete slices the node config cuts them
//! into. Each advertised device is one slice on one GPU, with the ID
//! `GPU-<uuid>::<profile>-<n>` ([`SliceId`]); each profile is one resource. Building an
//! [`Inventory`] is where a config that would oversubscribe a GPU is refused.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, PoisonError};

use gpuslice_config::{DeviceSelector, canonical_uuid, format_size, human_size};
use kubelet_api::deviceplugin::v1beta1::MAX_DEVICE_ID_LEN;

use crate::config::{
    AllocationPolicy, GpuSelection, MIN_SLICE_MEMORY, NodeSettings, Slicing, resource_name,
};

/// Device memory is handed out in 2 MiB pages; equal slices are rounded down to them.
const PAGE: u64 = 2 << 20;

/// Whether a GPU can take work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuHealth {
    /// It can.
    Healthy,
    /// It cannot, for this reason (an XID, NVML lost it, ...).
    Unhealthy(String),
}

impl GpuHealth {
    /// Whether it is [`GpuHealth::Healthy`].
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy)
    }
}

impl fmt::Display for GpuHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Healthy => f.write_str("Healthy"),
            Self::Unhealthy(why) => write!(f, "Unhealthy ({why})"),
        }
    }
}

/// One GPU as the node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// `GPU-<uuid>` (canonical spelling: see [`gpuslice_config::canonical_uuid`]).
    pub uuid: String,
    /// The index `nvidia-smi` shows.
    pub index: u32,
    /// The product name (`NVIDIA H200`).
    pub name: String,
    /// Total memory in bytes.
    pub memory: u64,
    /// Its health now.
    pub health: GpuHealth,
}

impl GpuInfo {
    /// How messages name the GPU: `GPU 0 (GPU-5d1f..., NVIDIA H200)`.
    pub fn describe(&self) -> String {
        format!("GPU {} ({}, {})", self.index, self.uuid, self.name)
    }
}

/// Why the GPUs could not be listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot list the GPUs: {0}")]
pub struct GpuListError(pub String);

/// Where the GPUs come from: NVML on a real node, [`StaticGpus`] in tests and dry runs.
/// Called from a blocking thread, at start and then every health interval.
pub trait GpuInventory: Send + Sync + std::fmt::Debug {
    /// Every GPU present now, with its health. A GPU that NVML lost is simply absent.
    fn gpus(&self) -> Result<Vec<GpuInfo>, GpuListError>;
}

/// A [`GpuInventory`] whose GPUs a test sets, removes and breaks at will.
#[derive(Debug, Default)]
pub struct StaticGpus {
    state: Mutex<StaticState>,
}

#[derive(Debug, Default)]
struct StaticState {
    gpus: Vec<GpuInfo>,
    failure: Option<String>,
}

impl StaticGpus {
    /// These GPUs, all present.
    pub fn new(gpus: Vec<GpuInfo>) -> Self {
        Self {
            state: Mutex::new(StaticState {
                gpus,
                failure: None,
            }),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut StaticState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Sets a GPU's health; false if no GPU has that UUID.
    pub fn set_health(&self, uuid: &str, health: GpuHealth) -> bool {
        self.with(|s| match s.gpus.iter_mut().find(|g| g.uuid == uuid) {
            Some(gpu) => {
                gpu.health = health;
                true
            }
            None => false,
        })
    }

    /// Takes a GPU away (as when it falls off the bus); returns it.
    pub fn remove(&self, uuid: &str) -> Option<GpuInfo> {
        self.with(|s| {
            let at = s.gpus.iter().position(|g| g.uuid == uuid)?;
            Some(s.gpus.remove(at))
        })
    }

    /// Adds a GPU (back).
    pub fn insert(&self, gpu: GpuInfo) {
        self.with(|s| {
            s.gpus.retain(|g| g.uuid != gpu.uuid);
            s.gpus.push(gpu);
        })
    }

    /// Makes every listing fail with this message (`None`: work again).
    pub fn fail(&self, failure: Option<&str>) {
        self.with(|s| s.failure = failure.map(String::from))
    }
}

impl GpuInventory for StaticGpus {
    fn gpus(&self) -> Result<Vec<GpuInfo>, GpuListError> {
        self.with(|s| match &s.failure {
            Some(why) => Err(GpuListError(why.clone())),
            None => Ok(s.gpus.clone()),
        })
    }
}

/// The ID of an advertised device: `GPU-<uuid>::<slice>`, the form NVIDIA's
/// time-slicing uses and dcgm-exporter splits at `::`. It names one concrete slice, so
/// `Allocate` never has to guess which pod it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SliceId(String);

impl SliceId {
    /// The ID of slice `slice` of the GPU `gpu_uuid`; refused past the kubelet's 63
    /// characters.
    pub fn new(gpu_uuid: &str, slice: &str) -> Result<Self, InventoryError> {
        let id = format!("{gpu_uuid}::{slice}");
        if id.len() > MAX_DEVICE_ID_LEN {
            return Err(InventoryError::DeviceIdTooLong { len: id.len(), id });
        }
        Ok(Self(id))
    }

    /// The ID as the kubelet sees it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The GPU's UUID part.
    pub fn gpu_uuid(&self) -> &str {
        self.0.split_once("::").map_or(&self.0, |(gpu, _)| gpu)
    }

    /// The slice part (`<profile>-<n>`).
    pub fn slice(&self) -> &str {
        self.0.split_once("::").map_or("", |(_, slice)| slice)
    }
}

impl fmt::Display for SliceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One advertised device: one slice of one GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceDevice {
    /// Its device ID.
    pub id: SliceId,
    /// The profile it belongs to.
    pub profile: String,
    /// The resource that advertises it.
    pub resource: String,
    /// Its GPU's UUID.
    pub gpu_uuid: String,
    /// Its GPU's index.
    pub gpu_index: u32,
    /// Its number among the profile's slices on that GPU (0, 1, ...).
    pub ordinal: u32,
    /// Memory limit in bytes.
    pub memory: u64,
    /// Compute share in percent, if limited.
    pub compute: Option<u32>,
}

/// One extended resource: the slices of one profile on every GPU offered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// `gpuslice.io/slice-<profile>`.
    pub name: String,
    /// The profile.
    pub profile: String,
    /// Its devices, GPU by GPU, in order.
    pub slices: Vec<SliceDevice>,
}

/// Why a node's slices could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InventoryError {
    /// Listing the GPUs failed.
    #[error(transparent)]
    List(#[from] GpuListError),
    /// No GPU to offer.
    #[error("no GPU to offer: {0}")]
    NoGpus(String),
    /// Two GPUs share a UUID (a broken inventory).
    #[error("two GPUs have the UUID {0}")]
    DuplicateUuid(String),
    /// A GPU listed in `gpus` is not on this node.
    #[error(
        "the node config's `gpus` lists {selector}, but this node has no such GPU (it has: {present})"
    )]
    NoSuchGpu {
        /// The selector.
        selector: String,
        /// The GPUs present.
        present: String,
    },
    /// A UUID prefix in `gpus` matches more than one GPU.
    #[error("the node config's `gpus` lists {selector}, which matches several GPUs: {matches}")]
    AmbiguousGpu {
        /// The selector.
        selector: String,
        /// The GPUs it matches.
        matches: String,
    },
    /// The reserve leaves nothing of a GPU.
    #[error("{gpu} has {memory} of memory: the reserve of {reserve} leaves nothing for slices")]
    ReserveTooLarge {
        /// The GPU.
        gpu: String,
        /// Its memory.
        memory: String,
        /// The reserve.
        reserve: String,
    },
    /// The device plugins would serve the node, and the config cuts no slices.
    #[error(
        "the node config gives no profiles (nor split), so the device plugins have no slice to offer"
    )]
    NoSlicing,
    /// The profiles need more memory than a GPU has.
    #[error("{gpu} would be oversubscribed: {detail}")]
    Oversubscribed {
        /// The GPU.
        gpu: String,
        /// What the profiles need and what the GPU has.
        detail: String,
    },
    /// Equal slices of a GPU would be too small.
    #[error(
        "{gpu}: {count} equal slices of {available} would be {each} each, less than the smallest slice ({min})"
    )]
    SliceTooSmall {
        /// The GPU.
        gpu: String,
        /// The number of slices.
        count: u32,
        /// What the GPU has for slices.
        available: String,
        /// Each slice's size.
        each: String,
        /// The smallest slice.
        min: String,
    },
    /// A device ID would be longer than the kubelet accepts.
    #[error(
        "the device ID {id} is {len} characters long; the kubelet accepts at most 63 (use a shorter profile name)"
    )]
    DeviceIdTooLong {
        /// The ID.
        id: String,
        /// Its length.
        len: usize,
    },
}

/// The GPUs offered on a node and the slices cut from them.
#[derive(Debug, Clone)]
pub struct Inventory {
    settings: NodeSettings,
    gpus: Vec<GpuInfo>,
    resources: Vec<Resource>,
    by_id: HashMap<String, (usize, usize)>,
}

impl Inventory {
    /// Cuts the offered GPUs among `gpus` into slices as `settings` says, refusing a
    /// config that would oversubscribe any GPU's memory. (Compute shares were checked with
    /// the config.)
    pub fn build(settings: &NodeSettings, gpus: Vec<GpuInfo>) -> Result<Self, InventoryError> {
        let slicing = settings.slicing.as_ref().ok_or(InventoryError::NoSlicing)?;
        let offered = offered(&settings.gpus, gpus)?;
        let mut resources: Vec<Resource> = match slicing {
            Slicing::Profiles(profiles) => profiles
                .iter()
                .map(|p| Resource {
                    name: p.resource_name(),
                    profile: p.name.clone(),
                    slices: Vec::new(),
                })
                .collect(),
            Slicing::Split(split) => vec![Resource {
                name: resource_name(&split.name),
                profile: split.name.clone(),
                slices: Vec::new(),
            }],
        };
        for gpu in &offered {
            let describe = gpu.describe();
            let available = gpu
                .memory
                .checked_sub(settings.reserve)
                .filter(|a| *a > 0)
                .ok_or_else(|| InventoryError::ReserveTooLarge {
                    gpu: describe.clone(),
                    memory: human_size(gpu.memory),
                    reserve: format_size(settings.reserve),
                })?;
            // (resource index, profile, memory, compute, count) for this GPU.
            let cuts: Vec<(usize, &str, u64, Option<u32>, u32)> = match slicing {
                Slicing::Profiles(profiles) => {
                    let needed: u128 = profiles
                        .iter()
                        .map(|p| p.memory as u128 * p.count as u128)
                        .sum();
                    if needed > available as u128 {
                        let detail: Vec<String> = profiles
                            .iter()
                            .map(|p| {
                                format!("{} × {} ({})", p.count, format_size(p.memory), p.name)
                            })
                            .collect();
                        return Err(InventoryError::Oversubscribed {
                            gpu: describe,
                            detail: format!(
                                "the profiles need {} of memory ({}), but it has {} ({} less the \
                                 reserve of {})",
                                human_size(u64::try_from(needed).unwrap_or(u64::MAX)),
                                detail.join(" + "),
                                human_size(available),
                                human_size(gpu.memory),
                                format_size(settings.reserve),
                            ),
                        });
                    }
                    profiles
                        .iter()
                        .enumerate()
                        .map(|(i, p)| (i, p.name.as_str(), p.memory, p.compute, p.count))
                        .collect()
                }
                Slicing::Split(split) => {
                    let each = available / u64::from(split.count) / PAGE * PAGE;
                    if each < MIN_SLICE_MEMORY {
                        return Err(InventoryError::SliceTooSmall {
                            gpu: describe,
                            count: split.count,
                            available: human_size(available),
                            each: human_size(each),
                            min: format_size(MIN_SLICE_MEMORY),
                        });
                    }
                    let compute = split.compute.then(|| 100 / split.count);
                    vec![(0, split.name.as_str(), each, compute, split.count)]
                }
            };
            for (resource, profile, memory, compute, count) in cuts {
                for ordinal in 0..count {
                    let id = SliceId::new(&gpu.uuid, &format!("{profile}-{ordinal}"))?;
                    let resource_entry = &mut resources[resource];
                    resource_entry.slices.push(SliceDevice {
                        id,
                        profile: profile.to_string(),
                        resource: resource_entry.name.clone(),
                        gpu_uuid: gpu.uuid.clone(),
                        gpu_index: gpu.index,
                        ordinal,
                        memory,
                        compute,
                    });
                }
            }
        }
        let mut by_id = HashMap::new();
        for (r, resource) in resources.iter().enumerate() {
            for (s, slice) in resource.slices.iter().enumerate() {
                by_id.insert(slice.id.as_str().to_string(), (r, s));
            }
        }
        Ok(Self {
            settings: settings.clone(),
            gpus: offered,
            resources,
            by_id,
        })
    }

    /// The settings it was built from.
    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    /// The `GetPreferredAllocation` policy.
    pub fn policy(&self) -> AllocationPolicy {
        self.settings.policy
    }

    /// The GPUs offered, by index, as they were when the inventory was built.
    pub fn gpus(&self) -> &[GpuInfo] {
        &self.gpus
    }

    /// The resources, in the config's order.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resource of this name.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }

    /// The device with this ID, of any resource.
    pub fn device(&self, id: &str) -> Option<&SliceDevice> {
        let (r, s) = self.by_id.get(id)?;
        Some(&self.resources[*r].slices[*s])
    }
}

/// The GPUs `selection` offers among `gpus`, by index, with canonical UUIDs; an error
/// names a selector that matches no GPU, or several.
pub fn offered(
    selection: &GpuSelection,
    gpus: Vec<GpuInfo>,
) -> Result<Vec<GpuInfo>, InventoryError> {
    let mut gpus: Vec<GpuInfo> = gpus
        .into_iter()
        .map(|mut g| {
            g.uuid = canonical_uuid(&g.uuid);
            g
        })
        .collect();
    gpus.sort_by_key(|g| g.index);
    for (i, g) in gpus.iter().enumerate() {
        if gpus[..i].iter().any(|o| o.uuid == g.uuid) {
            return Err(InventoryError::DuplicateUuid(g.uuid.clone()));
        }
    }
    if gpus.is_empty() {
        return Err(InventoryError::NoGpus(
            "the node has no GPU that NVML can see".into(),
        ));
    }
    let selectors = match selection {
        GpuSelection::All => return Ok(gpus),
        GpuSelection::Only(selectors) => selectors,
    };
    let present = || {
        gpus.iter()
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut chosen: Vec<u32> = Vec::new();
    for selector in selectors {
        let matches: Vec<&GpuInfo> = gpus
            .iter()
            .filter(|g| selector.matches(Some(g.index), &g.uuid))
            .collect();
        match matches.as_slice() {
            [] => {
                return Err(InventoryError::NoSuchGpu {
                    selector: describe_selector(selector),
                    present: present(),
                });
            }
            [one] => {
                if !chosen.contains(&one.index) {
                    chosen.push(one.index);
                }
            }
            several => {
                return Err(InventoryError::AmbiguousGpu {
                    selector: describe_selector(selector),
                    matches: several
                        .iter()
                        .map(|g| g.uuid.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
    }
    Ok(gpus
        .into_iter()
        .filter(|g| chosen.contains(&g.index))
        .collect())
}

/// How errors name a GPU selector: `GPU 1`, or the UUID.
pub(crate) fn describe_selector(selector: &DeviceSelector) -> String {
    match selector {
        DeviceSelector::Index(i) => format!("GPU {i}"),
        DeviceSelector::Uuid(u) => u.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;

    const GIB: u64 = 1 << 30;

    pub(crate) fn gpu(index: u32, memory_gib: u64) -> GpuInfo {
        GpuInfo {
            uuid: format!("GPU-{index:08x}-1111-2222-3333-444455556666"),
            index,
            name: "NVIDIA Test".into(),
            memory: memory_gib * GIB,
            health: GpuHealth::Healthy,
        }
    }

    fn settings(yaml: &str) -> NodeSettings {
        NodeConfig::from_yaml(yaml, "test.yaml")
            .unwrap()
            .for_node("n")
            .unwrap()
    }

    #[test]
    fn profiles_become_one_resource_each_with_concrete_slice_ids() {
        let s = settings(
            "default:\n  profiles:\n    - {name: 8g-30, memory: 8GiB, compute: 30, count: 2}\n    - {name: 4g, memory: 4GiB}\n",
        );
        let inv = Inventory::build(&s, vec![gpu(1, 24), gpu(0, 24)]).unwrap();
        let names: Vec<_> = inv.resources().iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["gpuslice.io/slice-8g-30", "gpuslice.io/slice-4g"]);
        let ids: Vec<_> = inv.resources()[0]
            .slices
            .iter()
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(
            ids,
            [
                "GPU-00000000-1111-2222-3333-444455556666::8g-30-0",
                "GPU-00000000-1111-2222-3333-444455556666::8g-30-1",
                "GPU-00000001-1111-2222-3333-444455556666::8g-30-0",
                "GPU-00000001-1111-2222-3333-444455556666::8g-30-1",
            ]
        );
        let d = inv
            .device("GPU-00000001-1111-2222-3333-444455556666::4g-0")
            .unwrap();
        assert_eq!(d.gpu_index, 1);
        assert_eq!(d.memory, 4 * GIB);
        assert_eq!(d.compute, None);
        assert_eq!(d.id.gpu_uuid(), "GPU-00000001-1111-2222-3333-444455556666");
        assert_eq!(d.id.slice(), "4g-0");
        assert!(inv.device("GPU-x::4g-0").is_none());
    }

    #[test]
    fn memory_oversubscription_is_refused_naming_the_gpu() {
        // 2 × 8 + 4 = 20 GiB on a 20 GiB GPU: the 1 GiB reserve makes it not fit.
        let s = settings(
            "default:\n  profiles:\n    - {name: a, memory: 8GiB, count: 2}\n    - {name: b, memory: 4GiB}\n",
        );
        let e = Inventory::build(&s, vec![gpu(0, 40), gpu(1, 20)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPU 1 (GPU-00000001"), "{e}");
        assert!(e.contains("need 20GiB"), "{e}");
        assert!(e.contains("2 × 8GiB (a) + 1 × 4GiB (b)"), "{e}");
        assert!(
            e.contains("has 19GiB (20GiB less the reserve of 1GiB)"),
            "{e}"
        );
        // Exactly full is fine.
        let s = settings(
            "default:\n  reserve: 0\n  profiles:\n    - {name: a, memory: 8GiB, count: 2}\n    - {name: b, memory: 4GiB}\n",
        );
        assert!(Inventory::build(&s, vec![gpu(1, 20)]).is_ok());
    }

    #[test]
    fn split_cuts_each_gpu_after_its_own_memory() {
        let s = settings("default:\n  split: {count: 4, compute: true}\n  reserve: 2GiB\n");
        let inv = Inventory::build(&s, vec![gpu(0, 82), gpu(1, 42)]).unwrap();
        let r = &inv.resources()[0];
        assert_eq!(r.name, "gpuslice.io/slice-1of4");
        assert_eq!(r.slices.len(), 8);
        assert_eq!(r.slices[0].memory, 20 * GIB);
        assert_eq!(r.slices[4].memory, 10 * GIB);
        assert!(r.slices.iter().all(|s| s.compute == Some(25)));
        let e = Inventory::build(
            &settings("default:\n  split: {count: 99}\n"),
            vec![gpu(0, 8)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("smallest slice"), "{e}");
    }

    #[test]
    fn gpu_selection_by_index_and_uuid() {
        let s = settings("default:\n  split: {count: 2}\n  gpus: [2, GPU-00000000]\n");
        let inv = Inventory::build(&s, vec![gpu(0, 16), gpu(1, 16), gpu(2, 16)]).unwrap();
        let offered: Vec<u32> = inv.gpus().iter().map(|g| g.index).collect();
        assert_eq!(offered, [0, 2]);
        let e = Inventory::build(
            &settings("default:\n  split: {count: 2}\n  gpus: [5]\n"),
            vec![gpu(0, 16)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("GPU 5") && e.contains("0 GPU-00000000"), "{e}");
        let e = Inventory::build(
            &settings("default:\n  split: {count: 2}\n  gpus: [GPU-0000000]\n"),
            vec![gpu(0, 16), gpu(1, 16)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("several GPUs"), "{e}");
        let e = Inventory::build(&settings("default:\n  split: {count: 2}\n"), vec![])
            .unwrap_err()
            .to_string();
        assert!(e.contains("no GPU"), "{e}");
    }

    #[test]
    fn reserve_larger_than_the_gpu() {
        let e = Inventory::build(
            &settings("default:\n  split: {count: 2}\n  reserve: 16GiB\n"),
            vec![gpu(0, 16)],
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("leaves nothing"), "{e}");
    }

    #[test]
    fn device_ids_longer_than_63_are_refused() {
        let long = "MIG-GPU-00000000-1111-2222-3333-444455556666/1/0";
        let e = SliceId::new(long, "abcdefghijklmnop-0")
            .unwrap_err()
            .to_string();
        assert!(e.contains(long) && e.contains("63"), "{e}");
        assert!(
            SliceId::new(
                "GPU-00000000-1111-2222-3333-444455556666",
                "abcdefghijklmnopqr-99"
            )
            .is_ok()
        );
    }

    #[test]
    fn static_gpus_change_on_demand() {
        let gpus = StaticGpus::new(vec![gpu(0, 16), gpu(1, 16)]);
        let uuid = gpu(1, 16).uuid;
        assert!(gpus.set_health(&uuid, GpuHealth::Unhealthy("XID 79".into())));
        assert!(!gpus.gpus().unwrap()[1].health.is_healthy());
        let taken = gpus.remove(&uuid).unwrap();
        assert_eq!(gpus.gpus().unwrap().len(), 1);
        gpus.insert(taken);
        gpus.fail(Some("NVML gone"));
        assert_eq!(
            gpus.gpus().unwrap_err().to_string(),
            "cannot list the GPUs: NVML gone"
        );
    }
}
