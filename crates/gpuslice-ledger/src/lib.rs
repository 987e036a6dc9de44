//! The slice ledger: one shared-memory file per slice that every process of the slice
//! maps, and that holds each device's limit and each process's charges.
//!
//! Design, in short:
//! - **Per-process charges are the only truth.** A device's usage is the sum of the
//!   charges of the process entries that are in use. There is no global counter that a
//!   dying process could leave wrong.
//! - **Reservations are optimistic and atomic.** A process adds its request to its own
//!   entry, then sums the device again; if the sum is over the limit it takes its request
//!   back. With sequentially consistent atomics, of any two racing reservations at least
//!   one sees the other, so two processes can never both pass a check that only one fits.
//!   No lock is taken anywhere, so a dead or stopped process cannot block the others.
//! - **Dead processes are swept.** An entry whose process is gone (checked by PID and
//!   start time, so a reused PID is not mistaken for the owner) is zeroed by whoever
//!   notices first. Charges can therefore never leak for good.
//! - **Corrupt or foreign files are refused** with an error that names the file, and so
//!   is any state word that is none of the states the protocol writes: every loop over
//!   a shared word ends in bounded time, whatever the file holds (a process that can
//!   write the file can break its own slice, never hang it).
//! - **Only trusted files are opened** (see [`folder`]): each user's ledgers live in a
//!   folder of their own, and a ledger or folder that another user could have planted
//!   or could replace is refused.
//! - **Host-side tools survive a truncated file.** A host-side tool that called
//!   [`guard::install`] has every ledger it maps guarded: a file cut short under the
//!   mapping reads as empty instead of killing the tool with `SIGBUS`, and
//!   [`Ledger::intact`] says so (see [`guard`]).

pub mod folder;
pub mod guard;
mod layout;
mod proc_info;

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

pub use folder::{Distrust, Owners, Place, default_ledger_dir, user_ledger_dir};
use layout::{DeviceEntry, Header, ProcessEntry};
pub use layout::{FORMAT_VERSION, MAX_DEVICES, MAX_PROCESSES};
pub use proc_info::{ProcessIdentity, current_identity, process_is_alive};

/// What can go wrong with a ledger.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The file could not be created, opened or mapped.
    #[error("ledger {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file or its folder is not one this process may trust (see [`folder`]).
    #[error("{place} {path} {problem}")]
    Untrusted {
        /// The file or folder.
        path: PathBuf,
        /// Which of the two.
        place: Place,
        /// What is wrong with it, and how to fix it.
        problem: Distrust,
    },
    /// The file is not a gpuslice ledger.
    #[error(
        "ledger {path} is not a gpuslice ledger (it does not start with the gpuslice magic); remove it or point GPUSLICE_LEDGER elsewhere"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// The file was written by another format version.
    #[error(
        "ledger {path} has format version {found}, this gpuslice understands version {expected}; stop the slice's processes and remove the file"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version we understand.
        expected: u32,
    },
    /// The file is damaged.
    #[error("ledger {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The process's configuration disagrees with the ledger.
    #[error(
        "ledger {path} gives {uuid} a limit of {ledger_limit} bytes, but this process was configured with {config_limit} bytes"
    )]
    LimitMismatch {
        /// The file.
        path: PathBuf,
        /// The device.
        uuid: String,
        /// The ledger's limit.
        ledger_limit: u64,
        /// The process's limit.
        config_limit: u64,
    },
    /// The process's compute limits disagree with the ledger's.
    #[error(
        "ledger {path} gives the slice a compute limit of {ledger}, but this process was configured with {config}"
    )]
    ComputeMismatch {
        /// The file.
        path: PathBuf,
        /// The ledger's limits.
        ledger: String,
        /// The process's limits.
        config: String,
    },
    /// The file was cut short while this process had it mapped (only seen by processes
    /// that installed the [`guard`]).
    #[error(
        "ledger {path} was truncated while this process read it (a process that can write the file cut it short); what was read from it is void"
    )]
    Truncated {
        /// The file.
        path: PathBuf,
    },
    /// The process guards as many ledger mappings as it can (see [`guard`]).
    #[error(
        "ledger {path}: this process already guards {max} ledger mappings against truncation, the most it can"
    )]
    Unguarded {
        /// The file.
        path: PathBuf,
        /// The capacity.
        max: usize,
    },
    /// No room for another device or process.
    #[error("ledger {path} has no free {what} entry (at most {max})")]
    Full {
        /// The file.
        path: PathBuf,
        /// Device or process.
        what: &'static str,
        /// The capacity.
        max: usize,
    },
}

