//! Which way each GPU of a node is offered: through the device plugins (fixed profiles)
//! or through DRA (any fraction, placed by the scheduler), never both. It owns the
//! partition of the offered GPUs by the node config's [`Mode`] and `draGpus`
//! ([`assign`]), the GPU inventory each side sees ([`OnlyGpus`]), and the decision of
//! mode `auto` from what the cluster answers ([`Decision`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use gpuslice_config::canonical_uuid;

use crate::config::{Mode, NodeSettings};
use crate::inventory::{
    GpuInfo, GpuInventory, GpuListError, InventoryError, describe_selector, offered,
};

/// Why the GPUs cannot be split between the two ways.
#[derive(Debug, thiserror::Error)]
pub enum ModeError {
    /// The offered GPUs could not be found.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// A GPU of `draGpus` is not among the offered GPUs.
    #[error(
        "the node config's draGpus names {selector}, which is not among the GPUs this node offers ({offered})"
    )]
    NotOffered {
        /// The entry of `draGpus`.
        selector: String,
        /// The offered GPUs.
        offered: String,
    },
    /// `draGpus` takes every offered GPU: mode `both` would have no device plugin.
    #[error("the node config's draGpus takes every GPU this node offers ({offered}): use mode dra")]
    NothingLeft {
        /// The offered GPUs.
        offered: String,
    },
}

/// The offered GPUs (by UUID) that each way serves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Assignment {
    /// Offered through the device plugins.
    pub device_plugin: BTreeSet<String>,
    /// Offered through DRA.
    pub dra: BTreeSet<String>,
}

/// What the node runs, once the mode is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The device plugins alone.
    DevicePlugin,
    /// DRA alone.
    Dra,
    /// Each on its own GPUs.
    Both,
}

