//! The listing of a host's slices: every slice's ledger, read into plain values, with
//! where the slice came from ([`Origin`]): `gpuslice run` (the per-user ledger folders),
//! `gpuslice cdi generate` or the Kubernetes node plugin (the state folder's
//! `<state-dir>/slices/<name>/ledger`, told apart by the name: the device plugin's slices
//! are `GPU-<uuid>_<profile>-<n>`, DRA's `<claim-uid>_<hex>`). `gpuslice status` renders
//! it; the agent's `/metrics` exports it. A file that cannot be read as a ledger becomes a
//! [`SliceStatus`] with its error; the other slices are still listed. A ledger is a file
//! its slice's processes can write, and cut short while it is read: under the ledger's
//! truncation guard (`gpuslice_ledger::guard`, installed by the process) that voids the
//! read, and the slice carries the error. A folder's ledgers are read trusting its
//! owner's files (besides root's and the caller's), with the checks of
//! `gpuslice_ledger::folder` otherwise.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gpuslice_ledger::folder::user_ledger_dirs;
use gpuslice_ledger::{Ledger, Liveness, Owners};
use serde::Serialize;

/// What can go wrong with the ledger folder itself.
#[derive(Debug, thiserror::Error)]
pub enum ListingError {
    /// The folder exists but cannot be listed.
    #[error("cannot list the ledger folder {path}: {source}")]
    ReadDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The slices found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StatusReport {
    /// The slices, by file name.
    pub slices: Vec<SliceStatus>,
    /// Places that could not be read (the state folder as a user other than root).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// Where a slice came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// `gpuslice run` (a ledger folder of a user).
    Run,
    /// `gpuslice cdi generate` (the state folder).
    Cdi,
    /// The node plugin's device plugin: `GPU-<uuid>_<profile>-<n>`.
    DevicePlugin,
    /// The node plugin's DRA driver: `<claim-uid>_<hex>`.
    Dra,
}

impl Origin {
    /// The name in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Run => "run",
            Self::Cdi => "cdi",
            Self::DevicePlugin => "device-plugin",
            Self::Dra => "dra",
        }
    }

    /// The origin of the state folder's slice `name`: the node plugin names its slices
    /// `GPU-<uuid>_<profile>-<n>` (device plugin) and `<claim-uid>_<hex>` (DRA); any
    /// other name is one of `gpuslice cdi generate`.
    pub fn of_state_slice(name: &str) -> Self {
        let is_uuid = |text: &str| {
            let groups: Vec<&str> = text.split('-').collect();
            groups.len() == 5
                && groups
                    .iter()
                    .zip([8, 4, 4, 4, 12])
                    .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
        };
        match name.split_once('_') {
            Some((gpu, profile))
                if gpu.strip_prefix("GPU-").is_some_and(is_uuid) && !profile.is_empty() =>
            {
                Self::DevicePlugin
            }
            Some((claim, hex))
                if is_uuid(claim)
                    && !hex.is_empty()
                    && hex.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Self::Dra
            }
            _ => Self::Cdi,
        }
    }
}

/// One ledger file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SliceStatus {
    /// The slice's name (the file's stem when the file cannot be read).
    pub name: String,
    /// Where it came from.
    pub origin: Origin,
    /// The ledger file.
    pub path: String,
    /// When the ledger was created, seconds since the epoch.
    pub created_unix: Option<u64>,
    /// The limit of every device the slice uses that has no entry yet (`None` when the
    /// slice limits only the devices listed).
    pub default_limit_bytes: Option<u64>,
    /// The slice's compute limit in percent of each GPU, if it has one.
    pub compute_percent: Option<u32>,
    /// Its soft (burst) compute limit, if any.
    pub compute_burst_percent: Option<u32>,
    /// The devices the slice limits so far.
    pub devices: Vec<DeviceStatus>,
    /// The processes registered in the slice.
    pub processes: Vec<ProcessStatus>,
    /// Why the file could not be read, if it could not.
    pub error: Option<String>,
    /// What kind of failure that was (`gpuslice_ledger::LedgerError::kind`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<&'static str>,
}

