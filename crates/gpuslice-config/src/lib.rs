//! Slice configuration: what a process reads from its environment to learn which slice
//! it belongs to and what that slice may use.
//!
//! The parser takes the environment as a list of pairs, so it is a pure function that
//! tests drive directly. Anything that is set but cannot be understood is an error that
//! names the variable: the interposer turns it into a refusal to initialise CUDA, never
//! into an unlimited run.

pub mod compute;
pub mod hash;
pub mod proc_status;
pub mod size;

use std::fmt;

pub use compute::{ComputeLimits, ComputeMethod, ComputeShares, SharesError};
pub use size::{SizeError, format_size, human_size, parse_bytes, parse_size};

/// gpuslice's own variable: the memory limit, for every device (`8GiB`) or per device
/// (`0=8GiB,GPU-1234abcd=4GiB`).
pub const ENV_MEMORY: &str = "GPUSLICE_MEMORY";
/// gpuslice's own variable: path of the slice's shared ledger file.
pub const ENV_LEDGER: &str = "GPUSLICE_LEDGER";
/// gpuslice's own variable: folder that holds ledgers when `GPUSLICE_LEDGER` is not set.
pub const ENV_LEDGER_DIR: &str = "GPUSLICE_LEDGER_DIR";
/// gpuslice's own variable: a human name for the slice, shown in logs and status.
pub const ENV_SLICE_NAME: &str = "GPUSLICE_SLICE";
/// gpuslice's own variable: log level (`off`, `error`, `warn`, `info`, `debug`, `trace`).
pub const ENV_LOG: &str = "GPUSLICE_LOG";
/// vgpu-controller: per-index memory limit prefix (`CUDA_MEM_LIMIT_0=1000m`).
pub const ENV_VGPU_MEM_PREFIX: &str = "CUDA_MEM_LIMIT_";
/// vgpu-controller: the UUIDs the indices of `CUDA_MEM_LIMIT_<i>` refer to.
pub const ENV_VGPU_UUIDS: &str = "GPU_DEVICES_UUID";
/// vgpu-controller: numeric log level, 0 to 5.
pub const ENV_VGPU_LOG: &str = "LOGGER_LEVEL";
/// HAMi-core: memory limit for every device, or per index with a `_<i>` suffix.
pub const ENV_HAMI_MEM: &str = "CUDA_DEVICE_MEMORY_LIMIT";

/// gpuslice's own variable: overrides the host agent's probe for rewriting the driver's
/// process-list ioctls of `nvidia-smi` (`off`, `host-pids`, `translated-broken-memory`).
pub const ENV_SMI_IOCTL: &str = "GPUSLICE_SMI_IOCTL";

/// gpuslice's own variable: folder of the host-wide per-GPU turn files (compute slices
/// on one GPU take turns through them, so it must be shared by every slice of a host).
pub const ENV_GPU_DIR: &str = "GPUSLICE_GPU_DIR";

/// Where a container's slice configuration is pinned: a file the container runtime
/// mounts read-only (the CDI spec of `gpuslice cdi generate` does). When it exists it
/// *is* the configuration, in `NAME=VALUE` lines with the variables' names, and the
/// process environment is ignored except for the log level: a process cannot escape its
/// slice by removing or changing its variables.
pub const PINNED_CONFIG: &str = "/run/gpuslice/slice.env";

/// Default folder for the per-GPU turn files, shared by the compute slices of every user
/// (the default ledger folders are per user: see `gpuslice_ledger::default_ledger_dir`).
pub const DEFAULT_GPU_DIR: &str = "/dev/shm/gpuslice-gpus";

/// A configuration problem. Every message names the variable it came from.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size that does not parse.
    #[error("{var}={value:?} is not a valid memory size: {source}")]
    BadSize {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// Why it failed.
        source: SizeError,
    },
    /// A per-device entry that is not `DEVICE=SIZE`.
    #[error(
        "{var}: entry {entry:?} is not DEVICE=SIZE (DEVICE is an index like 0 or a UUID like GPU-8a1b...)"
    )]
    BadEntry {
        /// The variable.
        var: String,
        /// The entry.
        entry: String,
    },
    /// A device selector that is neither an index nor a UUID.
    #[error("{var}: {device:?} is neither a device index nor a GPU UUID (GPU-...)")]
    BadDevice {
        /// The variable.
        var: String,
        /// The selector.
        device: String,
    },
    /// Two variables give one device different limits.
    #[error("{first} and {second} give {device} different memory limits ({a} and {b})")]
    Conflict {
        /// The first variable.
        first: String,
        /// The second variable.
        second: String,
        /// The device.
        device: String,
        /// First limit (formatted).
        a: String,
        /// Second limit (formatted).
        b: String,
    },
    /// An index that `GPU_DEVICES_UUID` does not cover.
    #[error("{var} refers to device index {index}, but {uuids_var} lists only {count} UUIDs")]
    IndexOutOfRange {
        /// The variable.
        var: String,
        /// The index.
        index: u32,
        /// The UUID list variable.
        uuids_var: String,
        /// How many UUIDs it has.
        count: usize,
    },
    /// A log level that is not known.
    #[error(
        "{var}={value:?} is not a log level (expected off, error, warn, info, debug, trace, or 0-5 for LOGGER_LEVEL)"
    )]
    BadLogLevel {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A value that is not valid UTF-8 or is otherwise unusable.
    #[error("{var} is set but empty or unreadable")]
    Empty {
        /// The variable.
        var: String,
    },
    /// A pinned configuration file that cannot be read or parsed.
    #[error("{path}: {reason}")]
    PinnedFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A variable in the pinned configuration file that is not valid.
    #[error("{path}: {source}")]
    InPinnedFile {
        /// The file.
        path: String,
        /// The problem with the variable.
        source: Box<ConfigError>,
    },
    /// An entry of `GPU_DEVICES_UUID` that is not a GPU UUID.
    #[error(
        "{var}: entry {position} ({entry:?}) is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, entries separated by commas)"
    )]
    BadUuid {
        /// The variable.
        var: String,
        /// The entry's position in the list, from 0 (the index `CUDA_MEM_LIMIT_<i>` uses).
        position: usize,
        /// The entry.
        entry: String,
    },
    /// A path that must be absolute but is not.
    #[error(
        "{var}={value:?} is a relative path: processes started in different folders would find different files, and so not share one slice; give an absolute path"
    )]
    RelativePath {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
    },
    /// A value that is not one of the words the variable takes.
    #[error("{var}={value:?} is not one of {expected}")]
    NotAChoice {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// The words it takes.
        expected: &'static str,
    },
    /// A compute share that is not a whole percentage in range.
    #[error("{var}={value:?} is not a valid compute share: {reason}")]
    BadCompute {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Which device a limit applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceSelector {
    /// A device index as NVML and `nvidia-smi` number devices (not affected by
    /// `CUDA_VISIBLE_DEVICES`).
    Index(u32),
    /// A GPU UUID (`GPU-xxxxxxxx-...`), or a unique prefix of one.
    Uuid(String),
}

impl DeviceSelector {
    /// Parses `0` or `GPU-...`.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if let Ok(i) = text.parse::<u32>() {
            return Some(Self::Index(i));
        }
        let lower = text.to_ascii_lowercase();
        if lower.starts_with("gpu-") || lower.starts_with("mig-") {
            let rest = &text[4..];
            if rest.chars().any(|c| c.is_ascii_hexdigit())
                && rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
            {
                return Some(Self::Uuid(canonical_uuid(text)));
            }
        }
        None
    }

    /// Whether this selector picks the device with the given NVML index and UUID.
    pub fn matches(&self, index: Option<u32>, uuid: &str) -> bool {
        match self {
            Self::Index(i) => index == Some(*i),
            Self::Uuid(u) => canonical_uuid(uuid).starts_with(u.as_str()),
        }
    }
}

