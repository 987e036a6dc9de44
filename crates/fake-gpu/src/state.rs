//! The simulated device memory shared by every process: a fixed-layout table in an mmap'ed
//! file (`FAKE_GPU_STATE`) guarded by `flock(LOCK_EX)`, or an anonymous private mapping when
//! no file is configured.
//!
//! Per device it records the total memory, the peaks of used memory, and one
//! `(pid, device, used_bytes, context_bytes, activity)` entry per process, keyed by the
//! process's host PID (see [`crate::process`]). The activity (SM and memory utilization,
//! encoder and frame-buffer-capture sessions) is what the fake NVML reports as utilization
//! samples, accounting statistics and sessions. Entries of dead processes are dropped
//! whenever the table is locked, as the real driver frees a dead process's memory. The
//! first process that creates the file fixes the device totals.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::config::{GpuConfig, MAX_DEVICES};
use crate::process::{current_pid, is_alive};

const MAGIC: u64 = 0x3155_5047_454b_4146; // "FAKEGPU1", little endian
const LAYOUT_VERSION: u32 = 2;
/// Capacity of the process table.
pub const MAX_ENTRIES: usize = 4096;
/// Capacity of the exported-allocation table.
pub const MAX_SHARES: usize = 1024;

#[repr(C)]
struct Header {
    magic: u64,
    version: u32,
    device_count: u32,
    totals: [u64; MAX_DEVICES],
    peak_used: [u64; MAX_DEVICES],
    peak_physical: [u64; MAX_DEVICES],
    next_share_id: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    pid: u32,
    dev: u32,
    used: u64,
    context: u64,
    activity: Activity,
    since_us: u64,
}

const EMPTY_ENTRY: Entry = Entry {
    pid: 0,
    dev: 0,
    used: 0,
    context: 0,
    activity: Activity {
        sm_util: 0,
        mem_util: 0,
        encoder_sessions: 0,
        fbc_sessions: 0,
    },
    since_us: 0,
};

/// What a process does on a device, as the fake NVML reports it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Activity {
    /// SM utilization, percent (its utilization samples and accounting statistics).
    pub sm_util: u32,
    /// Memory bandwidth utilization, percent.
    pub mem_util: u32,
    /// Open encoder sessions.
    pub encoder_sessions: u32,
    /// Open frame-buffer-capture sessions.
    pub fbc_sessions: u32,
}

/// Microseconds since the epoch (NVML's timestamps).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// An allocation exported as a shareable handle (see `cuMemExportToShareableHandle`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareRecord {
    /// Global allocation id (never 0).
    pub id: u64,
    /// The process the physical memory is charged to.
    pub owner_pid: u32,
    /// Physical device index.
    pub dev: u32,
    /// Bytes of physical memory.
    pub size: u64,
}

#[repr(C)]
struct Layout {
    header: Header,
    entries: [Entry; MAX_ENTRIES],
    shares: [ShareRecord; MAX_SHARES],
}

/// Why the state could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A system call failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The failing operation.
        what: &'static str,
        /// The state file.
        path: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Why memory could not be charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChargeError {
    /// The device does not have that much free memory.
    #[error("out of device memory")]
    OutOfMemory,
    /// No such device.
    #[error("no such device")]
    InvalidDevice,
    /// The process or share table is full.
    #[error("state table full")]
    TableFull,
}

/// Memory of one process on one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProcessUsage {
    /// Process id as stored (the host PID).
    pub pid: u32,
    /// Bytes of allocations.
    pub used: u64,
    /// Bytes of contexts and modules.
    pub context: u64,
    /// What it does.
    pub activity: Activity,
    /// When it first held memory on the device (microseconds since the epoch).
    pub since_us: u64,
}

impl ProcessUsage {
    /// Everything the process holds on the device.
    pub fn total(&self) -> u64 {
        self.used.saturating_add(self.context)
    }
}

#[derive(Debug)]
struct FileLock {
    fd: Option<OwnedFd>,
    pid: u32,
}