impl LedgerError {
    /// A short, stable name of what went wrong, for machines (the agent's metrics):
    /// `io`, `untrusted`, `foreign`, `version`, `corrupt`, `limit-mismatch`,
    /// `compute-mismatch`, `truncated`, `unguarded` or `full`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Untrusted { .. } => "untrusted",
            Self::Foreign { .. } => "foreign",
            Self::Version { .. } => "version",
            Self::Corrupt { .. } => "corrupt",
            Self::LimitMismatch { .. } => "limit-mismatch",
            Self::ComputeMismatch { .. } => "compute-mismatch",
            Self::Truncated { .. } => "truncated",
            Self::Unguarded { .. } => "unguarded",
            Self::Full { .. } => "full",
        }
    }
}

/// A process entry of a ledger: what [`Ledger::register`] hands out and the charging
/// methods take. Only the ledger makes one, so a process entry cannot be mistaken for a
/// device entry or an arbitrary number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcessSlot(usize);

impl ProcessSlot {
    /// The entry's index in the ledger's process table (below [`MAX_PROCESSES`]), for
    /// display and for a caller's own per-process arrays.
    pub fn index(self) -> usize {
        self.0
    }
}

/// A device entry of a ledger: what [`Ledger::device_slot`] finds or adds and the
/// per-device methods take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceSlot(usize);

impl DeviceSlot {
    /// The device entry at `index`, for a caller that kept an entry's [`index`] (a cache)
    /// or knows the order of the spec the ledger was made from (its n-th device has
    /// entry n). The ledger's methods panic on an index of [`MAX_DEVICES`] or more.
    ///
    /// [`index`]: DeviceSlot::index
    pub const fn new(index: usize) -> Self {
        Self(index)
    }

    /// The entry's index in the ledger's device table (below [`MAX_DEVICES`]), for
    /// display, for a caller's own per-device arrays, and for indexing
    /// [`ProcessInfo::charges`] and [`ProcessInfo::context`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// A refused reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// The device's usage when refused.
    pub used: u64,
    /// The device's limit.
    pub limit: u64,
    /// What was asked for.
    pub requested: u64,
}

/// A device as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device entry in this ledger.
    pub slot: DeviceSlot,
    /// The GPU's UUID.
    pub uuid: String,
    /// Limit in bytes.
    pub limit: u64,
    /// Sum of all charges.
    pub used: u64,
}

/// Liveness of a process entry, as seen from the reader's PID namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The process runs.
    Alive,
    /// The process is gone; its charges are waiting to be swept.
    Dead,
    /// The process lives in another PID namespace, so this reader cannot tell.
    Unknown,
}

/// A process entry as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// The process entry.
    pub slot: ProcessSlot,
    /// PID, in the process's own PID namespace.
    pub pid: u32,
    /// Inode of that PID namespace.
    pub pid_ns: u64,
    /// Its start time (clock ticks since boot, as its own `/proc` showed it).
    pub start_time: u64,
    /// Whether it still runs.
    pub liveness: Liveness,
    /// Bytes charged per device entry (index: [`DeviceSlot::index`]).
    pub charges: Vec<u64>,
    /// Of those, bytes of context and module memory.
    pub context: Vec<u64>,
}

/// The description a ledger is created from.
#[derive(Debug, Clone, Default)]
pub struct LedgerSpec {
    /// The slice's name.
    pub name: String,
    /// Limit for devices that are not listed, if any.
    pub default_limit: Option<u64>,
    /// Devices and their limits.
    pub devices: Vec<(String, u64)>,
    /// Compute limits in percent: hard, and soft (burst) if any.
    pub compute: Option<(u32, Option<u32>)>,
}

const COMPUTE_SET: u64 = 1 << 63;

/// Packs compute limits into the header word: a flag, the hard limit and the burst.
pub fn pack_compute(hard: u32, burst: Option<u32>) -> u64 {
    COMPUTE_SET | u64::from(hard & 0xffff) | (u64::from(burst.unwrap_or(0) & 0xffff) << 16)
}

fn unpack_compute(word: u64) -> Option<(u32, Option<u32>)> {
    if word & COMPUTE_SET == 0 {
        return None;
    }
    let hard = (word & 0xffff) as u32;
    let burst = ((word >> 16) & 0xffff) as u32;
    Some((hard, (burst != 0).then_some(burst)))
}