impl fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Index(i) => write!(f, "device {i}"),
            Self::Uuid(u) => write!(f, "{u}"),
        }
    }
}

/// Canonical spelling of a UUID: `GPU-` prefix upper case, hex digits lower case. Any
/// text is taken (character by character, so never split inside a character); only
/// ASCII letters change case.
pub fn canonical_uuid(text: &str) -> String {
    text.trim()
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i < 4 {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Whether `text` is a whole GPU (or MIG) UUID: `GPU-` and 32 hex digits grouped
/// 8-4-4-4-12, in any case.
pub fn is_full_uuid(text: &str) -> bool {
    let Some(rest) = text
        .get(..4)
        .filter(|p| p.eq_ignore_ascii_case("gpu-") || p.eq_ignore_ascii_case("mig-"))
        .and_then(|_| text.get(4..))
    else {
        return false;
    };
    let groups: Vec<&str> = rest.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Parses `GPU_DEVICES_UUID`: whole GPU UUIDs separated by commas (blanks around an
/// entry are allowed). Position `i` is the device `CUDA_MEM_LIMIT_<i>` limits, so an
/// empty or malformed entry is an error rather than skipped: skipping it would move the
/// limits of the entries after it onto other GPUs.
pub fn parse_uuid_list(var: &str, value: &str) -> Result<Vec<String>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .enumerate()
        .map(|(position, entry)| {
            if is_full_uuid(entry) {
                Ok(canonical_uuid(entry))
            } else {
                Err(ConfigError::BadUuid {
                    var: var.to_string(),
                    position,
                    entry: entry.to_string(),
                })
            }
        })
        .collect()
}

/// Memory limits of a slice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Limit for every device without an entry of its own.
    pub all_devices: Option<u64>,
    /// Limits for particular devices.
    pub per_device: Vec<(DeviceSelector, u64)>,
}

impl MemoryLimits {
    /// True when no limit at all is configured.
    pub fn is_empty(&self) -> bool {
        self.all_devices.is_none() && self.per_device.is_empty()
    }

    /// The limit for a device, if any.
    pub fn limit_for(&self, index: Option<u32>, uuid: &str) -> Option<u64> {
        self.per_device
            .iter()
            .find(|(sel, _)| sel.matches(index, uuid))
            .map(|(_, limit)| *limit)
            .or(self.all_devices)
    }

    /// The per-device selectors that pick none of `devices` (the NVML index, if known,
    /// and the UUID of each GPU present). A limit for a GPU that is not there limits
    /// nothing, so the caller refuses it rather than let the real GPUs run unlimited.
    pub fn selectors_matching_none<'a>(
        &'a self,
        devices: &[(Option<u32>, String)],
    ) -> Vec<&'a DeviceSelector> {
        self.per_device
            .iter()
            .map(|(sel, _)| sel)
            .filter(|sel| !devices.iter().any(|(i, u)| sel.matches(*i, u)))
            .collect()
    }

    /// Whether any limit is keyed by index (needs NVML to resolve).
    pub fn has_index_selectors(&self) -> bool {
        self.per_device
            .iter()
            .any(|(s, _)| matches!(s, DeviceSelector::Index(_)))
    }

    /// Renders as a `GPUSLICE_MEMORY` value.
    pub fn to_env_value(&self) -> String {
        let mut parts = Vec::new();
        if let Some(all) = self.all_devices {
            parts.push(format_size(all));
        }
        for (sel, limit) in &self.per_device {
            let key = match sel {
                DeviceSelector::Index(i) => i.to_string(),
                DeviceSelector::Uuid(u) => u.clone(),
            };
            parts.push(format!("{key}={}", format_size(*limit)));
        }
        parts.join(",")
    }

    fn insert(
        &mut self,
        sources: &mut Vec<(DeviceSelector, String)>,
        var: &str,
        sel: DeviceSelector,
        limit: u64,
    ) -> Result<(), ConfigError> {
        if let Some(pos) = self.per_device.iter().position(|(s, _)| *s == sel) {
            let existing = self.per_device[pos].1;
            if existing != limit {
                let first = sources
                    .iter()
                    .find(|(s, _)| *s == sel)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default();
                return Err(ConfigError::Conflict {
                    first,
                    second: var.to_string(),
                    device: sel.to_string(),
                    a: format_size(existing),
                    b: format_size(limit),
                });
            }
            return Ok(());
        }
        sources.push((sel.clone(), var.to_string()));
        self.per_device.push((sel, limit));
        Ok(())
    }
}

