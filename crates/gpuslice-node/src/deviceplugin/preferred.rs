//! `GetPreferredAllocation`: which of the free slices of a resource a container should
//! get, packed onto the busiest GPUs or spread over the least busy ones.
//!
//! The plugin of one resource knows only that resource: a GPU's load is the number of
//! the resource's slices on it that are not free (given to containers, or unhealthy).

use std::collections::{BTreeMap, BTreeSet};

use crate::config::AllocationPolicy;
use crate::inventory::Resource;

/// Why no preference could be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreferredError {
    /// A device ID the resource does not have.
    #[error("unknown device ID {id:?}: {resource} has no such slice")]
    UnknownDevice {
        /// The ID.
        id: String,
        /// The resource.
        resource: String,
    },
    /// More devices asked for than are free.
    #[error("{size} slices of {resource} asked for, but only {available} are free")]
    TooFew {
        /// The resource.
        resource: String,
        /// Slices asked for.
        size: usize,
        /// Slices free.
        available: usize,
    },
}

/// Per GPU: (its slices still free and not chosen, in order; how many are taken).
struct GpuLoad<'a> {
    free: Vec<&'a str>,
    taken: usize,
}

/// The `size` devices to give, `must_include` first, the rest from `available` as the
/// policy prefers.
pub fn preferred<'a>(
    policy: AllocationPolicy,
    resource: &'a Resource,
    available: &[String],
    must_include: &[String],
    size: usize,
) -> Result<Vec<String>, PreferredError> {
    let known = |id: &String| -> Result<(), PreferredError> {
        if resource.slices.iter().any(|s| s.id.as_str() == id) {
            Ok(())
        } else {
            Err(PreferredError::UnknownDevice {
                id: id.clone(),
                resource: resource.name.clone(),
            })
        }
    };
    for id in available.iter().chain(must_include) {
        known(id)?;
    }
    let mut chosen: Vec<String> = Vec::new();
    for id in must_include {
        if !chosen.contains(id) {
            chosen.push(id.clone());
        }
    }
    let free: BTreeSet<&str> = available
        .iter()
        .map(String::as_str)
        .filter(|id| !chosen.iter().any(|c| c == id))
        .collect();
    if chosen.len() + free.len() < size {
        return Err(PreferredError::TooFew {
            resource: resource.name.clone(),
            size,
            available: chosen.len() + free.len(),
        });
    }
    // GPU index → load, slices in the resource's order.
    let mut gpus: BTreeMap<u32, GpuLoad<'a>> = BTreeMap::new();
    for slice in &resource.slices {
        let load = gpus.entry(slice.gpu_index).or_insert(GpuLoad {
            free: Vec::new(),
            taken: 0,
        });
        if free.contains(slice.id.as_str()) {
            load.free.push(slice.id.as_str());
        } else {
            load.taken += 1;
        }
    }
    let mut need = size.saturating_sub(chosen.len());
    while need > 0 {
        let candidates = gpus.iter().filter(|(_, l)| !l.free.is_empty());
        let pick = match policy {
            // The busiest GPU that can take all that is left; else the one with the most
            // free slices, to use as few GPUs as possible.
            AllocationPolicy::Pack => {
                let fits = candidates
                    .clone()
                    .filter(|(_, l)| l.free.len() >= need)
                    .min_by_key(|(i, l)| (std::cmp::Reverse(l.taken), l.free.len(), **i));
                fits.or_else(|| {
                    candidates.min_by_key(|(i, l)| {
                        (
                            std::cmp::Reverse(l.free.len()),
                            std::cmp::Reverse(l.taken),
                            **i,
                        )
                    })
                })
            }
            // The least busy GPU, one slice at a time.
            AllocationPolicy::Spread => {
                candidates.min_by_key(|(i, l)| (l.taken, std::cmp::Reverse(l.free.len()), **i))
            }
        }
        .map(|(i, _)| *i);
        let Some(index) = pick else { break };
        let Some(load) = gpus.get_mut(&index) else {
            break;
        };
        let take = match policy {
            AllocationPolicy::Pack => need.min(load.free.len()),
            AllocationPolicy::Spread => 1,
        };
        for id in load.free.drain(..take) {
            chosen.push(id.to_string());
        }
        load.taken += take;
        need -= take;
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::inventory::{GpuHealth, GpuInfo, Inventory};

    fn inventory() -> Inventory {
        let settings = NodeConfig::from_yaml(
            "default:\n  profiles: [{name: a, memory: 4GiB, count: 3}]\n",
            "t",
        )
        .unwrap()
        .for_node("n")
        .unwrap();
        let gpus = (0..3)
            .map(|i| GpuInfo {
                uuid: format!("GPU-{i}"),
                index: i,
                name: "T".into(),
                memory: 16 << 30,
                health: GpuHealth::Healthy,
            })
            .collect();
        Inventory::build(&settings, gpus).unwrap()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn all_but(r: &Resource, taken: &[&str]) -> Vec<String> {
        r.slices
            .iter()
            .map(|s| s.id.to_string())
            .filter(|id| !taken.contains(&id.as_str()))
            .collect()
    }

    #[test]
    fn pack_fills_the_busiest_gpu() {
        let inv = inventory();
        let r = &inv.resources()[0];
        // GPU 1 already has one slice taken: pack goes there.
        let avail = all_but(r, &["GPU-1::a-0"]);
        let got = preferred(AllocationPolicy::Pack, r, &avail, &[], 2).unwrap();
        assert_eq!(got, ids(&["GPU-1::a-1", "GPU-1::a-2"]));
        // Nothing taken: the first GPU, whole.
        let got = preferred(AllocationPolicy::Pack, r, &all_but(r, &[]), &[], 3).unwrap();
        assert_eq!(got, ids(&["GPU-0::a-0", "GPU-0::a-1", "GPU-0::a-2"]));
        // Four slices do not fit on one GPU: as few GPUs as possible.
        let got = preferred(
            AllocationPolicy::Pack,
            r,
            &all_but(r, &["GPU-0::a-0"]),
            &[],
            4,
        )
        .unwrap();
        assert_eq!(got.len(), 4);
        let gpus: BTreeSet<&str> = got.iter().map(|id| &id[..5]).collect();
        assert_eq!(gpus.len(), 2, "{got:?}");
    }

    #[test]
    fn spread_goes_to_the_least_busy_gpus() {
        let inv = inventory();
        let r = &inv.resources()[0];
        let avail = all_but(r, &["GPU-0::a-0"]);
        let got = preferred(AllocationPolicy::Spread, r, &avail, &[], 3).unwrap();
        assert_eq!(got, ids(&["GPU-1::a-0", "GPU-2::a-0", "GPU-0::a-1"]));
    }

    #[test]
    fn must_include_comes_first_and_counts() {
        let inv = inventory();
        let r = &inv.resources()[0];
        let got = preferred(
            AllocationPolicy::Pack,
            r,
            &all_but(r, &[]),
            &ids(&["GPU-2::a-1"]),
            2,
        )
        .unwrap();
        assert_eq!(got, ids(&["GPU-2::a-1", "GPU-2::a-0"]));
    }

    #[test]
    fn unknown_ids_and_too_few_are_errors() {
        let inv = inventory();
        let r = &inv.resources()[0];
        let e = preferred(AllocationPolicy::Pack, r, &ids(&["GPU-9::a-0"]), &[], 1).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown device ID \"GPU-9::a-0\": gpuslice.io/slice-a has no such slice"
        );
        let e = preferred(AllocationPolicy::Pack, r, &ids(&["GPU-0::a-0"]), &[], 2).unwrap_err();
        assert!(matches!(e, PreferredError::TooFew { available: 1, .. }));
    }
}