fn describe_compute(limits: Option<(u32, Option<u32>)>) -> String {
    match limits {
        None => "none".into(),
        Some((hard, None)) => format!("{hard}%"),
        Some((hard, Some(burst))) => format!("{hard}% (burst {burst}%)"),
    }
}

/// An open ledger.
#[derive(Debug)]
pub struct Ledger {
    /// The mapping's place in the truncation guard, when the process installed it.
    /// Declared before `map` so that it is unregistered before the mapping goes.
    guard: Option<guard::Registration>,
    map: memmap2::MmapMut,
    path: PathBuf,
    /// This process's own cap per device entry: the limit it agreed to in
    /// [`Ledger::device_slot`] (`u64::MAX`: none). The limit stored in the file can be
    /// rewritten by any process that can write the file; [`Ledger::limit`] never answers
    /// more than the cap, so raising it there frees nobody who already agreed to less.
    caps: [AtomicU64; MAX_DEVICES],
}

// SAFETY: the mapping is only accessed through atomics (see `layout`), so sharing
// references between threads is as safe as sharing the atomics themselves.
unsafe impl Sync for Ledger {}
// SAFETY: the mapping (a shared file mapping, `MmapMut`) is not tied to the thread that
// created it, and every access to it goes through atomics, so moving the ledger to
// another thread cannot race with anything.
unsafe impl Send for Ledger {}

const OWNER_FREE: u64 = 0;
const OWNER_REGISTERING: u64 = 1 << 62;
const OWNER_ACTIVE: u64 = 2 << 62;
const OWNER_RECLAIMING: u64 = 3 << 62;
const OWNER_STATE_MASK: u64 = 3 << 62;
const DEVICE_FREE: u64 = 0;
const DEVICE_CLAIMING: u64 = 1 << 62;
const DEVICE_READY: u64 = 2 << 62;

/// How long [`Ledger::device_slot`] waits for another process to finish writing a
/// device entry (a few stores) before it calls the entry broken.
pub const CLAIM_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn owner_pid(owner: u64) -> u32 {
    (owner & 0xffff_ffff) as u32
}

/// The states of a device entry's state word that the protocol writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeviceState {
    /// No device yet.
    Free,
    /// Being written by this PID.
    Claiming(u32),
    /// Complete.
    Ready,
}

impl DeviceState {
    /// The state a word holds, `None` when it is none of them (a damaged file).
    fn of(word: u64) -> Option<Self> {
        match word {
            DEVICE_FREE => Some(Self::Free),
            DEVICE_READY => Some(Self::Ready),
            _ if word & OWNER_STATE_MASK == DEVICE_CLAIMING => {
                let pid = word & !OWNER_STATE_MASK;
                u32::try_from(pid)
                    .ok()
                    .filter(|&pid| pid != 0)
                    .map(Self::Claiming)
            }
            _ => None,
        }
    }
}

impl Ledger {
    /// Opens the ledger at `path`, creating it from `spec` if it does not exist yet.
    /// Creation is atomic: the file appears complete or not at all, with mode 0600.
    /// The ledger and its folder must be this user's or root's ([`Owners::Mine`]); the
    /// folder is created (0700) only when it is this user's default folder.
    pub fn create_or_open(path: &Path, spec: &LedgerSpec) -> Result<Self, LedgerError> {
        Self::create_or_open_as(path, spec, Owners::Mine)
    }

    /// [`Ledger::create_or_open`], accepting the files and folders of `owners`.
    pub fn create_or_open_as(
        path: &Path,
        spec: &LedgerSpec,
        owners: Owners,
    ) -> Result<Self, LedgerError> {
        let (folder, name) = folder::Folder::of(path, owners, true)?;
        match folder.open_ledger(&name, path) {
            Ok(file) => return Self::from_file(file, path),
            Err(LedgerError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if spec.devices.len() > MAX_DEVICES {
            return Err(LedgerError::Full {
                path: path.to_path_buf(),
                what: "device",
                max: MAX_DEVICES,
            });
        }
        let io = |what, source| LedgerError::Io {
            path: path.to_path_buf(),
            what,
            source,
        };
        let image = layout::initial_image(spec);
        let tmp = folder::temporary_name(&name);
        let _ = folder.remove(&tmp); // Left by an earlier process with our PID.
        let result = (|| {
            let mut file = folder
                .create_new(&tmp)
                .map_err(|e| io("creating a temporary file", e.into()))?;
            file.write_all(&image).map_err(|e| io("writing", e))?;
            drop(file);
            match folder.link(&tmp, &name) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                Err(e) => Err(io("publishing", e.into())),
            }
        })();
        let _ = folder.remove(&tmp);
        result?;
        let file = folder.open_ledger(&name, path)?;
        Self::from_file(file, path)
    }

    /// Opens an existing ledger and checks that it is one, of this version, undamaged,
    /// and that it and its folder are this user's or root's ([`Owners::Mine`]).
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        Self::open_as(path, Owners::Mine)
    }