/// Log verbosity, ordered from quiet to chatty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Nothing at all.
    Off = 0,
    /// Errors only.
    Error = 1,
    /// Warnings and errors (the default).
    Warn = 2,
    /// Informational lines too.
    Info = 3,
    /// Debugging detail.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl LogLevel {
    /// Parses gpuslice's names.
    pub fn parse_name(text: &str) -> Option<Self> {
        Some(match text.trim().to_ascii_lowercase().as_str() {
            "off" | "none" | "0" => Self::Off,
            "error" => Self::Error,
            "warn" | "warning" => Self::Warn,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => return None,
        })
    }

    /// Maps vgpu-controller's `LOGGER_LEVEL` (0 to 5). Its table is cumulative from 1
    /// (errors) to 5 (details); 0 shows only informational lines, which we read as
    /// "quiet but not silent" and map to errors, so refusals still show.
    pub fn from_vgpu(level: u32) -> Option<Self> {
        Some(match level {
            0 | 1 => Self::Error,
            2 | 3 => Self::Warn,
            4 => Self::Debug,
            5 => Self::Trace,
            _ => return None,
        })
    }
}

/// `GPUSLICE_SMI_IOCTL`: how the interposer rewrites the driver's process-list ioctls,
/// instead of what the host agent's probe of the driver says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmiIoctl {
    /// `off`: never rewrite.
    Off,
    /// `host-pids`: as for a driver that lists host PIDs in containers.
    HostPids,
    /// `translated-broken-memory`: as for a driver that translates PIDs but loses
    /// per-process memory.
    TranslatedBrokenMemory,
}

impl SmiIoctl {
    /// The words `GPUSLICE_SMI_IOCTL` takes.
    pub const CHOICES: &str = "off, host-pids, translated-broken-memory";

    /// Parses one of [`SmiIoctl::CHOICES`] (surrounding blanks allowed).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "off" => Self::Off,
            "host-pids" => Self::HostPids,
            "translated-broken-memory" => Self::TranslatedBrokenMemory,
            _ => return None,
        })
    }
}

/// Everything a process learns from its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceConfig {
    /// Memory limits.
    pub memory: MemoryLimits,
    /// Explicit ledger path.
    pub ledger_path: Option<String>,
    /// Folder for ledgers, if `GPUSLICE_LEDGER_DIR` names one (else the user's default
    /// folder, `gpuslice_ledger::default_ledger_dir`).
    pub ledger_dir: Option<String>,
    /// The slice's name, if given.
    pub slice_name: Option<String>,
    /// Log level.
    pub log_level: LogLevel,
    /// Which variable (or variables) the memory limits came from, for messages.
    pub memory_source: String,
    /// Compute limits.
    pub compute: ComputeLimits,
    /// Folder of the host-wide per-GPU files through which slices take turns on a GPU.
    pub gpu_dir: String,
    /// The pinned configuration file the configuration came from, if any.
    pub pinned_file: Option<String>,
    /// `GPUSLICE_SMI_IOCTL`, if set.
    pub smi_ioctl: Option<SmiIoctl>,
}

impl SliceConfig {
    /// Whether this process belongs to a slice at all.
    pub fn is_sliced(&self) -> bool {
        !self.memory.is_empty() || self.ledger_path.is_some() || self.compute.is_limited()
    }

    /// The file name of the ledger of a slice configured without `GPUSLICE_LEDGER`
    /// (`env-<digest>.ledger` in the ledger folder). The digest covers everything that
    /// defines the slice: its name, the memory limit of every device and the default
    /// one, and the compute limits. Processes share the ledger exactly when they
    /// describe the same slice; another slice, even with some limit in common, gets a
    /// file of its own instead of being refused (or, worse, joined).
    pub fn derived_ledger_file_name(&self) -> String {
        let mut devices: Vec<String> = self
            .memory
            .per_device
            .iter()
            .map(|(sel, limit)| match sel {
                DeviceSelector::Index(i) => format!("index {i}={limit}"),
                DeviceSelector::Uuid(u) => format!("uuid {u}={limit}"),
            })
            .collect();
        devices.sort();
        let shares = self.compute.shares;
        let text = format!(
            "gpuslice slice v1\nmemory={}\ndevices={}\ncompute={}\nburst={}\nname={}",
            self.memory
                .all_devices
                .map_or("none".to_string(), |l| l.to_string()),
            devices.join(","),
            shares.map_or("none".to_string(), |s| s.hard.to_string()),
            shares
                .and_then(|s| s.burst)
                .map_or("none".to_string(), |b| b.to_string()),
            self.slice_name.as_deref().unwrap_or(""),
        );
        format!("env-{:016x}.ledger", hash::fnv1a(&[text.as_bytes()]))
    }

