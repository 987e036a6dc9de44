//! The host's GPUs ([`HostGpu`]) and `--gpus`: parsing the list, and resolving each entry (an NVML index as `nvidia-smi`
//! numbers devices, a UUID, or a unique UUID prefix) to a full GPU UUID. The matching is
//! a pure function over a list of devices; asking NVML for that list is a thin function
//! of its own, so the matching is tested without a GPU. Also what each GPU holds now
//! ([`GpuUsage`], read by a [`GpuMeter`] that keeps NVML loaded), for `gpuslice top`.

use std::ffi::OsStr;

use gpuslice_config::{DeviceSelector, canonical_uuid};

/// The name NVML is loaded by.
pub const NVML_LIBRARY: &str = "libnvidia-ml.so.1";

/// What can go wrong with `--gpus`.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    /// The list is empty or has an empty entry.
    #[error("--gpus: the list has an empty entry (expected e.g. 0,1 or GPU-5d1f...)")]
    EmptyEntry,
    /// An entry that is neither an index nor a UUID.
    #[error("--gpus: {0:?} is neither a device index (0, 1, ...) nor a GPU UUID (GPU-...)")]
    BadEntry(String),
    /// An entry that names no device of this machine.
    #[error("--gpus: no GPU matches {device}; this machine has {available}")]
    Unknown {
        /// The entry as given.
        device: String,
        /// The devices that exist.
        available: String,
    },
    /// A UUID prefix that fits several devices.
    #[error("--gpus: {device} is ambiguous, it matches {matches}; give more of the UUID")]
    Ambiguous {
        /// The entry as given.
        device: String,
        /// The devices it matches.
        matches: String,
    },
    /// Two entries that name one device.
    #[error("--gpus names {uuid} twice (as {first} and {second})")]
    Duplicate {
        /// The device.
        uuid: String,
        /// The first entry naming it.
        first: String,
        /// The second entry naming it.
        second: String,
    },
    /// NVML could not be used.
    #[error("--gpus needs NVML ({NVML_LIBRARY}) to find the GPUs, and it failed: {0}")]
    Nvml(#[from] nvml_wrapper::error::NvmlError),
}

/// A GPU of this host, as slices and CDI specs name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGpu {
    /// Index as NVML and `nvidia-smi` number devices.
    pub index: u32,
    /// UUID, canonical (`GPU-` then lower-case hex).
    pub uuid: String,
    /// Minor number of its device node: the GPU is `/dev/nvidia<minor>`.
    pub minor: u32,
    /// Its memory in bytes, as NVML reports it (`None`: not known), for the warnings
    /// about slices larger than their GPU.
    pub memory: Option<u64>,
}

/// A parsed `--gpus` list, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuList(pub Vec<DeviceSelector>);

/// A GPU of this machine: its NVML index and UUID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuDevice {
    /// Index as NVML and `nvidia-smi` number devices.
    pub index: u32,
    /// The GPU's UUID.
    pub uuid: String,
}

/// Parses `0,2,GPU-5d1f`.
pub fn parse_gpu_list(text: &str) -> Result<GpuList, GpuError> {
    let mut list = Vec::new();
    for entry in text.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(GpuError::EmptyEntry);
        }
        list.push(DeviceSelector::parse(entry).ok_or_else(|| GpuError::BadEntry(entry.into()))?);
    }
    Ok(GpuList(list))
}

fn describe(selector: &DeviceSelector) -> String {
    match selector {
        DeviceSelector::Index(i) => format!("index {i}"),
        DeviceSelector::Uuid(u) => u.clone(),
    }
}

fn list_devices(devices: &[&GpuDevice]) -> String {
    if devices.is_empty() {
        return "no GPUs".into();
    }
    devices
        .iter()
        .map(|d| format!("{} ({})", d.index, canonical_uuid(&d.uuid)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Resolves every entry of `list` to the canonical UUID of exactly one of `devices`,
/// keeping the order of `list`.
pub fn resolve(list: &GpuList, devices: &[GpuDevice]) -> Result<Vec<String>, GpuError> {
    let mut chosen: Vec<(String, &DeviceSelector)> = Vec::new();
    for selector in &list.0 {
        let index_of = |d: &GpuDevice| match selector {
            DeviceSelector::Index(_) => Some(d.index),
            // A UUID entry matches by UUID only.
            DeviceSelector::Uuid(_) => None,
        };
        let matches: Vec<&GpuDevice> = devices
            .iter()
            .filter(|d| selector.matches(index_of(d), &d.uuid))
            .collect();
        let device = match matches.as_slice() {
            [one] => *one,
            [] => {
                return Err(GpuError::Unknown {
                    device: describe(selector),
                    available: list_devices(&devices.iter().collect::<Vec<_>>()),
                });
            }
            several => {
                return Err(GpuError::Ambiguous {
                    device: describe(selector),
                    matches: list_devices(several),
                });
            }
        };
        let uuid = canonical_uuid(&device.uuid);
        if let Some((_, first)) = chosen.iter().find(|(u, _)| *u == uuid) {
            return Err(GpuError::Duplicate {
                uuid,
                first: describe(first),
                second: describe(selector),
            });
        }
        chosen.push((uuid, selector));
    }
    Ok(chosen.into_iter().map(|(uuid, _)| uuid).collect())
}

/// Lists this machine's GPUs through NVML, loaded as `libnvidia-ml.so.1`.
pub fn nvml_devices() -> Result<Vec<GpuDevice>, GpuError> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(OsStr::new(NVML_LIBRARY))
        .init()?;
    (0..nvml.device_count()?)
        .map(|index| {
            let uuid = nvml.device_by_index(index)?.uuid()?;
            Ok(GpuDevice { index, uuid })
        })
        .collect()
}

/// NVML could not be loaded or answer, for [`GpuMeter`].
#[derive(Debug, thiserror::Error)]
#[error("NVML ({NVML_LIBRARY}): {0}")]
pub struct MeterError(#[from] nvml_wrapper::error::NvmlError);

/// What one GPU holds now, as NVML reports it (every process, sliced or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuUsage {
    /// Index as NVML and `nvidia-smi` number devices.
    pub index: u32,
    /// UUID, canonical (`GPU-` then lower-case hex).
    pub uuid: String,
    /// Total memory in bytes (`None`: NVML cannot say).
    pub memory_total: Option<u64>,
    /// Memory in use in bytes (`None`: NVML cannot say).
    pub memory_used: Option<u64>,
    /// The share of the last sample period in which a kernel ran, in percent
    /// (`nvmlDeviceGetUtilizationRates`; `None`: not supported).
    pub utilization_percent: Option<u32>,
}

/// NVML, loaded once, to read what the GPUs hold again and again.
pub struct GpuMeter {
    nvml: nvml_wrapper::Nvml,
}

impl std::fmt::Debug for GpuMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GpuMeter")
    }
}