/// A handle on the shared state; cheap to lock, safe to share between threads.
#[derive(Debug)]
pub struct SharedState {
    map: NonNull<Layout>,
    path: Option<PathBuf>,
    file: Mutex<FileLock>,
}

// SAFETY: the mapping lives as long as the value, and every access to it goes through `lock`,
// which serialises threads with the mutex and processes with flock.
unsafe impl Send for SharedState {}
// SAFETY: the mapping outlives every `&SharedState`, and a shared reference only hands out
// access through `lock` (mutex between threads, flock between processes).
unsafe impl Sync for SharedState {}

fn io_err(what: &'static str, path: &Path) -> StateError {
    StateError::Io {
        what,
        path: path.display().to_string(),
        source: io::Error::last_os_error(),
    }
}

fn open_fd(path: &Path, create: bool) -> Result<OwnedFd, StateError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| StateError::Io {
        what: "open",
        path: path.display().to_string(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut flags = libc::O_RDWR | libc::O_CLOEXEC;
    if create {
        flags |= libc::O_CREAT;
    }
    // SAFETY: `c` is a valid NUL-terminated path; the mode argument is read for O_CREAT.
    let fd = unsafe { libc::open(c.as_ptr(), flags, 0o666 as libc::c_uint) };
    if fd < 0 {
        return Err(io_err("open", path));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn flock(fd: &OwnedFd, op: libc::c_int) {
    loop {
        // SAFETY: flock on an open descriptor has no memory-safety preconditions.
        let rc = unsafe { libc::flock(fd.as_raw_fd(), op) };
        if rc == 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return;
        }
    }
}

const LAYOUT_SIZE: usize = std::mem::size_of::<Layout>();

fn map(fd: Option<&OwnedFd>, path: &Path) -> Result<NonNull<Layout>, StateError> {
    let (flags, raw) = match fd {
        Some(fd) => (libc::MAP_SHARED, fd.as_raw_fd()),
        None => (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1),
    };
    // SAFETY: a fresh mapping at a kernel-chosen address; the file (if any) is at least
    // LAYOUT_SIZE bytes long, as the caller truncated it first.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LAYOUT_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            raw,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io_err("mmap", path));
    }
    NonNull::new(p.cast::<Layout>()).ok_or_else(|| io_err("mmap", path))
}

fn init_layout(layout: &mut Layout, cfg: &GpuConfig) {
    if layout.header.magic != MAGIC || layout.header.version != LAYOUT_VERSION {
        // SAFETY: Layout is plain old data, for which all-zero bytes are a valid value.
        unsafe { std::ptr::write_bytes(std::ptr::from_mut(layout), 0, 1) };
        layout.header.magic = MAGIC;
        layout.header.version = LAYOUT_VERSION;
        layout.header.next_share_id = 1;
    }
    let have = (layout.header.device_count as usize).min(MAX_DEVICES);
    for d in cfg.devices.iter().skip(have) {
        layout.header.totals[d.index] = d.memory;
    }
    // Both are at most MAX_DEVICES: `have` by the `min` above, the config's count by
    // its parser.
    layout.header.device_count = u32::try_from(have.max(cfg.count())).unwrap_or(u32::MAX);
}

impl SharedState {
    /// Opens (creating and initialising if needed) the state file at `path`.
    pub fn open(path: &Path, cfg: &GpuConfig) -> Result<Self, StateError> {
        let fd = open_fd(path, true)?;
        flock(&fd, libc::LOCK_EX);
        let result = Self::map_file(path, fd, Some(cfg));
        if let Ok(s) = &result {
            s.unlock_file();
        }
        result
    }

    /// Opens an existing state file without creating or initialising it; `Ok(None)` when the
    /// file does not exist or was never initialised.
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StateError> {
        let fd = match open_fd(path, false) {
            Ok(fd) => fd,
            Err(StateError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        flock(&fd, libc::LOCK_EX);
        let state = Self::map_file(path, fd, None)?;
        state.unlock_file();
        let ok = {
            let g = state.lock();
            g.layout().header.magic == MAGIC && g.layout().header.version == LAYOUT_VERSION
        };
        Ok(ok.then_some(state))
    }

    fn map_file(path: &Path, fd: OwnedFd, cfg: Option<&GpuConfig>) -> Result<Self, StateError> {
        // SAFETY: an all-zero `stat` is a valid out-parameter value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open and `st` is a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(io_err("fstat", path));
        }
        // A negative size (which fstat never reports) reads as an empty file.
        if u64::try_from(st.st_size).unwrap_or(0) < LAYOUT_SIZE as u64 {
            if cfg.is_none() {
                // Never initialised: do not grow somebody else's file.
                return Err(StateError::Io {
                    what: "read",
                    path: path.display().to_string(),
                    source: io::Error::from(io::ErrorKind::UnexpectedEof),
                });
            }
            // SAFETY: `fd` is open for writing.
            if unsafe { libc::ftruncate(fd.as_raw_fd(), LAYOUT_SIZE as libc::off_t) } != 0 {
                return Err(io_err("ftruncate", path));
            }
        }
        let map = map(Some(&fd), path)?;
        let state = Self {
            map,
            path: Some(path.to_path_buf()),
            file: Mutex::new(FileLock {
                fd: Some(fd),
                pid: current_pid(),
            }),
        };
        if let Some(cfg) = cfg {
            // SAFETY: we hold the file lock (taken by the caller) and nobody else in this
            // process has seen the mapping yet.
            init_layout(unsafe { &mut *state.map.as_ptr() }, cfg);
        }
        Ok(state)
    }

    fn unlock_file(&self) {
        let f = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(fd) = &f.fd {
            flock(fd, libc::LOCK_UN);
        }
    }

    /// A private in-process state (used when `FAKE_GPU_STATE` is unset).
    pub fn anonymous(cfg: &GpuConfig) -> Result<Self, StateError> {
        let map = map(None, Path::new("<anonymous>"))?;
        let state = Self {
            map,
            path: None,
            file: Mutex::new(FileLock {
                fd: None,
                pid: current_pid(),
            }),
        };
        // SAFETY: the fresh private mapping is zero-filled and not yet shared.
        init_layout(unsafe { &mut *state.map.as_ptr() }, cfg);
        Ok(state)
    }

    /// The file named by `FAKE_GPU_STATE`, or an anonymous state if it is unset or empty.
    pub fn from_env(cfg: &GpuConfig) -> Result<Self, StateError> {
        match std::env::var_os("FAKE_GPU_STATE") {
            Some(p) if !p.is_empty() => Self::open(Path::new(&p), cfg),
            _ => Self::anonymous(cfg),
        }
    }

    /// The backing file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Takes the lock (in-process mutex plus `flock(LOCK_EX)`) and drops dead processes.
    pub fn lock(&self) -> Guard<'_> {
        let mut file = self.file.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(path) = &self.path {
            let pid = current_pid();
            if file.pid != pid {
                // A forked child shares the parent's open file description, and flock would
                // not exclude the two: take a descriptor of our own.
                if let Ok(fd) = open_fd(path, false) {
                    file.fd = Some(fd);
                }
                file.pid = pid;
            }
            if let Some(fd) = &file.fd {
                flock(fd, libc::LOCK_EX);
            }
        }
        let mut guard = Guard {
            state: self,
            file: Some(file),
        };
        guard.prune();
        guard
    }
}

impl Drop for SharedState {
    fn drop(&mut self) {
        // SAFETY: the mapping was created with LAYOUT_SIZE and is not used after this.
        unsafe { libc::munmap(self.map.as_ptr().cast(), LAYOUT_SIZE) };
    }
}

fn usage_of(e: &Entry) -> ProcessUsage {
    ProcessUsage {
        pid: e.pid,
        used: e.used,
        context: e.context,
        activity: e.activity,
        since_us: e.since_us,
    }
}

/// Exclusive access to the shared state; releases the lock when dropped.
#[derive(Debug)]
pub struct Guard<'a> {
    state: &'a SharedState,
    file: Option<MutexGuard<'a, FileLock>>,
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(fd) = self.file.as_ref().and_then(|f| f.fd.as_ref()) {
            flock(fd, libc::LOCK_UN);
        }
    }
}