    /// Reads the configuration from [`PINNED_CONFIG`] if it exists, else from the
    /// process environment.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect();
        Self::from_env_or_pinned(&vars, std::path::Path::new(PINNED_CONFIG))
    }

    /// The configuration from the pinned file `pinned` if it exists (with the log level
    /// from `env` where the file sets none), else from `env`. A pinned file that cannot
    /// be read, does not parse or names no slice is an error: it fails closed.
    pub fn from_env_or_pinned(
        env: &[(String, String)],
        pinned: &std::path::Path,
    ) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(pinned) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Self::from_vars(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            }
            Err(e) => {
                return Err(ConfigError::PinnedFile {
                    path: pinned.display().to_string(),
                    reason: format!("cannot be read: {e}"),
                });
            }
        };
        let path = pinned.display().to_string();
        let mut vars = parse_pinned(&text, &path)?;
        // The log level and the ioctl override are the process's own business: they
        // come from the environment unless the file sets them.
        let is_log = |k: &str| k == ENV_LOG || k == ENV_VGPU_LOG;
        if !vars.iter().any(|(k, _)| is_log(k)) {
            vars.extend(env.iter().filter(|(k, _)| is_log(k)).cloned());
        }
        if !vars.iter().any(|(k, _)| k == ENV_SMI_IOCTL) {
            vars.extend(env.iter().filter(|(k, _)| k == ENV_SMI_IOCTL).cloned());
        }
        let mut config = Self::from_vars(vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|source| ConfigError::InPinnedFile {
                path: path.clone(),
                source: Box::new(source),
            })?;
        if !config.is_sliced() {
            return Err(ConfigError::PinnedFile {
                path,
                reason: "sets no limit and no ledger, so it names no slice".into(),
            });
        }
        config.pinned_file = Some(path);
        Ok(config)
    }

    /// Parses the configuration from `(name, value)` pairs.
    pub fn from_vars<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, ConfigError> {
        let mut own_memory = None;
        let mut ledger_path = None;
        let mut ledger_dir = None;
        let mut slice_name = None;
        let mut log_own = None;
        let mut log_vgpu = None;
        let mut vgpu_uuids: Option<String> = None;
        let mut vgpu_limits: Vec<(String, String)> = Vec::new();
        let mut hami_all: Option<String> = None;
        let mut hami_limits: Vec<(String, String)> = Vec::new();
        let mut compute_vars: Vec<(String, String)> = Vec::new();
        let mut gpu_dir = None;
        let mut smi_ioctl = None;

        for (key, value) in vars {
            if compute::is_compute_var(key) {
                compute_vars.push((key.to_string(), value.to_string()));
                continue;
            }
            match key {
                ENV_GPU_DIR => gpu_dir = absolute(ENV_GPU_DIR, value)?,
                ENV_MEMORY => own_memory = Some(value.to_string()),
                ENV_LEDGER => ledger_path = absolute(ENV_LEDGER, value)?,
                ENV_LEDGER_DIR => ledger_dir = non_empty(value),
                ENV_SMI_IOCTL => {
                    smi_ioctl = match non_empty(value) {
                        None => None,
                        Some(v) => Some(SmiIoctl::parse(&v).ok_or(ConfigError::NotAChoice {
                            var: ENV_SMI_IOCTL.into(),
                            value: value.to_string(),
                            expected: SmiIoctl::CHOICES,
                        })?),
                    }
                }
                ENV_SLICE_NAME => slice_name = non_empty(value),
                ENV_LOG => log_own = Some(value.to_string()),
                ENV_VGPU_LOG => log_vgpu = Some(value.to_string()),
                ENV_VGPU_UUIDS => vgpu_uuids = Some(value.to_string()),
                ENV_HAMI_MEM => hami_all = Some(value.to_string()),
                _ => {
                    if key.starts_with(ENV_VGPU_MEM_PREFIX) {
                        vgpu_limits.push((key.to_string(), value.to_string()));
                    } else if key.len() > ENV_HAMI_MEM.len() + 1
                        && key.starts_with(ENV_HAMI_MEM)
                        && key.as_bytes()[ENV_HAMI_MEM.len()] == b'_'
                    {
                        hami_limits.push((key.to_string(), value.to_string()));
                    }
                }
            }
        }

        let log_level = match (log_own, log_vgpu) {
            (Some(v), _) => LogLevel::parse_name(&v).ok_or(ConfigError::BadLogLevel {
                var: ENV_LOG.into(),
                value: v,
            })?,
            (None, Some(v)) => v
                .trim()
                .parse::<u32>()
                .ok()
                .and_then(LogLevel::from_vgpu)
                .ok_or(ConfigError::BadLogLevel {
                    var: ENV_VGPU_LOG.into(),
                    value: v,
                })?,
            (None, None) => LogLevel::Warn,
        };

        // A ledger folder matters only without an explicit ledger (`gpuslice run` sets
        // the ledger, and passes the folder variable on as it found it).
        if ledger_path.is_none()
            && let Some(dir) = &ledger_dir
        {
            absolute(ENV_LEDGER_DIR, dir)?;
        }

        let mut memory = MemoryLimits::default();
        let mut sources: Vec<(DeviceSelector, String)> = Vec::new();
        let mut used_vars: Vec<String> = Vec::new();

        if let Some(value) = own_memory {
            parse_own_memory(&value, &mut memory, &mut sources)?;
            used_vars.push(ENV_MEMORY.into());
        } else {
            if let Some(value) = hami_all {
                memory.all_devices = Some(parse_limit(ENV_HAMI_MEM, &value)?);
                used_vars.push(ENV_HAMI_MEM.into());
            }
            let mut indexed: Vec<(String, String)> = vgpu_limits;
            indexed.extend(hami_limits);
            indexed.sort();
            // Index-keyed compat limits refer to GPU_DEVICES_UUID positions when it is
            // set (even empty); it is read only when such a limit needs it.
            let uuid_list = match &vgpu_uuids {
                Some(list) if !indexed.is_empty() => Some(parse_uuid_list(ENV_VGPU_UUIDS, list)?),
                _ => None,
            };
            let resolve_index = |var: &str, index: u32| -> Result<DeviceSelector, ConfigError> {
                match &uuid_list {
                    Some(list) => list
                        .get(index as usize)
                        .map(|u| DeviceSelector::Uuid(u.clone()))
                        .ok_or(ConfigError::IndexOutOfRange {
                            var: var.to_string(),
                            index,
                            uuids_var: ENV_VGPU_UUIDS.into(),
                            count: list.len(),
                        }),
                    None => Ok(DeviceSelector::Index(index)),
                }
            };
            for (var, value) in indexed {
                let suffix = var.rsplit('_').next().unwrap_or("");
                let index: u32 = suffix.parse().map_err(|_| ConfigError::BadDevice {
                    var: var.clone(),
                    device: suffix.to_string(),
                })?;
                let limit = parse_limit(&var, &value)?;
                let sel = resolve_index(&var, index)?;
                memory.insert(&mut sources, &var, sel, limit)?;
                used_vars.push(var);
            }
        }

        let compute =
            ComputeLimits::from_vars(compute_vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))?;

        Ok(Self {
            memory,
            ledger_path,
            ledger_dir,
            slice_name,
            log_level,
            memory_source: used_vars.join(", "),
            compute,
            gpu_dir: gpu_dir.unwrap_or_else(|| DEFAULT_GPU_DIR.to_string()),
            pinned_file: None,
            smi_ioctl,
        })
    }
}