    /// [`Ledger::open`], accepting the files and folders of `owners`.
    pub fn open_as(path: &Path, owners: Owners) -> Result<Self, LedgerError> {
        let file = Self::open_file(path, owners)?;
        Self::from_file(file, path)
    }

    /// Opens the file of the ledger at `path` for reading and writing after the checks
    /// of [`Ledger::open_as`] on it and its folder, without reading it (for a caller
    /// that locks it). A missing file or folder is an I/O error of kind `NotFound`.
    pub fn open_file(path: &Path, owners: Owners) -> Result<File, LedgerError> {
        let (folder, name) = folder::Folder::of(path, owners, false)?;
        folder.open_ledger(&name, path)
    }

    fn from_file(file: File, path: &Path) -> Result<Self, LedgerError> {
        let len = file
            .metadata()
            .map_err(|e| LedgerError::Io {
                path: path.to_path_buf(),
                what: "reading its size",
                source: e,
            })?
            .len();
        if len < 8 {
            return Err(LedgerError::Foreign {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: the file is a regular file we opened read-write; all access to the
        // mapping goes through atomics, which tolerate concurrent writers in other
        // processes. A file cut short later makes reads past its end raise SIGBUS: in a
        // process with the guard installed the pages are replaced by zeros (registered
        // just below, before the first read); elsewhere the process dies, which only a
        // process that can write the file can cause (see `guard`).
        let map =
            unsafe { memmap2::MmapOptions::new().map_mut(&file) }.map_err(|e| LedgerError::Io {
                path: path.to_path_buf(),
                what: "mapping",
                source: e,
            })?;
        let guard = match guard::register(map.as_ptr(), map.len()) {
            guard::Registered::Unguarded => None,
            guard::Registered::Guarded(registration) => Some(registration),
            guard::Registered::Full => {
                return Err(LedgerError::Unguarded {
                    path: path.to_path_buf(),
                    max: guard::CAPACITY,
                });
            }
        };
        let valid = layout::validate(&map, path);
        if guard.as_ref().is_some_and(|g| g.truncated()) {
            return Err(LedgerError::Truncated {
                path: path.to_path_buf(),
            });
        }
        valid?;
        Ok(Self {
            guard,
            map,
            path: path.to_path_buf(),
            caps: [const { AtomicU64::new(u64::MAX) }; MAX_DEVICES],
        })
    }

    /// The file this ledger lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether everything read from this ledger so far came from the file: `Err` once
    /// the file was cut short under the mapping (the mapping reads as zeros from then
    /// on). Only a process that installed the [`guard`] survives that to ask; it checks
    /// after reading, and discards what it read on `Err`.
    pub fn intact(&self) -> Result<(), LedgerError> {
        if self.guard.as_ref().is_some_and(|g| g.truncated()) {
            return Err(LedgerError::Truncated {
                path: self.path.clone(),
            });
        }
        Ok(())
    }

    fn header(&self) -> &Header {
        // SAFETY: `validate` checked the size and alignment (mmap is page aligned) and
        // `Header` consists of plain integers and atomics, valid for any bit pattern.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn device(&self, slot: usize) -> &DeviceEntry {
        assert!(slot < MAX_DEVICES);
        // SAFETY: `validate` checked that the file holds MAX_DEVICES entries at this
        // offset, suitably aligned, and the entry type is valid for any bit pattern.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(layout::device_offset(slot))
                .cast::<DeviceEntry>()
        }
    }

    fn process(&self, slot: usize) -> &ProcessEntry {
        assert!(slot < MAX_PROCESSES);
        // SAFETY: as for `device`, for the process table.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(layout::process_offset(slot))
                .cast::<ProcessEntry>()
        }
    }

    /// The slice's name.
    pub fn name(&self) -> String {
        layout::read_str(&self.header().name)
    }

    /// Limit for devices that are not listed.
    pub fn default_limit(&self) -> Option<u64> {
        let v = self.header().default_limit.load(Relaxed);
        (v != 0).then_some(v)
    }

    /// When the ledger was created (seconds since the epoch).
    pub fn created_unix(&self) -> u64 {
        self.header().created_unix.load(Relaxed)
    }

    /// Finds the device entry for `uuid`, adding one if the slice limits that device.
    ///
    /// `config_limit` is the limit this process was configured with, if any; it must
    /// agree with the ledger. Returns `None` when the slice does not limit this device.
    /// Returns in bounded time whatever the file holds: a state word that is none of the
    /// protocol's, or an entry that stays half-written for [`CLAIM_WAIT`], is an error
    /// naming the file.
    pub fn device_slot(
        &self,
        uuid: &str,
        config_limit: Option<u64>,
    ) -> Result<Option<DeviceSlot>, LedgerError> {
        let me = std::process::id();
        let deadline = std::time::Instant::now() + CLAIM_WAIT;
        let corrupt = |reason: String| LedgerError::Corrupt {
            path: self.path.clone(),
            reason,
        };
        let mut slot = 0;
        while slot < MAX_DEVICES {
            let entry = self.device(slot);
            let word = entry.state.load(Acquire);
            let claimed = match DeviceState::of(word) {
                None => {
                    return Err(corrupt(format!(
                        "device entry {slot} has the state word {word:#018x}, which is none of free, being claimed and ready"
                    )));
                }
                Some(DeviceState::Ready) => {
                    if layout::read_uuid(entry) == uuid {
                        let limit = entry.limit.load(Relaxed);
                        if let Some(config_limit) = config_limit
                            && config_limit != limit
                        {
                            return Err(LedgerError::LimitMismatch {
                                path: self.path.clone(),
                                uuid: uuid.to_string(),
                                ledger_limit: limit,
                                config_limit,
                            });
                        }
                        self.cap(slot, limit);
                        return Ok(Some(DeviceSlot(slot)));
                    }
                    slot += 1;
                    continue;
                }
                // Someone is writing this entry. Wait for them, or take over if they died.
                Some(DeviceState::Claiming(claimer)) => {
                    !proc_info::pid_exists(claimer)
                        && entry
                            .state
                            .compare_exchange(word, DEVICE_CLAIMING | me as u64, SeqCst, SeqCst)
                            .is_ok()
                }
                // A free entry: every earlier entry is READY with another UUID, so this
                // device has no entry yet. Claim it if the slice limits the device.
                Some(DeviceState::Free) => {
                    if config_limit.or(self.default_limit()).is_none() {
                        return Ok(None);
                    }
                    entry
                        .state
                        .compare_exchange(DEVICE_FREE, DEVICE_CLAIMING | me as u64, SeqCst, SeqCst)
                        .is_ok()
                }
            };
            if !claimed {
                // Another process holds the claim, or took the entry first: look again.
                if std::time::Instant::now() >= deadline {
                    return Err(corrupt(format!(
                        "device entry {slot} stays half-written (state word {word:#018x}) for more than {} s",
                        CLAIM_WAIT.as_secs()
                    )));
                }
                std::thread::yield_now();
                continue;
            }
            // We hold the claim on `slot`.
            let Some(limit) = config_limit.or(self.default_limit()) else {
                entry.state.store(DEVICE_FREE, SeqCst);
                return Ok(None);
            };
            layout::write_uuid(entry, uuid);
            entry.limit.store(limit, SeqCst);
            entry.state.store(DEVICE_READY, Release);
            self.cap(slot, limit);
            return Ok(Some(DeviceSlot(slot)));
        }
        Err(LedgerError::Full {
            path: self.path.clone(),
            what: "device",
            max: MAX_DEVICES,
        })
    }

    /// The slice's compute limits (hard percent, burst percent), if it has any.
    pub fn compute_limits(&self) -> Option<(u32, Option<u32>)> {
        unpack_compute(self.header().compute_limits.load(Acquire))
    }

    /// Makes sure the slice's compute limits are `limits`: sets them if the ledger has
    /// none yet, and refuses if it has others (fail closed, naming both).
    pub fn agree_compute_limits(
        &self,
        limits: Option<(u32, Option<u32>)>,
    ) -> Result<(), LedgerError> {
        let word = &self.header().compute_limits;
        let current = word.load(Acquire);
        let mismatch = |found: u64| LedgerError::ComputeMismatch {
            path: self.path.clone(),
            ledger: describe_compute(unpack_compute(found)),
            config: describe_compute(limits),
        };
        match (unpack_compute(current), limits) {
            (None, None) => Ok(()),
            (Some(found), Some(wanted)) if found == wanted => Ok(()),
            (None, Some((hard, burst))) => {
                match word.compare_exchange(current, pack_compute(hard, burst), SeqCst, SeqCst) {
                    Ok(_) => Ok(()),
                    Err(found) if unpack_compute(found) == limits => Ok(()),
                    Err(found) => Err(mismatch(found)),
                }
            }
            (Some(_), _) => Err(mismatch(current)),
        }
    }

    /// The compute budget's shared words of a device entry: the theoretical arrival
    /// time and the total busy time.
    pub fn compute_cells(&self, device: DeviceSlot) -> (&AtomicU64, &AtomicU64) {
        let d = self.device(device.0);
        (&d.compute_tat, &d.compute_busy)
    }

    /// GPU busy time charged to the slice on a device entry, in ns.
    pub fn compute_busy_ns(&self, device: DeviceSlot) -> u64 {
        self.device(device.0).compute_busy.load(Relaxed)
    }

    /// Allocations refused on a device entry since the ledger was made (counted by
    /// [`Ledger::try_charge`] and by [`Ledger::count_refusal`]).
    pub fn refused_allocations(&self, device: DeviceSlot) -> u64 {
        self.device(device.0).refused_allocations.load(Relaxed)
    }

    /// Counts one refusal that [`Ledger::try_charge`] did not count (one whose last
    /// attempt was [`Ledger::try_charge_uncounted`], or that another check made). One
    /// atomic add.
    pub fn count_refusal(&self, device: DeviceSlot) {
        self.device(device.0)
            .refused_allocations
            .fetch_add(1, Relaxed);
    }

    /// Time the slice's processes spent held back by the compute gate on a device
    /// entry, in ns.
    pub fn throttled_ns(&self, device: DeviceSlot) -> u64 {
        self.device(device.0).throttled_ns.load(Relaxed)
    }

    /// The word that counts time held back by the compute gate on a device entry, for
    /// the gate to add to (one atomic add per rest).
    pub fn throttled_cell(&self, device: DeviceSlot) -> &AtomicU64 {
        &self.device(device.0).throttled_ns
    }

    /// The limit of a device entry.
    pub fn limit(&self, device: DeviceSlot) -> u64 {
        let cap = self
            .caps
            .get(device.0)
            .map_or(u64::MAX, |c| c.load(Relaxed));
        self.device(device.0).limit.load(Relaxed).min(cap)
    }

    fn cap(&self, device: usize, limit: u64) {
        if let Some(c) = self.caps.get(device) {
            c.fetch_min(limit, Relaxed);
        }
    }

    /// What a CUDA context (with its modules) was last measured to take on this device
    /// by any process of the slice, if anyone measured it yet.
    pub fn context_estimate(&self, device: DeviceSlot) -> Option<u64> {
        let v = self.device(device.0).context_estimate.load(Relaxed);
        (v != 0).then_some(v)
    }

    /// Records a measured context size for later processes to start from.
    pub fn set_context_estimate(&self, device: DeviceSlot, bytes: u64) {
        self.device(device.0).context_estimate.store(bytes, Relaxed);
    }

    /// The UUID of a device entry.
    pub fn uuid(&self, device: DeviceSlot) -> String {
        layout::read_uuid(self.device(device.0))
    }

    /// All device entries with their usage.
    pub fn devices(&self) -> Vec<DeviceInfo> {
        (0..MAX_DEVICES)
            .filter(|&slot| self.device(slot).state.load(Acquire) == DEVICE_READY)
            .map(|slot| DeviceInfo {
                slot: DeviceSlot(slot),
                uuid: self.uuid(DeviceSlot(slot)),
                limit: self.limit(DeviceSlot(slot)),
                used: self.used(DeviceSlot(slot)),
            })
            .collect()
    }

    fn high_water(&self) -> usize {
        (self.header().high_water.load(SeqCst) as usize).min(MAX_PROCESSES)
    }

    /// Sum of all charges on a device entry.
    pub fn used(&self, device: DeviceSlot) -> u64 {
        (0..self.high_water())
            .map(|slot| {
                let p = self.process(slot);
                if p.owner.load(SeqCst) == OWNER_FREE {
                    0
                } else {
                    p.charge[device.0].load(SeqCst)
                }
            })
            .fold(0u64, u64::saturating_add)
    }

    /// Claims a process entry for the calling process and returns its index.
    ///
    /// Entries left by an earlier program image of this same process (before `exec`)
    /// are swept first: the driver freed that image's memory when it exec'ed.
    pub fn register(&self) -> Result<ProcessSlot, LedgerError> {
        let me = current_identity();
        self.sweep_where(
            |p, _owner| {
                p.start_time.load(Relaxed) == me.start_time && p.pid_ns.load(Relaxed) == me.pid_ns
            },
            Some(me.pid),
        );
        for slot in 0..MAX_PROCESSES {
            let p = self.process(slot);
            if p.owner
                .compare_exchange(
                    OWNER_FREE,
                    OWNER_REGISTERING | me.pid as u64,
                    SeqCst,
                    SeqCst,
                )
                .is_err()
            {
                continue;
            }
            for d in 0..MAX_DEVICES {
                p.charge[d].store(0, SeqCst);
                p.context[d].store(0, SeqCst);
            }
            p.start_time.store(me.start_time, SeqCst);
            p.pid_ns.store(me.pid_ns, SeqCst);
            // slot < MAX_PROCESSES, so this never saturates.
            let high_water = u32::try_from(slot + 1).unwrap_or(u32::MAX);
            self.header().high_water.fetch_max(high_water, SeqCst);
            p.owner.store(OWNER_ACTIVE | me.pid as u64, SeqCst);
            return Ok(ProcessSlot(slot));
        }
        Err(LedgerError::Full {
            path: self.path.clone(),
            what: "process",
            max: MAX_PROCESSES,
        })
    }

    /// Gives a process entry back (normal exit), dropping whatever it still has charged.
    pub fn unregister(&self, slot: ProcessSlot) {
        let p = self.process(slot.0);
        for d in 0..MAX_DEVICES {
            p.charge[d].store(0, SeqCst);
            p.context[d].store(0, SeqCst);
        }
        p.owner.store(OWNER_FREE, SeqCst);
    }

    /// Reserves `bytes` on `device` for process entry `slot`, unless that would take the
    /// device past its limit. A refusal is counted ([`Ledger::refused_allocations`]).
    pub fn try_charge(
        &self,
        slot: ProcessSlot,
        device: DeviceSlot,
        bytes: u64,
    ) -> Result<(), Refusal> {
        self.try_charge_uncounted(slot, device, bytes)
            .inspect_err(|_| self.count_refusal(device))
    }

    /// [`Ledger::try_charge`] without counting a refusal: for an attempt that the caller
    /// follows with another (after making room), so that one refused allocation counts
    /// once. The caller counts its final refusal ([`Ledger::try_charge`] or
    /// [`Ledger::count_refusal`]).
    pub fn try_charge_uncounted(
        &self,
        slot: ProcessSlot,
        device: DeviceSlot,
        bytes: u64,
    ) -> Result<(), Refusal> {
        let limit = self.limit(device);
        let mine = &self.process(slot.0).charge[device.0];
        let mut attempt = 0u32;
        loop {
            let before = self.used(device);
            if before.saturating_add(bytes) > limit {
                return Err(Refusal {
                    used: before,
                    limit,
                    requested: bytes,
                });
            }
            mine.fetch_add(bytes, SeqCst);
            let after = self.used(device);
            if after <= limit {
                return Ok(());
            }
            self.release(slot, device, bytes);
            // Another reservation raced with ours and neither fits with the other. One of
            // them may still fit alone: back off by a pseudo-random delay and try again.
            attempt += 1;
            if attempt >= 12 {
                return Err(Refusal {
                    used: after.saturating_sub(bytes),
                    limit,
                    requested: bytes,
                });
            }
            backoff(attempt, slot.0);
        }
    }

    /// Adds a charge without checking the limit: for memory that already exists (a
    /// context, a pool that grew) and must be counted whatever the limit says.
    pub fn force_charge(&self, slot: ProcessSlot, device: DeviceSlot, bytes: u64) {
        self.process(slot.0).charge[device.0].fetch_add(bytes, SeqCst);
    }

    /// Takes back a charge.
    pub fn release(&self, slot: ProcessSlot, device: DeviceSlot, bytes: u64) {
        let _ = self.process(slot.0).charge[device.0]
            .fetch_update(SeqCst, SeqCst, |v| Some(v.saturating_sub(bytes)));
    }

    /// What a process entry has charged on a device.
    pub fn charged(&self, slot: ProcessSlot, device: DeviceSlot) -> u64 {
        self.process(slot.0).charge[device.0].load(SeqCst)
    }

    /// Records how much of a process's charge is context and module memory (shown by
    /// `gpuslice status`; it does not change the charge).
    pub fn set_context_bytes(&self, slot: ProcessSlot, device: DeviceSlot, bytes: u64) {
        self.process(slot.0).context[device.0].store(bytes, Relaxed);
    }

    /// Zeroes the entries of processes that are gone. Returns how many were swept.
    pub fn sweep_dead(&self) -> usize {
        let me = current_identity();
        self.sweep_where(
            |p, owner| {
                p.pid_ns.load(Relaxed) == me.pid_ns
                    && !process_is_alive(owner_pid(owner), p.start_time.load(Relaxed))
            },
            None,
        )
    }

    /// Sweeps entries (other than free ones and our own) for which `dead` says so.
    /// `only_pid` restricts the sweep to one PID.
    fn sweep_where(
        &self,
        dead: impl Fn(&ProcessEntry, u64) -> bool,
        only_pid: Option<u32>,
    ) -> usize {
        let me = std::process::id();
        let mut swept = 0;
        for slot in 0..self.high_water() {
            let p = self.process(slot);
            let owner = p.owner.load(SeqCst);
            let state = owner & OWNER_STATE_MASK;
            if owner == OWNER_FREE {
                continue;
            }
            if let Some(pid) = only_pid
                && owner_pid(owner) != pid
            {
                continue;
            }
            let reclaim = if state == OWNER_RECLAIMING {
                // A sweeper died half way: finish its work.
                !proc_info::pid_exists(owner_pid(owner))
            } else {
                dead(p, owner)
            };
            if !reclaim
                || p.owner
                    .compare_exchange(owner, OWNER_RECLAIMING | me as u64, SeqCst, SeqCst)
                    .is_err()
            {
                continue;
            }
            for d in 0..MAX_DEVICES {
                p.charge[d].store(0, SeqCst);
                p.context[d].store(0, SeqCst);
            }
            p.owner.store(OWNER_FREE, SeqCst);
            swept += 1;
        }
        swept
    }

    /// Zeroes the entries of registered processes that `dead(pid, pid_ns, start_time)`
    /// says are gone, whatever their PID namespace: for a sweeper that sees every
    /// namespace (the host agent). The identity is read again just before each entry is
    /// taken, so an entry taken over since is left alone. Returns how many were swept.
    pub fn sweep_identities(&self, dead: impl Fn(u32, u64, u64) -> bool) -> usize {
        self.sweep_where(
            |p, owner| {
                owner & OWNER_STATE_MASK == OWNER_ACTIVE
                    && dead(
                        owner_pid(owner),
                        p.pid_ns.load(SeqCst),
                        p.start_time.load(SeqCst),
                    )
            },
            None,
        )
    }

    /// Every process entry in use.
    pub fn processes(&self) -> Vec<ProcessInfo> {
        let me = current_identity();
        let devices = MAX_DEVICES;
        (0..self.high_water())
            .filter_map(|slot| {
                let p = self.process(slot);
                let owner = p.owner.load(SeqCst);
                if owner == OWNER_FREE || owner & OWNER_STATE_MASK == OWNER_RECLAIMING {
                    return None;
                }
                let pid = owner_pid(owner);
                let liveness = if p.pid_ns.load(Relaxed) != me.pid_ns {
                    Liveness::Unknown
                } else if process_is_alive(pid, p.start_time.load(Relaxed)) {
                    Liveness::Alive
                } else {
                    Liveness::Dead
                };
                Some(ProcessInfo {
                    slot: ProcessSlot(slot),
                    pid,
                    pid_ns: p.pid_ns.load(Relaxed),
                    start_time: p.start_time.load(Relaxed),
                    liveness,
                    charges: (0..devices).map(|d| p.charge[d].load(SeqCst)).collect(),
                    context: (0..devices).map(|d| p.context[d].load(Relaxed)).collect(),
                })
            })
            .collect()
    }
}

fn backoff(attempt: u32, salt: usize) {
    if attempt < 3 {
        for _ in 0..(64 << attempt) {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
    } else {
        // Cheap pseudo-randomness: mix the attempt, our entry and the clock.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as usize;
        let jitter = (nanos ^ salt.wrapping_mul(2654435761)) % 200;
        std::thread::sleep(std::time::Duration::from_micros(
            20 * attempt as u64 + jitter as u64,
        ));
    }
}

#[cfg(test)]
mod guard_tests;
#[cfg(test)]
mod mutation_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
