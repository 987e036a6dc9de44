//! The seam between the device plugin and the code that makes slices on the host: the
//! [`SliceProvider`] trait, given the concrete slices chosen for one container, answers
//! what the container gets (CDI devices, and the same as device nodes, mounts and
//! environment for runtimes without CDI). The real provider (ledgers, CDI specs, the
//! host file layout) comes from the shared host crate; [`TestProvider`] stands in for
//! it in tests.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::inventory::SliceDevice;

/// A bind mount for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Where it appears in the container.
    pub container_path: PathBuf,
    /// The host file or folder.
    pub host_path: PathBuf,
    /// Whether it is read-only.
    pub read_only: bool,
}

/// A device node for the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Its path in the container.
    pub container_path: PathBuf,
    /// Its path on the host.
    pub host_path: PathBuf,
    /// cgroup permissions: some of `r`, `w`, `m`.
    pub permissions: String,
}

/// What one container gets for its slices.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Environment variables.
    pub envs: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Device nodes.
    pub device_nodes: Vec<DeviceNode>,
    /// Annotations for the container runtime.
    pub annotations: BTreeMap<String, String>,
    /// Fully qualified CDI device names (`gpuslice.io/slice=NAME`).
    pub cdi_devices: Vec<String>,
}

/// Why a provider could not give a container its slices.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl ProviderError {
    /// An error with this message (which should name the slice or file at fault).
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            source: None,
        }
    }

    /// An error with this message, caused by `source`.
    pub fn with_source(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }
}

/// Makes the slices of one container ready on the host and says what the container
/// gets. Called from a blocking thread, once per container of each `Allocate`. The same
/// slice may be asked for again (another container of the pod, a kubelet retry): the
/// answer must be the same slice, shared, not a new one.
pub trait SliceProvider: Send + Sync + std::fmt::Debug {
    /// What a container given `slices` (all of one resource, at least one) gets.
    fn allocate(&self, slices: &[SliceDevice]) -> Result<Allocation, ProviderError>;
}

/// A [`SliceProvider`] for tests: it touches nothing on the host and answers with the
/// shape the real one will have: the slice's CDI device, the GPU's device nodes, and the
/// slice's variables.
#[derive(Debug, Clone, Default)]
pub struct TestProvider {
    /// Refuse every allocation with this message.
    pub refuse: Option<String>,
}

/// The CDI kind the test provider names its devices with.
pub const TEST_CDI_KIND: &str = "gpuslice.io/slice";

impl SliceProvider for TestProvider {
    fn allocate(&self, slices: &[SliceDevice]) -> Result<Allocation, ProviderError> {
        if let Some(why) = &self.refuse {
            return Err(ProviderError::new(why.clone()));
        }
        let Some(first) = slices.first() else {
            return Err(ProviderError::new("no slice to allocate"));
        };
        let mut a = Allocation::default();
        let ids: Vec<&str> = slices.iter().map(|s| s.id.as_str()).collect();
        let mut uuids: Vec<&str> = slices.iter().map(|s| s.gpu_uuid.as_str()).collect();
        uuids.dedup();
        a.envs.insert("GPUSLICE_SLICE".into(), ids.join(","));
        a.envs
            .insert("NVIDIA_VISIBLE_DEVICES".into(), uuids.join(","));
        for s in slices {
            a.cdi_devices.push(format!("{TEST_CDI_KIND}={}", s.id));
            let node = PathBuf::from(format!("/dev/nvidia{}", s.gpu_index));
            if !a.device_nodes.iter().any(|d| d.host_path == node) {
                a.device_nodes.push(DeviceNode {
                    container_path: node.clone(),
                    host_path: node,
                    permissions: "rw".into(),
                });
            }
        }
        for node in ["/dev/nvidiactl", "/dev/nvidia-uvm"] {
            a.device_nodes.push(DeviceNode {
                container_path: node.into(),
                host_path: node.into(),
                permissions: "rw".into(),
            });
        }
        a.mounts.push(Mount {
            container_path: "/run/gpuslice/slice.env".into(),
            host_path: format!(
                "/var/lib/gpuslice/slices/{}/slice.env",
                first.id.as_str().replace("::", "_")
            )
            .into(),
            read_only: true,
        });
        Ok(a)
    }
}
