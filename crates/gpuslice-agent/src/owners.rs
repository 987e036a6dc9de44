//! Who holds a slice, as the platform the agent runs on knows it: on Kubernetes, the pod
//! and container (and, for DRA, the ResourceClaim) the kubelet gave the slice to. The
//! agent itself knows nothing of Kubernetes: `gpuslice node` implements [`SliceOwners`]
//! (over the kubelet's PodResources API) and hands it to the agent's `/metrics`, which
//! adds [`OwnerLabels`] to every series of a slice. Plain `gpuslice agent` has none, and
//! its series keep their labels.
//!
//! Where owners are known at all, every slice series carries all four labels, empty
//! where they do not apply or are not known yet: a family whose samples all have the
//! same label names is what strict OpenMetrics parsers accept, and PromQL reads an
//! empty label as a missing one (`{pod!=""}` selects the slices held by a pod).

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};

/// The Kubernetes workload holding a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct SliceOwner {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name; pods sharing the slice are listed sorted, separated by commas.
    pub pod: String,
    /// The container's name; containers sharing the slice are listed sorted, separated by
    /// commas.
    pub container: String,
    /// The ResourceClaim's name (in `namespace`) of a DRA slice; `None` for a device
    /// plugin's slice.
    pub claim: Option<String>,
}

/// Answers who holds a slice, by its name. Called for each slice at each scrape, from the
/// agent's threads: it must answer at once, from what it already knows.
pub trait SliceOwners: Send + Sync + std::fmt::Debug {
    /// The owner of the slice `slice`, if known now.
    fn owner(&self, slice: &str) -> Option<SliceOwner>;
}

/// The labels a slice's series get from its owner: with a source of owners,
/// `namespace`, `pod`, `container` and `claim` (the claim of a DRA slice), each empty
/// where it does not apply or is not known; without one, none.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct OwnerLabels(pub Option<SliceOwner>);

impl OwnerLabels {
    /// The labels of `slice` as `owners` knows it (none without `owners`).
    pub fn of(owners: Option<&dyn SliceOwners>, slice: &str) -> Self {
        Self(owners.map(|o| o.owner(slice).unwrap_or_default()))
    }
}

impl EncodeLabelSet for OwnerLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let Some(owner) = &self.0 else {
            return Ok(());
        };
        [
            ("namespace", owner.namespace.as_str()),
            ("pod", owner.pod.as_str()),
            ("container", owner.container.as_str()),
            ("claim", owner.claim.as_deref().unwrap_or_default()),
        ]
        .encode(encoder)
    }
}