/// The `NAME=VALUE` lines of a pinned configuration file; blank lines and lines that
/// start with `#` are skipped. Values are taken as written (no quotes, no expansion).
fn parse_pinned(text: &str, path: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars: Vec<(String, String)> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| ConfigError::PinnedFile {
            path: path.to_string(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let (name, value) = line
            .split_once('=')
            .ok_or_else(|| bad("expected NAME=VALUE"))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(bad("a variable name is A-Z, 0-9 and _"));
        }
        if vars.iter().any(|(k, _)| k == name) {
            return Err(bad(&format!("{name} is set twice")));
        }
        vars.push((name.to_string(), value.trim().to_string()));
    }
    Ok(vars)
}

fn non_empty(value: &str) -> Option<String> {
    let v = value.trim();
    (!v.is_empty()).then(|| v.to_string())
}

/// A path variable's value (`None` when empty), which must be absolute: a relative one
/// would name a different file in every working folder.
fn absolute(var: &str, value: &str) -> Result<Option<String>, ConfigError> {
    match non_empty(value) {
        Some(path) if !path.starts_with('/') => Err(ConfigError::RelativePath {
            var: var.to_string(),
            value: value.to_string(),
        }),
        other => Ok(other),
    }
}

/// Parses a limit: a size that must be greater than zero.
pub fn parse_limit(var: &str, value: &str) -> Result<u64, ConfigError> {
    parse_size(value).map_err(|source| ConfigError::BadSize {
        var: var.to_string(),
        value: value.to_string(),
        source,
    })
}

