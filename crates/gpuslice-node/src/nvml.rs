//! The node's GPUs as NVML lists them: the [`GpuInventory`] of a real node.

use std::ffi::OsStr;

use nvml_wrapper::Nvml;

use crate::inventory::{GpuHealth, GpuInfo, GpuInventory, GpuListError};

/// NVML, loaded once; each listing asks it again, so a GPU that falls off the bus
/// disappears from the next one, and one whose queries fail is listed Unhealthy.
pub struct NvmlGpus {
    nvml: Nvml,
}

impl std::fmt::Debug for NvmlGpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NvmlGpus")
    }
}

impl NvmlGpus {
    /// Loads `libnvidia-ml.so.1` and initialises it.
    pub fn init() -> Result<Self, GpuListError> {
        let nvml = Nvml::builder()
            .lib_path(OsStr::new(gpuslice_host::gpus::NVML_LIBRARY))
            .init()
            .map_err(|e| GpuListError(format!("cannot load NVML: {e}")))?;
        Ok(Self { nvml })
    }

    /// The NVIDIA driver's version (`580.95.05`), if NVML tells it.
    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }
}

impl GpuInventory for NvmlGpus {
    fn gpus(&self) -> Result<Vec<GpuInfo>, GpuListError> {
        let count = self
            .nvml
            .device_count()
            .map_err(|e| GpuListError(format!("NVML cannot count the GPUs: {e}")))?;
        let mut gpus = Vec::new();
        for index in 0..count {
            // A GPU NVML cannot open (lost, or being reset) is simply absent.
            let Ok(device) = self.nvml.device_by_index(index) else {
                continue;
            };
            let Ok(uuid) = device.uuid() else {
                continue;
            };
            let memory = device.memory_info().map(|m| m.total);
            let name = device.name().unwrap_or_else(|_| "NVIDIA GPU".into());
            let health = match &memory {
                Ok(_) => GpuHealth::Healthy,
                Err(e) => GpuHealth::Unhealthy(format!("NVML cannot read its memory: {e}")),
            };
            gpus.push(GpuInfo {
                uuid: gpuslice_config::canonical_uuid(&uuid),
                index,
                name,
                memory: memory.unwrap_or(0),
                health,
            });
        }
        Ok(gpus)
    }
}