/// Splits the GPUs `settings` offers among `gpus` between the two ways, for the
/// decided mode: every offered GPU goes exactly one way.
pub fn assign(
    settings: &NodeSettings,
    decision: Decision,
    gpus: Vec<GpuInfo>,
) -> Result<Assignment, ModeError> {
    let offered = offered(&settings.gpus, gpus)?;
    let all: BTreeSet<String> = offered.iter().map(|g| g.uuid.clone()).collect();
    let describe = || {
        offered
            .iter()
            .map(|g| format!("{} {}", g.index, g.uuid))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match decision {
        Decision::DevicePlugin => Ok(Assignment {
            device_plugin: all,
            dra: BTreeSet::new(),
        }),
        Decision::Dra => Ok(Assignment {
            device_plugin: BTreeSet::new(),
            dra: all,
        }),
        Decision::Both => {
            let mut dra = BTreeSet::new();
            for selector in &settings.dra_gpus {
                let found = offered
                    .iter()
                    .find(|g| selector.matches(Some(g.index), &g.uuid))
                    .ok_or_else(|| ModeError::NotOffered {
                        selector: describe_selector(selector),
                        offered: describe(),
                    })?;
                dra.insert(found.uuid.clone());
            }
            let device_plugin: BTreeSet<String> = all.difference(&dra).cloned().collect();
            if device_plugin.is_empty() {
                return Err(ModeError::NothingLeft {
                    offered: describe(),
                });
            }
            Ok(Assignment { device_plugin, dra })
        }
    }
}

/// The decision a mode makes before asking the cluster: `None` for mode `auto`, which
/// asks.
pub fn fixed_decision(mode: Mode) -> Option<Decision> {
    match mode {
        Mode::Auto => None,
        Mode::DevicePlugin => Some(Decision::DevicePlugin),
        Mode::Dra => Some(Decision::Dra),
        Mode::Both => Some(Decision::Both),
    }
}

/// A [`GpuInventory`] that shows only some GPUs of another: each way sees its own.
#[derive(Debug)]
pub struct OnlyGpus {
    inner: Arc<dyn GpuInventory>,
    uuids: BTreeSet<String>,
}

impl OnlyGpus {
    /// The GPUs of `inner` whose UUIDs are in `uuids`.
    pub fn new(inner: Arc<dyn GpuInventory>, uuids: BTreeSet<String>) -> Arc<Self> {
        let uuids = uuids.iter().map(|u| canonical_uuid(u)).collect();
        Arc::new(Self { inner, uuids })
    }
}

impl GpuInventory for OnlyGpus {
    fn gpus(&self) -> Result<Vec<GpuInfo>, GpuListError> {
        Ok(self
            .inner
            .gpus()?
            .into_iter()
            .filter(|g| self.uuids.contains(&canonical_uuid(&g.uuid)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::inventory::{GpuHealth, StaticGpus};

    const GIB: u64 = 1 << 30;

    fn gpu(index: u32) -> GpuInfo {
        GpuInfo {
            uuid: format!("GPU-{index:08x}-aaaa-bbbb-cccc-ddddeeeeffff"),
            index,
            name: "NVIDIA H200".into(),
            memory: 141 * GIB,
            health: GpuHealth::Healthy,
        }
    }

    fn settings(yaml: &str) -> NodeSettings {
        NodeConfig::from_yaml(yaml, "test")
            .unwrap()
            .for_node("n")
            .unwrap()
    }

    const PROFILES: &str = "profiles: [{name: 8g, memory: 8GiB}]";

    #[test]
    fn both_gives_each_gpu_exactly_one_way() {
        let s = settings(&format!(
            "default: {{mode: both, {PROFILES}, gpus: [0, 1, 2], draGpus: [2, 0]}}"
        ));
        let a = assign(&s, Decision::Both, (0..4).map(gpu).collect()).unwrap();
        assert_eq!(
            a.device_plugin,
            BTreeSet::from([gpu(1).uuid]),
            "GPU 3 is not offered at all"
        );
        assert_eq!(a.dra, BTreeSet::from([gpu(0).uuid, gpu(2).uuid]));
        assert!(a.device_plugin.is_disjoint(&a.dra));
    }

    #[test]
    fn auto_and_fixed_modes_give_every_offered_gpu_to_the_decided_way() {
        let s = settings(&format!("default: {{{PROFILES}}}"));
        assert_eq!(s.mode, Mode::Auto);
        assert_eq!(fixed_decision(s.mode), None);
        let dp = assign(&s, Decision::DevicePlugin, (0..2).map(gpu).collect()).unwrap();
        assert_eq!(dp.device_plugin.len(), 2);
        assert!(dp.dra.is_empty());
        let dra = assign(&s, Decision::Dra, (0..2).map(gpu).collect()).unwrap();
        assert_eq!(dra.dra.len(), 2);
        assert!(dra.device_plugin.is_empty());
    }

    #[test]
    fn dra_gpus_outside_the_offer_or_taking_everything_are_refused() {
        let s = settings(&format!(
            "default: {{mode: both, {PROFILES}, gpus: [0], draGpus: [1]}}"
        ));
        let e = assign(&s, Decision::Both, (0..2).map(gpu).collect())
            .unwrap_err()
            .to_string();
        assert!(e.contains("draGpus names GPU 1"), "{e}");
        let s = settings(&format!(
            "default: {{mode: both, {PROFILES}, gpus: [0], draGpus: [0]}}"
        ));
        let e = assign(&s, Decision::Both, (0..2).map(gpu).collect())
            .unwrap_err()
            .to_string();
        assert!(e.contains("use mode dra"), "{e}");
    }

    #[test]
    fn each_way_sees_only_its_gpus() {
        let all: Arc<dyn GpuInventory> = Arc::new(StaticGpus::new((0..3).map(gpu).collect()));
        let only = OnlyGpus::new(all, BTreeSet::from([gpu(1).uuid.to_lowercase()]));
        let seen: Vec<u32> = only.gpus().unwrap().iter().map(|g| g.index).collect();
        assert_eq!(seen, [1]);
    }
}