fn parse_own_memory(
    value: &str,
    memory: &mut MemoryLimits,
    sources: &mut Vec<(DeviceSelector, String)>,
) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Err(ConfigError::Empty {
            var: ENV_MEMORY.into(),
        });
    }
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(ConfigError::BadEntry {
                var: ENV_MEMORY.into(),
                entry: entry.into(),
            });
        }
        match entry.split_once('=') {
            None => {
                if memory.all_devices.is_some() {
                    return Err(ConfigError::BadEntry {
                        var: ENV_MEMORY.into(),
                        entry: entry.into(),
                    });
                }
                memory.all_devices = Some(parse_limit(ENV_MEMORY, entry)?);
            }
            Some((device, size)) => {
                let sel = DeviceSelector::parse(device).ok_or(ConfigError::BadDevice {
                    var: ENV_MEMORY.into(),
                    device: device.trim().into(),
                })?;
                let limit = parse_limit(ENV_MEMORY, size)?;
                memory.insert(sources, ENV_MEMORY, sel, limit)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;
    const MIB: u64 = 1 << 20;

    fn cfg(vars: &[(&str, &str)]) -> Result<SliceConfig, ConfigError> {
        SliceConfig::from_vars(vars.iter().copied())
    }

    #[test]
    fn no_variables_means_no_slice() {
        let c = cfg(&[("PATH", "/bin")]).unwrap();
        assert!(!c.is_sliced());
        assert_eq!(c.log_level, LogLevel::Warn);
        assert_eq!(c.ledger_dir, None);
        assert_eq!(c.gpu_dir, DEFAULT_GPU_DIR);
    }

    #[test]
    fn own_memory_for_all_devices_and_per_device() {
        let c = cfg(&[(ENV_MEMORY, "8GiB,1=4g,GPU-ABCDEF12=512MiB")]).unwrap();
        assert_eq!(c.memory.all_devices, Some(8 * GIB));
        assert_eq!(c.memory.limit_for(Some(0), "GPU-00"), Some(8 * GIB));
        assert_eq!(c.memory.limit_for(Some(1), "GPU-00"), Some(4 * GIB));
        assert_eq!(
            c.memory.limit_for(Some(7), "GPU-abcdef12-3333-4444"),
            Some(512 * MIB)
        );
        assert_eq!(c.memory_source, ENV_MEMORY);
    }

    #[test]
    fn own_memory_round_trips_through_env_value() {
        let c = cfg(&[(ENV_MEMORY, "8GiB,1=4GiB")]).unwrap();
        let again = cfg(&[(ENV_MEMORY, &c.memory.to_env_value())]).unwrap();
        assert_eq!(c.memory, again.memory);
    }

    #[test]
    fn malformed_limits_fail_and_name_the_variable() {
        for (var, value) in [
            (ENV_MEMORY, "lots"),
            (ENV_MEMORY, "4GB-oops"),
            (ENV_MEMORY, ""),
            (ENV_MEMORY, "0"),
            (ENV_MEMORY, "x=4GiB"),
            (ENV_MEMORY, "1=4GiB,1=8GiB"),
            (ENV_MEMORY, "4GiB,8GiB"),
            (ENV_HAMI_MEM, "-1"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "4q"),
            ("CUDA_MEM_LIMIT_0", "1000x"),
            ("CUDA_MEM_LIMIT_x", "1000m"),
        ] {
            let err = cfg(&[(var, value)]).expect_err(value);
            let msg = err.to_string();
            assert!(msg.contains(var), "{msg:?} should name {var}");
        }
    }

    const UA: &str = "GPU-aaaaaaaa-1111-4000-8000-000000000000";
    const UB: &str = "GPU-BBBBBBBB-2222-4000-8000-000000000000";

    #[test]
    fn selectors_that_match_no_device_are_found() {
        let c = cfg(&[(
            ENV_MEMORY,
            "4GiB,0=1GiB,99=2GiB,GPU-aaaaaaaa=3GiB,GPU-dead=5GiB",
        )])
        .unwrap();
        let here = [(Some(0), UA.to_string()), (Some(1), UB.to_string())];
        assert_eq!(
            c.memory.selectors_matching_none(&here),
            [
                &DeviceSelector::Index(99),
                &DeviceSelector::Uuid("GPU-dead".into())
            ]
        );
        // Without indices (devices as CUDA shows them) an index matches nothing.
        let cuda = [(None, UA.to_string())];
        assert_eq!(c.memory.selectors_matching_none(&cuda).len(), 3);
        assert!(
            cfg(&[(ENV_MEMORY, "4GiB")])
                .unwrap()
                .memory
                .selectors_matching_none(&[])
                .is_empty()
        );
    }

    #[test]
    fn vgpu_controller_names() {
        let list = format!("{UA}, {UB}");
        let c = cfg(&[
            ("CUDA_MEM_LIMIT_0", "1000m"),
            ("CUDA_MEM_LIMIT_1", "2000m"),
            (ENV_VGPU_UUIDS, &list),
            (ENV_VGPU_LOG, "5"),
        ])
        .unwrap();
        assert_eq!(c.memory.limit_for(None, UA), Some(1000 * MIB));
        assert_eq!(
            c.memory.limit_for(None, &UB.to_ascii_lowercase()),
            Some(2000 * MIB)
        );
        assert_eq!(c.memory.limit_for(Some(0), "GPU-cccc"), None);
        assert_eq!(c.log_level, LogLevel::Trace);
    }

    #[test]
    fn vgpu_index_beyond_uuid_list_fails() {
        let err = cfg(&[("CUDA_MEM_LIMIT_2", "1g"), (ENV_VGPU_UUIDS, UA)]).unwrap_err();
        assert!(err.to_string().contains("CUDA_MEM_LIMIT_2"));
    }

    #[test]
    fn a_malformed_uuid_list_fails_naming_the_variable() {
        for list in [
            "NaN",
            "0",
            "GPU-zzz",
            "GPU-aaaa",
            "",
            " ",
            ",",
            "１００",
            "GPU-aaaaaaaa-1111-4000-8000-00000000000",
            "GPU-aaaaaaaa-1111-4000-8000-0000000000000",
            "GPU-aaaaaaaa-1111-4000-8000-00000000000g",
            "GPU-aaaaaaaa11114000800000000000000",
            &format!("{UA},,{UB}"),
            &format!("{UA},"),
            &format!("{UA};{UB}"),
            &format!("{UA} {UB}"),
            &format!("ＧPU-{}", &UA[4..]),
            &format!("GPU-{}é", &UA[4..]),
        ] {
            let err = cfg(&[("CUDA_MEM_LIMIT_0", "1GiB"), (ENV_VGPU_UUIDS, list)])
                .expect_err(list)
                .to_string();
            assert!(err.starts_with(ENV_VGPU_UUIDS), "{list:?}: {err}");
        }
        // The list is read only when a limit needs it.
        let c = cfg(&[(ENV_MEMORY, "1GiB"), (ENV_VGPU_UUIDS, "NaN")]).unwrap();
        assert_eq!(c.memory.all_devices, Some(GIB));
        assert!(!cfg(&[(ENV_VGPU_UUIDS, "NaN")]).unwrap().is_sliced());
        // MIG UUIDs and any case are UUIDs.
        let mig = format!("MIG-{}", &UA[4..]);
        let c = cfg(&[("CUDA_MEM_LIMIT_0", "1GiB"), (ENV_VGPU_UUIDS, &mig)]).unwrap();
        assert_eq!(c.memory.limit_for(None, &mig), Some(GIB));
    }

    /// A value of `GPU_DEVICES_UUID` built from pieces that look like UUIDs, broken
    /// ones, separators, blanks, and non-ASCII text.
    fn generated_uuid_list(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            "GPU-",
            "gpu-",
            "MIG-",
            "GPU",
            "-",
            ",",
            ", ",
            ",,",
            " ",
            "\t",
            ";",
            "=",
            "0",
            "1",
            "NaN",
            "aaaaaaaa",
            "1111",
            "4000",
            "8000",
            "000000000000",
            "zz",
            "é",
            "１００",
            "Ｇ",
            "\u{0}",
            "\u{200b}",
            "🙂",
            "ǅ",
            "ß",
            "İ",
            "\n",
        ];
        let mut text = String::new();
        match rng.u8(0..4) {
            // A well-formed list, perhaps damaged by one piece below.
            0 => {
                let n = rng.usize(1..4);
                let uuids: Vec<String> = (0..n)
                    .map(|_| {
                        let hex = |len: usize, rng: &mut fastrand::Rng| -> String {
                            (0..len)
                                .map(|_| char::from_digit(rng.u32(0..16), 16).unwrap())
                                .collect()
                        };
                        format!(
                            "GPU-{}-{}-{}-{}-{}",
                            hex(8, rng),
                            hex(4, rng),
                            hex(4, rng),
                            hex(4, rng),
                            hex(12, rng)
                        )
                    })
                    .collect();
                text = uuids.join(",");
                if rng.bool() {
                    let at = rng.usize(0..=text.len());
                    text.insert_str(at, PIECES[rng.usize(..PIECES.len())]);
                }
            }
            // Pieces glued together.
            1 | 2 => {
                for _ in 0..rng.usize(0..8) {
                    text.push_str(PIECES[rng.usize(..PIECES.len())]);
                }
            }
            // Arbitrary characters, ASCII and not.
            _ => {
                for _ in 0..rng.usize(0..48) {
                    text.push(if rng.bool() {
                        rng.char(' '..='~')
                    } else {
                        rng.char(..)
                    });
                }
            }
        }
        text
    }

    #[test]
    fn generated_uuid_lists_parse_or_fail_naming_the_variable() {
        let mut rng = fastrand::Rng::with_seed(0x6770_7573_6c69_6365);
        let (mut parsed, mut refused) = (0, 0);
        for _ in 0..5000 {
            let list = generated_uuid_list(&mut rng);
            let vars = [
                ("CUDA_MEM_LIMIT_0", "1GiB"),
                (ENV_VGPU_UUIDS, list.as_str()),
            ];
            match cfg(&vars) {
                Ok(c) => {
                    // Only a list of whole UUIDs parses, and the limit lands on the
                    // first of them.
                    let entries: Vec<&str> = list.split(',').map(str::trim).collect();
                    assert!(entries.iter().all(|e| is_full_uuid(e)), "{list:?}");
                    assert_eq!(
                        c.memory.per_device,
                        [(DeviceSelector::Uuid(canonical_uuid(entries[0])), GIB)],
                        "{list:?}"
                    );
                    parsed += 1;
                }
                Err(e) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with(ENV_VGPU_UUIDS), "{list:?}: {msg}");
                    refused += 1;
                }
            }
            // The other readers of UUIDs take any text without panicking either.
            let _ = canonical_uuid(&list);
            let _ = DeviceSelector::parse(&list);
            let memory = format!("{list}=1GiB");
            if let Err(e) = cfg(&[(ENV_MEMORY, &memory)]) {
                assert!(e.to_string().contains(ENV_MEMORY), "{memory:?}: {e}");
            }
        }
        // Both outcomes were exercised.
        assert!(
            parsed > 200 && refused > 2000,
            "{parsed} parsed, {refused} refused"
        );
    }

    #[test]
    fn uuids_are_canonical_whatever_the_text() {
        assert_eq!(canonical_uuid(" gpu-ABCD "), "GPU-abcd");
        assert_eq!(canonical_uuid("gp"), "GP");
        // Non-ASCII text is never split inside a character.
        assert_eq!(canonical_uuid("１００"), "１００");
        assert_eq!(canonical_uuid("aé-bÉX"), "Aé-BÉx");
        assert!(is_full_uuid(UA) && is_full_uuid(&UA.to_ascii_lowercase()));
        assert!(!is_full_uuid("GPU-") && !is_full_uuid("éééé") && !is_full_uuid(""));
        // A selector needs at least one hex digit after the prefix.
        assert_eq!(DeviceSelector::parse("GPU---"), None);
        assert_eq!(
            DeviceSelector::parse("gpu-AB"),
            Some(DeviceSelector::Uuid("GPU-ab".into()))
        );
    }

    #[test]
    fn hami_names() {
        let c = cfg(&[(ENV_HAMI_MEM, "4g"), ("CUDA_DEVICE_MEMORY_LIMIT_1", "2g")]).unwrap();
        assert_eq!(c.memory.limit_for(Some(0), "GPU-x"), Some(4 * GIB));
        assert_eq!(c.memory.limit_for(Some(1), "GPU-x"), Some(2 * GIB));
    }

    #[test]
    fn own_variable_wins_over_compat_names() {
        let c = cfg(&[(ENV_MEMORY, "1GiB"), (ENV_HAMI_MEM, "4g")]).unwrap();
        assert_eq!(c.memory.all_devices, Some(GIB));
    }

    #[test]
    fn conflicting_compat_limits_fail() {
        let err = cfg(&[
            ("CUDA_MEM_LIMIT_0", "1g"),
            ("CUDA_DEVICE_MEMORY_LIMIT_0", "2g"),
        ])
        .unwrap_err();
        assert!(matches!(err, ConfigError::Conflict { .. }), "{err}");
    }

    #[test]
    fn log_levels() {
        assert_eq!(
            cfg(&[(ENV_LOG, "debug")]).unwrap().log_level,
            LogLevel::Debug
        );
        assert!(cfg(&[(ENV_LOG, "loud")]).is_err());
        assert!(cfg(&[(ENV_VGPU_LOG, "9")]).is_err());
        assert_eq!(
            cfg(&[(ENV_VGPU_LOG, "3")]).unwrap().log_level,
            LogLevel::Warn
        );
    }

    #[test]
    fn ledger_path_alone_makes_a_slice() {
        let c = cfg(&[(ENV_LEDGER, "/dev/shm/x.ledger")]).unwrap();
        assert!(c.is_sliced());
    }

    #[test]
    fn relative_paths_are_refused_naming_the_variable() {
        for (var, value) in [
            (ENV_LEDGER, "x.ledger"),
            (ENV_LEDGER, "./x.ledger"),
            (ENV_LEDGER, " ledgers/x "),
            (ENV_LEDGER_DIR, "ledgers"),
            (ENV_GPU_DIR, "gpus"),
        ] {
            let err = cfg(&[(ENV_MEMORY, "1GiB"), (var, value)])
                .expect_err(value)
                .to_string();
            assert!(
                err.starts_with(var) && err.contains("relative path"),
                "{var}={value:?}: {err}"
            );
        }
        // The ledger folder does not matter when the ledger is given (`gpuslice run`
        // passes the folder variable on as it found it).
        let c = cfg(&[
            (ENV_LEDGER, "/dev/shm/gs/x.ledger"),
            (ENV_LEDGER_DIR, "ledgers"),
        ])
        .unwrap();
        assert_eq!(c.ledger_path.as_deref(), Some("/dev/shm/gs/x.ledger"));
        // Absolute paths, and empty values (unset), are taken.
        let c = cfg(&[
            (ENV_LEDGER_DIR, "/tmp/l"),
            (ENV_GPU_DIR, " "),
            (ENV_LEDGER, ""),
        ])
        .unwrap();
        assert_eq!(
            (c.ledger_dir.as_deref(), c.gpu_dir.as_str()),
            (Some("/tmp/l"), DEFAULT_GPU_DIR)
        );
        assert_eq!(c.ledger_path, None);
    }

    #[test]
    fn the_smi_ioctl_override_takes_three_words() {
        for (value, want) in [
            ("off", Some(SmiIoctl::Off)),
            (" host-pids ", Some(SmiIoctl::HostPids)),
            (
                "translated-broken-memory",
                Some(SmiIoctl::TranslatedBrokenMemory),
            ),
            ("", None),
        ] {
            assert_eq!(cfg(&[(ENV_SMI_IOCTL, value)]).unwrap().smi_ioctl, want);
        }
        assert_eq!(cfg(&[]).unwrap().smi_ioctl, None);
        for value in ["anything", "OFF", "on", "host_pids", "0"] {
            let err = cfg(&[(ENV_SMI_IOCTL, value)]).expect_err(value).to_string();
            assert!(
                err.starts_with(ENV_SMI_IOCTL) && err.contains("host-pids"),
                "{err}"
            );
        }
    }

    #[test]
    fn every_limit_is_in_the_derived_ledger_name() {
        let name = |vars: &[(&str, &str)]| cfg(vars).unwrap().derived_ledger_file_name();
        let slices: &[&[(&str, &str)]] = &[
            &[(compute::ENV_COMPUTE, "10")],
            &[(compute::ENV_COMPUTE, "20")],
            &[
                (compute::ENV_COMPUTE, "10"),
                (compute::ENV_COMPUTE_BURST, "50"),
            ],
            &[
                (compute::ENV_COMPUTE, "10"),
                (compute::ENV_COMPUTE_BURST, "60"),
            ],
            &[(ENV_MEMORY, "4GiB")],
            &[(ENV_MEMORY, "8GiB")],
            &[(ENV_MEMORY, "4GiB"), (compute::ENV_COMPUTE, "10")],
            &[(ENV_MEMORY, "0=4GiB")],
            &[(ENV_MEMORY, "1=4GiB")],
            &[(ENV_MEMORY, "0=8GiB")],
            &[(ENV_MEMORY, "GPU-aaaa=4GiB")],
            &[(ENV_MEMORY, "4GiB,0=8GiB")],
            &[(ENV_MEMORY, "4GiB"), (ENV_SLICE_NAME, "a")],
            &[(ENV_MEMORY, "4GiB"), (ENV_SLICE_NAME, "b")],
            &[(ENV_LEDGER_DIR, "/tmp/x")],
        ];
        let names: Vec<String> = slices.iter().map(|v| name(v)).collect();
        for (i, a) in names.iter().enumerate() {
            assert!(a.starts_with("env-") && a.ends_with(".ledger"), "{a}");
            for (j, b) in names.iter().enumerate().skip(i + 1) {
                assert_ne!(a, b, "{:?} and {:?}", slices[i], slices[j]);
            }
        }
        // The same slice, however it is spelled, has one name.
        assert_eq!(
            name(&[(ENV_MEMORY, "0=4GiB,1=8GiB")]),
            name(&[(ENV_MEMORY, "1=8g, 0=4096MiB")])
        );
        assert_eq!(name(&[(ENV_MEMORY, "4GiB")]), name(&[(ENV_HAMI_MEM, "4g")]));
        assert_eq!(
            name(&[
                (compute::ENV_COMPUTE, "30"),
                (compute::ENV_COMPUTE_BURST, "30")
            ]),
            name(&[(compute::ENV_COMPUTE, "30%")])
        );
        // Settings of the process rather than of the slice do not change it.
        assert_eq!(
            name(&[(ENV_MEMORY, "4GiB")]),
            name(&[
                (ENV_MEMORY, "4GiB"),
                (ENV_LOG, "debug"),
                (ENV_SMI_IOCTL, "off")
            ])
        );
    }

    /// A scratch file path of this test process.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gpuslice-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn owned(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn without_a_pinned_file_the_environment_is_the_configuration() {
        let env = owned(&[(ENV_MEMORY, "2GiB")]);
        let c = SliceConfig::from_env_or_pinned(&env, &scratch("absent.env")).unwrap();
        assert_eq!(c.memory.all_devices, Some(2 << 30));
        assert_eq!(c.pinned_file, None);
    }

    #[test]
    fn a_pinned_file_wins_over_whatever_the_environment_says() {
        let path = scratch("pinned.env");
        std::fs::write(
            &path,
            "# written by gpuslice cdi generate\nGPUSLICE_SLICE=s1\nGPUSLICE_MEMORY=4GiB\n\nGPUSLICE_COMPUTE=30\n",
        )
        .unwrap();
        // Variables removed, raised, or pointed elsewhere: all ignored.
        for env in [
            owned(&[]),
            owned(&[(ENV_MEMORY, "1000GiB"), (compute::ENV_COMPUTE, "100")]),
            owned(&[(ENV_HAMI_MEM, "1000g"), (ENV_LEDGER, "/tmp/mine")]),
        ] {
            let c = SliceConfig::from_env_or_pinned(&env, &path).unwrap();
            assert_eq!(c.memory.all_devices, Some(4 << 30), "{env:?}");
            assert_eq!(c.compute.shares.map(|s| s.hard), Some(30));
            assert_eq!(c.ledger_path, None);
            assert_eq!(c.slice_name.as_deref(), Some("s1"));
            assert_eq!(c.pinned_file.as_deref(), Some(path.to_str().unwrap()));
        }
        // The log level and the ioctl override may still come from the environment.
        let c = SliceConfig::from_env_or_pinned(
            &owned(&[(ENV_LOG, "debug"), (ENV_SMI_IOCTL, "off")]),
            &path,
        )
        .unwrap();
        assert_eq!(c.log_level, LogLevel::Debug);
        assert_eq!(c.smi_ioctl, Some(SmiIoctl::Off));
        // ... and are checked like the file's own variables.
        let err = SliceConfig::from_env_or_pinned(&owned(&[(ENV_SMI_IOCTL, "maybe")]), &path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_SMI_IOCTL), "{err}");
    }

    #[test]
    fn a_pinned_file_that_is_wrong_fails_closed_naming_the_file() {
        let cases = [
            ("GPUSLICE_MEMORY 4GiB\n", "line 1: expected NAME=VALUE"),
            ("GPUSLICE_MEMORY=4GiB\nlower=1\n", "line 2: a variable name"),
            ("GPUSLICE_MEMORY=4GiB\nGPUSLICE_MEMORY=8GiB\n", "set twice"),
            ("GPUSLICE_MEMORY=four\n", "GPUSLICE_MEMORY=\"four\""),
            (
                "CUDA_MEM_LIMIT_0=1GiB\nGPU_DEVICES_UUID=NaN\n",
                "GPU_DEVICES_UUID: entry 0 (\"NaN\")",
            ),
            (
                "GPUSLICE_MEMORY=1GiB\nGPUSLICE_LEDGER=slice.ledger\n",
                "GPUSLICE_LEDGER=\"slice.ledger\" is a relative path",
            ),
            (
                "GPUSLICE_MEMORY=1GiB\nGPUSLICE_SMI_IOCTL=yes\n",
                "GPUSLICE_SMI_IOCTL=\"yes\"",
            ),
            (
                "GPUSLICE_COMPUTE=50\nGPUSLICE_COMPUTE_BURST=20\n",
                "GPUSLICE_COMPUTE_BURST",
            ),
            ("# nothing\n", "names no slice"),
        ];
        for (i, (text, want)) in cases.iter().enumerate() {
            let path = scratch(&format!("bad{i}.env"));
            std::fs::write(&path, text).unwrap();
            let err = SliceConfig::from_env_or_pinned(&owned(&[(ENV_MEMORY, "1GiB")]), &path)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(path.to_str().unwrap()) && err.contains(want),
                "{text:?}: {err}"
            );
        }
        // Present but unreadable (a folder in its place).
        let dir = scratch("folder.env");
        std::fs::create_dir_all(&dir).unwrap();
        let err = SliceConfig::from_env_or_pinned(&[], &dir).unwrap_err();
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }
}