impl GpuMeter {
    /// Loads NVML (`libnvidia-ml.so.1`).
    pub fn open() -> Result<Self, MeterError> {
        let nvml = nvml_wrapper::Nvml::builder()
            .lib_path(OsStr::new(NVML_LIBRARY))
            .init()?;
        Ok(Self { nvml })
    }

    /// Every GPU now, by index. A value a GPU does not support is `None`; a GPU that
    /// cannot be named is an error.
    pub fn read(&self) -> Result<Vec<GpuUsage>, MeterError> {
        (0..self.nvml.device_count()?)
            .map(|index| {
                let device = self.nvml.device_by_index(index)?;
                let memory = device.memory_info().ok();
                Ok(GpuUsage {
                    index,
                    uuid: canonical_uuid(&device.uuid()?),
                    memory_total: memory.as_ref().map(|m| m.total),
                    memory_used: memory.as_ref().map(|m| m.used),
                    utilization_percent: device.utilization_rates().ok().map(|u| u.gpu),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";
    const B: &str = "GPU-aaaa2222-0000-4000-8000-000000000000";
    const C: &str = "GPU-cccc3333-0000-4000-8000-000000000000";

    fn machine() -> Vec<GpuDevice> {
        [A, B, C]
            .iter()
            .zip(0u32..)
            .map(|(u, i)| GpuDevice {
                index: i,
                uuid: u.to_string(),
            })
            .collect()
    }

    fn resolve_text(text: &str) -> Result<Vec<String>, GpuError> {
        resolve(&parse_gpu_list(text)?, &machine())
    }

    #[test]
    fn indices_uuids_and_prefixes_resolve_in_the_given_order() {
        assert_eq!(resolve_text("2,0").unwrap(), [C, A]);
        assert_eq!(resolve_text(" 1 ").unwrap(), [B]);
        assert_eq!(resolve_text(B).unwrap(), [B]);
        assert_eq!(resolve_text("gpu-CCCC").unwrap(), [C]);
        assert_eq!(resolve_text("GPU-aaaa2,0").unwrap(), [B, A]);
    }

    #[test]
    fn nvml_spellings_are_canonicalised() {
        let devices = [GpuDevice {
            index: 0,
            uuid: "GPU-ABCDEF00-0000-4000-8000-000000000000".into(),
        }];
        let uuids = resolve(&parse_gpu_list("0").unwrap(), &devices).unwrap();
        assert_eq!(uuids, ["GPU-abcdef00-0000-4000-8000-000000000000"]);
    }

    #[test]
    fn unknown_devices_name_the_entry_and_list_the_machine() {
        let msg = resolve_text("0,5").unwrap_err().to_string();
        assert!(msg.contains("--gpus") && msg.contains("index 5"), "{msg}");
        assert!(
            msg.contains(&format!("0 ({A})")) && msg.contains(&format!("2 ({C})")),
            "{msg}"
        );

        let msg = resolve_text("GPU-dddd").unwrap_err().to_string();
        assert!(msg.contains("GPU-dddd"), "{msg}");

        let msg = resolve(&parse_gpu_list("0").unwrap(), &[])
            .unwrap_err()
            .to_string();
        assert!(msg.contains("no GPUs"), "{msg}");
    }

    #[test]
    fn ambiguous_prefixes_and_duplicates_are_refused() {
        let err = resolve_text("GPU-aaaa").unwrap_err();
        assert!(matches!(err, GpuError::Ambiguous { .. }), "{err}");
        assert!(err.to_string().contains(A) && err.to_string().contains(B));

        let err = resolve_text("0,GPU-aaaa1").unwrap_err();
        assert!(matches!(err, GpuError::Duplicate { .. }), "{err}");
        assert!(err.to_string().contains(A), "{err}");
    }

    #[test]
    fn malformed_lists_are_refused() {
        for text in ["", "0,", ",1", "x", "GPU-", "GPU-zz", "-1"] {
            let err = parse_gpu_list(text).expect_err(text);
            assert!(err.to_string().contains("--gpus"), "{text}: {err}");
        }
    }
}