impl Guard<'_> {
    fn layout(&self) -> &Layout {
        // SAFETY: the mapping is valid while `state` lives, and the lock we hold excludes
        // writers in this and every other process.
        unsafe { &*self.state.map.as_ptr() }
    }

    fn layout_mut(&mut self) -> &mut Layout {
        // SAFETY: as in `layout`; `&mut self` makes this the only reference in this process.
        unsafe { &mut *self.state.map.as_ptr() }
    }

    fn prune(&mut self) {
        let l = self.layout_mut();
        let mut checked: Vec<(u32, bool)> = Vec::new();
        let mut alive = |pid: u32| match checked.iter().find(|(p, _)| *p == pid) {
            Some(&(_, a)) => a,
            None => {
                let a = is_alive(pid);
                checked.push((pid, a));
                a
            }
        };
        for e in l.entries.iter_mut().filter(|e| e.pid != 0) {
            if !alive(e.pid) {
                *e = EMPTY_ENTRY;
            }
        }
        for s in l.shares.iter_mut().filter(|s| s.id != 0) {
            if !alive(s.owner_pid) {
                s.id = 0;
            }
        }
    }

    /// Number of devices.
    pub fn device_count(&self) -> usize {
        (self.layout().header.device_count as usize).min(MAX_DEVICES)
    }

    /// Total memory of `dev` (0 for an unknown device).
    pub fn total(&self, dev: usize) -> u64 {
        if dev < self.device_count() {
            self.layout().header.totals[dev]
        } else {
            0
        }
    }

    fn sums(&self, dev: usize) -> (u64, u64) {
        self.layout()
            .entries
            .iter()
            .filter(|e| e.pid != 0 && e.dev as usize == dev)
            .fold((0u64, 0u64), |(u, c), e| {
                (u.saturating_add(e.used), c.saturating_add(e.context))
            })
    }

    /// Sum of used and context bytes of all live processes on `dev`.
    pub fn in_use(&self, dev: usize) -> u64 {
        let (u, c) = self.sums(dev);
        u.saturating_add(c)
    }

    /// Sum of used bytes (allocations only) of all live processes on `dev`.
    pub fn used(&self, dev: usize) -> u64 {
        self.sums(dev).0
    }

    /// Free memory of `dev`.
    pub fn free(&self, dev: usize) -> u64 {
        self.total(dev).saturating_sub(self.in_use(dev))
    }

    /// Charges `used` allocation bytes and `context` bytes to `pid` on `dev`, failing without
    /// change when the device would be over-committed.
    pub fn charge(
        &mut self,
        pid: u32,
        dev: usize,
        used: u64,
        context: u64,
    ) -> Result<(), ChargeError> {
        if dev >= self.device_count() {
            return Err(ChargeError::InvalidDevice);
        }
        let want = used.checked_add(context).ok_or(ChargeError::OutOfMemory)?;
        let after = self
            .in_use(dev)
            .checked_add(want)
            .ok_or(ChargeError::OutOfMemory)?;
        if after > self.total(dev) {
            return Err(ChargeError::OutOfMemory);
        }
        if want == 0 {
            return Ok(());
        }
        let l = self.layout_mut();
        let slot = match l
            .entries
            .iter()
            .position(|e| e.pid == pid && e.dev as usize == dev)
        {
            Some(i) => i,
            None => {
                let i = l
                    .entries
                    .iter()
                    .position(|e| e.pid == 0)
                    .ok_or(ChargeError::TableFull)?;
                let dev = u32::try_from(dev).map_err(|_| ChargeError::InvalidDevice)?;
                l.entries[i] = Entry {
                    pid,
                    dev,
                    since_us: now_us(),
                    ..EMPTY_ENTRY
                };
                i
            }
        };
        l.entries[slot].used += used;
        l.entries[slot].context += context;
        let (u, c) = self.sums(dev);
        let h = &mut self.layout_mut().header;
        h.peak_used[dev] = h.peak_used[dev].max(u);
        h.peak_physical[dev] = h.peak_physical[dev].max(u.saturating_add(c));
        Ok(())
    }

    /// Returns bytes charged with [`Self::charge`] (saturating; an emptied entry is freed).
    pub fn uncharge(&mut self, pid: u32, dev: usize, used: u64, context: u64) {
        let l = self.layout_mut();
        if let Some(e) = l
            .entries
            .iter_mut()
            .find(|e| e.pid == pid && e.pid != 0 && e.dev as usize == dev)
        {
            e.used = e.used.saturating_sub(used);
            e.context = e.context.saturating_sub(context);
            if e.used == 0 && e.context == 0 {
                *e = EMPTY_ENTRY;
            }
        }
    }

    /// Records what `pid` does on `dev` (a no-op when it holds no memory there).
    pub fn set_activity(&mut self, pid: u32, dev: usize, activity: Activity) {
        if let Some(e) = self
            .layout_mut()
            .entries
            .iter_mut()
            .find(|e| e.pid == pid && e.pid != 0 && e.dev as usize == dev)
        {
            e.activity = activity;
        }
    }

    /// What `pid` holds on `dev`.
    pub fn usage(&self, pid: u32, dev: usize) -> ProcessUsage {
        self.layout()
            .entries
            .iter()
            .find(|e| e.pid == pid && e.pid != 0 && e.dev as usize == dev)
            .map_or(
                ProcessUsage {
                    pid,
                    ..ProcessUsage::default()
                },
                usage_of,
            )
    }

    /// Every live process holding memory on `dev`, in table order.
    pub fn processes(&self, dev: usize) -> Vec<ProcessUsage> {
        self.layout()
            .entries
            .iter()
            .filter(|e| e.pid != 0 && e.dev as usize == dev)
            .map(usage_of)
            .collect()
    }

    /// Highest sum of used (allocation) bytes ever observed on `dev`.
    pub fn peak_used(&self, dev: usize) -> u64 {
        if dev < MAX_DEVICES {
            self.layout().header.peak_used[dev]
        } else {
            0
        }
    }

    /// Highest sum of used plus context bytes ever observed on `dev`.
    pub fn peak_physical(&self, dev: usize) -> u64 {
        if dev < MAX_DEVICES {
            self.layout().header.peak_physical[dev]
        } else {
            0
        }
    }

    /// Sets every device's peaks to its current usage.
    pub fn reset_peak(&mut self) {
        for dev in 0..self.device_count() {
            let (u, c) = self.sums(dev);
            let h = &mut self.layout_mut().header;
            h.peak_used[dev] = u;
            h.peak_physical[dev] = u.saturating_add(c);
        }
    }

    /// Records an exported allocation and returns its global id.
    pub fn add_share(&mut self, owner_pid: u32, dev: usize, size: u64) -> Result<u64, ChargeError> {
        let dev = u32::try_from(dev).map_err(|_| ChargeError::InvalidDevice)?;
        let l = self.layout_mut();
        let slot = l
            .shares
            .iter()
            .position(|s| s.id == 0)
            .ok_or(ChargeError::TableFull)?;
        let id = l.header.next_share_id.max(1);
        l.header.next_share_id = id + 1;
        l.shares[slot] = ShareRecord {
            id,
            owner_pid,
            dev,
            size,
        };
        Ok(id)
    }

    /// The exported allocation `id`, if its owner still holds it.
    pub fn share(&self, id: u64) -> Option<ShareRecord> {
        if id == 0 {
            return None;
        }
        self.layout().shares.iter().find(|s| s.id == id).copied()
    }

    /// Forgets the exported allocation `id`.
    pub fn remove_share(&mut self, id: u64) {
        if id == 0 {
            return;
        }
        for s in self.layout_mut().shares.iter_mut().filter(|s| s.id == id) {
            s.id = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::size::{GIB, MIB};

    fn temp_path(tag: &str) -> PathBuf {
        let mut p = std::env::temp_dir();
        p.push(format!("fake-gpu-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        p
    }

    fn cfg() -> GpuConfig {
        GpuConfig::new(2, GIB, &[], "x")
    }

    #[test]
    fn charge_and_free() {
        let s = SharedState::anonymous(&cfg()).expect("anon");
        let me = current_pid();
        let mut g = s.lock();
        assert_eq!(g.device_count(), 2);
        assert_eq!(g.total(1), GIB);
        g.charge(me, 0, 512 * MIB, 0).expect("fits");
        g.charge(me, 0, 0, 300 * MIB).expect("fits");
        assert_eq!(g.charge(me, 0, 300 * MIB, 0), Err(ChargeError::OutOfMemory));
        assert_eq!(g.charge(me, 5, 1, 0), Err(ChargeError::InvalidDevice));
        assert_eq!(g.free(0), GIB - 812 * MIB);
        assert_eq!(g.free(1), GIB);
        assert_eq!(g.peak_used(0), 512 * MIB);
        assert_eq!(g.peak_physical(0), 812 * MIB);
        g.uncharge(me, 0, 512 * MIB, 0);
        assert_eq!(g.usage(me, 0).used, 0);
        assert_eq!(g.usage(me, 0).context, 300 * MIB);
        assert_eq!(g.peak_used(0), 512 * MIB);
        g.reset_peak();
        assert_eq!(g.peak_used(0), 0);
        let busy = Activity {
            sm_util: 40,
            mem_util: 5,
            encoder_sessions: 1,
            fbc_sessions: 2,
        };
        g.set_activity(me, 0, busy);
        assert_eq!(g.processes(0)[0].activity, busy);
        assert!(g.processes(0)[0].since_us > 0);
        // No memory on device 1: nothing to record.
        g.set_activity(me, 1, busy);
        assert!(g.processes(1).is_empty());
        g.uncharge(me, 0, 0, 300 * MIB);
        assert!(g.processes(0).is_empty());
    }

    #[test]
    fn dead_processes_are_dropped() {
        let path = temp_path("dead");
        let s = SharedState::open(&path, &cfg()).expect("open");
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        {
            let mut g = s.lock();
            g.charge(pid, 1, 100 * MIB, 0).expect("fits");
            assert_eq!(g.in_use(1), 100 * MIB);
            let id = g.add_share(pid, 1, 2 * MIB).expect("share");
            assert!(g.share(id).is_some());
        }
        let g = s.lock();
        assert_eq!(g.in_use(1), 0, "the dead child's memory is gone");
        assert_eq!(g.peak_used(1), 100 * MIB);
        drop(g);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn file_is_shared() {
        let path = temp_path("shared");
        assert!(SharedState::open_existing(&path).expect("none").is_none());
        let a = SharedState::open(&path, &cfg()).expect("a");
        // A second opener with a different config keeps the first totals.
        let b = SharedState::open(&path, &GpuConfig::new(3, 2 * GIB, &[], "y")).expect("b");
        let me = current_pid();
        a.lock().charge(me, 0, 64 * MIB, 0).expect("fits");
        {
            let g = b.lock();
            assert_eq!(g.usage(me, 0).used, 64 * MIB);
            assert_eq!(g.total(0), GIB);
            assert_eq!(g.device_count(), 3);
            assert_eq!(g.total(2), 2 * GIB);
        }
        assert_eq!(crate::used_by_pid(&path, 0, me), 64 * MIB);
        assert_eq!(crate::peak_used(&path, 0), 64 * MIB);
        b.lock().uncharge(me, 0, 64 * MIB, 0);
        crate::reset_peak(&path);
        assert_eq!(crate::peak_used(&path, 0), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn shares() {
        let s = SharedState::anonymous(&cfg()).expect("anon");
        let mut g = s.lock();
        let a = g.add_share(current_pid(), 0, 4 * MIB).expect("a");
        let b = g.add_share(current_pid(), 1, 2 * MIB).expect("b");
        assert_ne!(a, b);
        assert_eq!(g.share(b).map(|r| r.size), Some(2 * MIB));
        g.remove_share(a);
        assert_eq!(g.share(a), None);
    }
}