/// A device of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceStatus {
    /// The GPU's UUID.
    pub uuid: String,
    /// The slice's limit on it.
    pub limit_bytes: u64,
    /// What the slice's processes have charged on it.
    pub used_bytes: u64,
    /// GPU busy time the slice's processes have used on it (compute slices), in ns.
    pub busy_ns: u64,
    /// Allocations refused on it for want of room, since the ledger was made.
    pub refused_allocations: u64,
    /// Time its processes spent held back by the compute gate, in ns.
    pub throttled_ns: u64,
}

/// Whether a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Alive {
    /// It runs.
    Alive,
    /// It is gone (its entry waits to be swept).
    Dead,
    /// It lives in another PID namespace.
    Unknown,
}

impl From<Liveness> for Alive {
    fn from(l: Liveness) -> Self {
        match l {
            Liveness::Alive => Self::Alive,
            Liveness::Dead => Self::Dead,
            Liveness::Unknown => Self::Unknown,
        }
    }
}

impl Alive {
    /// The name in tables and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alive => "alive",
            Self::Dead => "dead",
            Self::Unknown => "unknown",
        }
    }
}

/// A process of a slice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessStatus {
    /// Its PID, in its own PID namespace.
    pub pid: u32,
    /// Whether it runs.
    pub alive: Alive,
    /// What it has charged, on the devices where that is not zero.
    pub devices: Vec<ProcessDevice>,
}

/// A process's charge on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessDevice {
    /// The GPU's UUID.
    pub uuid: String,
    /// Bytes charged.
    pub charged_bytes: u64,
    /// Of those, context and module memory.
    pub context_bytes: u64,
}

/// Reads one ledger file, trusting this user's and root's files.
pub fn slice_status(path: &Path, sweep: bool) -> SliceStatus {
    slice_status_as(path, Owners::Mine, sweep)
}

/// Reads one ledger file, trusting the files of `owners`.
pub fn slice_status_as(path: &Path, owners: Owners, sweep: bool) -> SliceStatus {
    let status = SliceStatus {
        name: path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
        origin: Origin::Run,
        path: path.display().to_string(),
        created_unix: None,
        default_limit_bytes: None,
        compute_percent: None,
        compute_burst_percent: None,
        devices: Vec::new(),
        processes: Vec::new(),
        error: None,
        error_kind: None,
    };
    let ledger = match Ledger::open_as(path, owners) {
        Ok(l) => l,
        Err(e) => {
            return SliceStatus {
                error: Some(e.to_string()),
                error_kind: Some(e.kind()),
                ..status
            };
        }
    };
    let read = read_ledger(&ledger, sweep, status.clone());
    match ledger.intact() {
        Ok(()) => read,
        // Cut short while it was read: what was read is void.
        Err(e) => SliceStatus {
            error: Some(e.to_string()),
            error_kind: Some(e.kind()),
            ..status
        },
    }
}

/// What an open ledger holds, on top of `status` (name and path).
fn read_ledger(ledger: &Ledger, sweep: bool, mut status: SliceStatus) -> SliceStatus {
    if sweep {
        ledger.sweep_dead();
    }
    let devices = ledger.devices();
    let uuid_of = |slot: usize| {
        devices
            .iter()
            .find(|d| d.slot.index() == slot)
            .map(|d| d.uuid.clone())
            .unwrap_or_else(|| format!("(device entry {slot})"))
    };
    status.name = ledger.name();
    status.created_unix = Some(ledger.created_unix());
    status.default_limit_bytes = ledger.default_limit();
    if let Some((hard, burst)) = ledger.compute_limits() {
        status.compute_percent = Some(hard);
        status.compute_burst_percent = burst;
    }
    status.processes = ledger
        .processes()
        .into_iter()
        .map(|p| ProcessStatus {
            pid: p.pid,
            alive: p.liveness.into(),
            devices: p
                .charges
                .iter()
                .enumerate()
                .filter(|&(_, &charged)| charged != 0)
                .map(|(slot, &charged)| ProcessDevice {
                    uuid: uuid_of(slot),
                    charged_bytes: charged,
                    context_bytes: p.context.get(slot).copied().unwrap_or(0),
                })
                .collect(),
        })
        .collect();
    status.devices = devices
        .iter()
        .map(|d| DeviceStatus {
            uuid: d.uuid.clone(),
            limit_bytes: d.limit,
            used_bytes: d.used,
            busy_ns: ledger.compute_busy_ns(d.slot),
            refused_allocations: ledger.refused_allocations(d.slot),
            throttled_ns: ledger.throttled_ns(d.slot),
        })
        .collect();
    status
}

/// Reads every `*.ledger` file of `dir`, sorted by file name, trusting the files of the
/// folder's owner. A folder that does not exist has no slices.
pub fn collect(dir: &Path, sweep: bool) -> Result<StatusReport, ListingError> {
    let owners = match std::fs::symlink_metadata(dir) {
        Ok(meta) => Owners::AlsoUser(meta.uid()),
        Err(_) => Owners::Mine,
    };
    collect_as(dir, owners, sweep)
}

/// Reads every `*.ledger` file of `dir`, sorted by file name, trusting the files of
/// `owners`. A folder that does not exist has no slices.
pub fn collect_as(dir: &Path, owners: Owners, sweep: bool) -> Result<StatusReport, ListingError> {
    let read_dir_error = |source| ListingError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StatusReport::default());
        }
        Err(e) => return Err(read_dir_error(e)),
    };
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.map_err(read_dir_error)?.path();
        let is_ledger = path.extension().is_some_and(|e| e == "ledger")
            && path
                .file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'));
        if is_ledger {
            paths.push(path);
        }
    }
    paths.sort();
    Ok(StatusReport {
        slices: paths
            .iter()
            .map(|p| slice_status_as(p, owners, sweep))
            .collect(),
        notes: Vec::new(),
    })
}

/// The slices of the state folder (`<state_dir>/slices/<name>/ledger`: those of `gpuslice
/// cdi generate` and of the node plugin), by name, each with its [`Origin`]. Its files
/// are trusted as root's and the folder owner's. A state folder that does not exist has
/// no slices; one that cannot be read (it is root's, mode 0700) gives a note instead.
pub fn collect_state_dir(state_dir: &Path, sweep: bool) -> StatusReport {
    let dir = crate::layout::slices_dir(state_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return StatusReport::default(),
        Err(e) => {
            return StatusReport {
                slices: Vec::new(),
                notes: vec![format!(
                    "the CDI and Kubernetes slices in {} cannot be listed ({e}); run as root to see them",
                    dir.display()
                )],
            };
        }
    };
    let owners = match std::fs::symlink_metadata(&dir) {
        Ok(meta) => Owners::AlsoUser(meta.uid()),
        Err(_) => Owners::Mine,
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let slices = names
        .iter()
        .map(|name| {
            let path = dir.join(name).join(crate::layout::LEDGER_FILE);
            let mut status = slice_status_as(&path, owners, sweep);
            if status.error.is_some() {
                status.name.clone_from(name);
            }
            status.origin = Origin::of_state_slice(name);
            status
        })
        .collect();
    StatusReport {
        slices,
        notes: Vec::new(),
    }
}

impl StatusReport {
    /// This report followed by `other`'s slices and notes.
    pub fn merge(mut self, other: Self) -> Self {
        self.slices.extend(other.slices);
        self.notes.extend(other.notes);
        self
    }
}

/// The ledgers of every user's folder in `base` (`/dev/shm`): what root sees by default.
/// Each folder's files are trusted as those of the user it is named after.
pub fn collect_every_user(base: &Path, sweep: bool) -> Result<StatusReport, ListingError> {
    let dirs = match user_ledger_dirs(base) {
        Ok(dirs) => dirs,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(ListingError::ReadDir {
                path: base.to_path_buf(),
                source,
            });
        }
    };
    let mut report = StatusReport::default();
    for (uid, dir) in dirs {
        report = report.merge(collect_as(&dir, Owners::AlsoUser(uid), sweep)?);
    }
    Ok(report)
}
