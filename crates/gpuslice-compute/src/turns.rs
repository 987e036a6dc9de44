//! Taking turns on a GPU: one small shared file per GPU (`<gpu-dir>/<uuid>.turns`),
//! mapped by every compute-limited process of every slice on the host.
//!
//! Only the holder of the GPU's turn submits work, and it drains its work before it
//! gives the turn up, so the busy time a slice measures on its streams is its own and
//! never another slice's. The turn is a lease: one atomic word holds the holder's slot
//! and the time its lease ends, so a holder that dies or stops holds the GPU for at most
//! one lease. Each process also stamps when it last wanted the turn and when it last
//! ran work, which tells a slice with a soft limit whether any other slice wants the GPU.
//!
//! The folder is shared by every user and container of the host by design (mode 1777,
//! files 0666), so any local user can write these files. Such a writer can delay other
//! slices' turns for as long as it keeps rewriting the lease word (one write is honoured
//! for at most a second, as for any process of a compute slice), and by truncating a
//! file it makes the processes that map it die of a bus error. It can never raise a
//! memory or compute limit: those live in each slice's own ledger. A link or anything
//! but a regular file at a turn file's name, or a link at the folder's, is refused
//! rather than followed.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::*};

const MAGIC: [u8; 8] = *b"GSTURNS2";
const VERSION: u32 = 1;
/// Process slots per GPU file.
pub const SLOTS: usize = 128;
/// A slot whose stamps are all older than this is free for another process to take.
const STALE_NS: u64 = 60_000_000_000;
/// The longest lease honoured (the gate asks for 10 ms).
const MAX_LEASE_NS: u64 = 1_000_000_000;

#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    slots: u32,
    /// `(slot + 1) << 56 | lease end in microseconds`, or 0 when nobody holds the turn.
    holder: AtomicU64,
    /// Bumped at every release; waiters sleep on it (a futex shared by all processes
    /// that map the file), so that a released turn is taken at once.
    releases: AtomicU32,
    pad: u32,
    reserved: [AtomicU64; 4],
}

#[repr(C)]
struct Slot {
    /// 0 when free, else the owner's key.
    key: AtomicU64,
    /// Which slice the owner belongs to.
    slice: AtomicU64,
    /// When the owner last waited for the turn, or, while it rests, when it will want
    /// it again.
    want_ns: AtomicU64,
    /// When the owner last ran work or claimed the slot.
    active_ns: AtomicU64,
    /// Since when the owner has been without the turn while wanting it (0: not
    /// waiting). The process that has been without the GPU longest goes first.
    waiting_since: AtomicU64,
    reserved: AtomicU64,
}

const HEADER_BYTES: usize = size_of::<Header>();
const SLOT_BYTES: usize = size_of::<Slot>();
const FILE_BYTES: usize = HEADER_BYTES + SLOTS * SLOT_BYTES;
const LEASE_MASK: u64 = (1 << 56) - 1;

/// What can go wrong with a turn file.
#[derive(Debug, thiserror::Error)]
pub enum TurnError {
    /// The file or its folder could not be created, opened or mapped.
    #[error("GPU turn file {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a turn file of this version.
    #[error(
        "GPU turn file {path} is not a gpuslice turn file of version {VERSION} ({reason}); remove it when no compute slice runs"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Something that must not be used stands at the file's name or its folder's.
    #[error("GPU turn file {path} is refused: {reason}")]
    Refused {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// All slots are taken.
    #[error(
        "GPU turn file {path} has no free slot (at most {SLOTS} compute-limited processes per GPU)"
    )]
    Full {
        /// The file.
        path: PathBuf,
    },
}

/// The result of asking for the turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// This process already held the turn; its lease is renewed.
    Held,
    /// This process has just taken the turn.
    Acquired,
    /// Another process holds the turn until about this time.
    Busy {
        /// When its lease ends.
        until_ns: u64,
    },
}

/// This process's place in a GPU's turn file.
#[derive(Debug)]
pub struct GpuTurns {
    /// The mapping's registration with the mapping guard, when the process installed it
    /// (declared before `map`, so that it is dropped, and the mapping unregistered, before
    /// the mapping is unmapped).
    guard: Option<gpuslice_mapguard::Registration>,
    map: memmap2::MmapMut,
    path: PathBuf,
    slot: usize,
    key: u64,
    slice: u64,
}

// SAFETY: the mapping is only accessed through atomics (and immutable header fields
// checked once), so it can be shared and sent like the atomics themselves.
unsafe impl Send for GpuTurns {}
// SAFETY: every access through a shared reference reads or writes the mapping with
// atomics (the header fields it reads plainly are immutable after the check at open),
// so several threads may use one `GpuTurns` at once.
unsafe impl Sync for GpuTurns {}

fn encode(slot: usize, lease_end_ns: u64) -> u64 {
    ((slot as u64 + 1) << 56) | ((lease_end_ns / 1000) & LEASE_MASK)
}

fn decode(word: u64) -> Option<(usize, u64)> {
    let slot = (word >> 56) as usize;
    (slot != 0).then(|| (slot - 1, (word & LEASE_MASK) * 1000))
}

impl GpuTurns {
    /// Opens (creating if needed) the turn file of GPU `uuid` in `dir` and claims a slot
    /// for this process, on behalf of slice `slice` (a tag that is equal for all
    /// processes of one slice). `key` identifies this process (non-zero).
    pub fn open(
        dir: &Path,
        uuid: &str,
        slice: u64,
        key: u64,
        now_ns: u64,
    ) -> Result<Self, TurnError> {
        let path = dir.join(format!("{uuid}.turns"));
        let io = |what, source| TurnError::Io {
            path: path.clone(),
            what,
            source,
        };
        let refused = |reason: &str| TurnError::Refused {
            path: path.clone(),
            reason: reason.to_string(),
        };
        match fs::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(refused(
                    "its folder is a symbolic link, which gpuslice does not follow (another user could point it elsewhere); give GPUSLICE_GPU_DIR the real path",
                ));
            }
            Ok(m) if !m.is_dir() => return Err(refused("its folder is not a folder")),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Only the last component, shared by every user and container of the
                // host like /tmp (sticky: nobody can remove another's files).
                match fs::create_dir(dir) {
                    Ok(()) => {
                        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o1777));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io("creating its folder", e)),
                }
            }
            Err(e) => return Err(io("looking at its folder", e)),
        }
        let open = || {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
        };
        let file = match open() {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
                let made = (|| {
                    // create_new (O_EXCL) never follows a link at the name.
                    let mut file = OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o666)
                        .open(&tmp)
                        .map_err(|e| io("creating a temporary file", e))?;
                    let _ = file.set_permissions(fs::Permissions::from_mode(0o666));
                    file.write_all(&initial_image())
                        .map_err(|e| io("writing", e))?;
                    drop(file);
                    match fs::hard_link(&tmp, &path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                        Err(e) => Err(io("publishing", e)),
                    }
                })();
                let _ = fs::remove_file(&tmp);
                made?;
                open().map_err(|e| io("opening", e))?
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(refused(
                    "it is a symbolic link, which gpuslice does not follow (another user could point it at a file of theirs); remove it",
                ));
            }
            Err(e) => return Err(io("opening", e)),
        };
        if !file
            .metadata()
            .map_err(|e| io("reading its type", e))?
            .file_type()
            .is_file()
        {
            return Err(refused("it is not a regular file; remove it"));
        }
        // SAFETY: a shared mapping of a file that is only ever accessed through atomics;
        // its size is checked below before any field is read.
        let map = unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| io("mapping", e))?;
        validate(&map, &path)?;
        // Any compute slice of the host can write the file: if the process guards its
        // shared mappings, one cut short reads as zeros (no one holds the GPU) instead of
        // killing the process with SIGBUS.
        let guard = match gpuslice_mapguard::register(map.as_ptr(), map.len()) {
            gpuslice_mapguard::Registered::Guarded(registration) => Some(registration),
            gpuslice_mapguard::Registered::Unguarded | gpuslice_mapguard::Registered::Full => None,
        };
        let mut turns = GpuTurns {
            guard,
            map,
            path,
            slot: 0,
            key: key.max(1),
            slice,
        };
        turns.slot = turns.claim_slot(now_ns)?;
        Ok(turns)
    }

    /// Whether another process cut the file short under this process's (guarded)
    /// mapping: the turns then read as zeros, and this process takes turns with no one.
    pub fn truncated(&self) -> bool {
        self.guard.as_ref().is_some_and(|g| g.truncated())
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least FILE_BYTES long (validated) and page-aligned;
        // Header is repr(C) made of integers and atomics.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    fn slot_at(&self, i: usize) -> &Slot {
        debug_assert!(i < SLOTS);
        // SAFETY: in bounds of the validated mapping; Slot is repr(C) atomics, 8-aligned.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(HEADER_BYTES + i * SLOT_BYTES)
                .cast::<Slot>()
        }
    }

    fn claim_slot(&self, now_ns: u64) -> Result<usize, TurnError> {
        for i in 0..SLOTS {
            let s = self.slot_at(i);
            let key = s.key.load(Acquire);
            let stale = key != 0
                && s.want_ns
                    .load(Relaxed)
                    .max(s.active_ns.load(Relaxed))
                    .saturating_add(STALE_NS)
                    < now_ns;
            if (key == 0 || stale)
                && s.key
                    .compare_exchange(key, self.key, AcqRel, Relaxed)
                    .is_ok()
            {
                s.slice.store(self.slice, Relaxed);
                s.want_ns.store(0, Relaxed);
                s.waiting_since.store(0, Relaxed);
                s.active_ns.store(now_ns, Relaxed);
                return Ok(i);
            }
        }
        Err(TurnError::Full {
            path: self.path.clone(),
        })
    }

    /// Makes sure this process still owns its slot (it may have been taken over after a
    /// very long silence) and claims another one if not.
    fn own_slot(&mut self, now_ns: u64) {
        if self.slot_at(self.slot).key.load(Acquire) != self.key
            && let Ok(slot) = self.claim_slot(now_ns)
        {
            self.slot = slot;
        }
    }

    /// Whether another process that wants the turn now (it asked within `fresh_ns`, or
    /// its rest ends within `soon_ns`) has been without it since before `since_ns`.
    fn someone_waited_longer(&self, now_ns: u64, since_ns: u64, fresh_ns: u64) -> bool {
        let soon_ns = fresh_ns / 16;
        (0..SLOTS).any(|i| {
            let s = self.slot_at(i);
            if i == self.slot || s.key.load(Relaxed) == 0 {
                return false;
            }
            let waiting = s.waiting_since.load(Relaxed);
            let want = s.want_ns.load(Relaxed);
            waiting != 0
                && waiting < since_ns
                && want.saturating_add(fresh_ns) > now_ns
                && want <= now_ns.saturating_add(soon_ns)
        })
    }

    /// Asks for the turn, renewing or taking a lease that ends `lease_ns` from now. A
    /// free turn goes to the process that has been without it longest among those that
    /// asked within `fresh_ns`; this one has been without it since `since_ns`.
    pub fn try_hold(&mut self, now_ns: u64, lease_ns: u64, since_ns: u64, fresh_ns: u64) -> Hold {
        self.own_slot(now_ns);
        let holder = &self.header().holder;
        let mine = encode(self.slot, now_ns.saturating_add(lease_ns));
        for _ in 0..8 {
            let word = holder.load(Acquire);
            match decode(word) {
                Some((slot, _)) if slot == self.slot => {
                    if holder.compare_exchange(word, mine, AcqRel, Relaxed).is_ok() {
                        return Hold::Held;
                    }
                }
                // A lease longer than any process takes is not honoured: the file is
                // shared by every slice on the GPU, and a word written by a broken or
                // hostile process must not hold the GPU for ever.
                Some((_, until_ns))
                    if until_ns > now_ns && until_ns <= now_ns.saturating_add(MAX_LEASE_NS) =>
                {
                    return Hold::Busy { until_ns };
                }
                _ => {
                    if self.someone_waited_longer(now_ns, since_ns, fresh_ns) {
                        self.note_want(now_ns, since_ns);
                        return Hold::Busy { until_ns: now_ns };
                    }
                    if holder.compare_exchange(word, mine, AcqRel, Relaxed).is_ok() {
                        self.slot_at(self.slot).waiting_since.store(0, Relaxed);
                        return Hold::Acquired;
                    }
                }
            }
        }
        Hold::Busy {
            until_ns: now_ns.saturating_add(lease_ns),
        }
    }

    /// Whether this process holds an unexpired lease.
    pub fn holds(&self, now_ns: u64) -> bool {
        matches!(decode(self.header().holder.load(Acquire)),
            Some((slot, until)) if slot == self.slot && until > now_ns)
    }

    /// Gives the turn up, if this process holds it.
    pub fn release(&self) {
        let holder = &self.header().holder;
        let word = holder.load(Acquire);
        if decode(word).is_some_and(|(slot, _)| slot == self.slot)
            && holder.compare_exchange(word, 0, AcqRel, Relaxed).is_ok()
        {
            let releases = &self.header().releases;
            releases.fetch_add(1, Release);
            // SAFETY: FUTEX_WAKE on a 4-byte aligned word of a shared mapping; it only
            // wakes threads waiting on that word.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    releases.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                    std::ptr::null::<libc::timespec>(),
                );
            }
        }
    }

    /// How many times the turn has been released (for [`GpuTurns::wait_release`]).
    pub fn releases(&self) -> u32 {
        self.header().releases.load(Acquire)
    }

    /// Sleeps until the turn is released (the release count moves on from `seen`) or
    /// `timeout_ns` passes, whichever comes first.
    pub fn wait_release(&self, seen: u32, timeout_ns: u64) {
        let releases = &self.header().releases;
        if releases.load(Acquire) != seen {
            return;
        }
        let ts = libc::timespec {
            tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: FUTEX_WAIT on a 4-byte aligned word of a shared mapping, with a valid
        // relative timeout; it returns at once if the word no longer holds `seen`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                releases.as_ptr(),
                libc::FUTEX_WAIT,
                seen,
                &ts as *const libc::timespec,
            );
        }
    }

    /// Records that this process is waiting for the turn, and has been without it
    /// since `since_ns`.
    pub fn note_want(&self, now_ns: u64, since_ns: u64) {
        let s = self.slot_at(self.slot);
        s.want_ns.store(now_ns, Relaxed);
        if s.waiting_since.load(Relaxed) == 0 {
            s.waiting_since.store(since_ns.max(1), Relaxed);
        }
    }

    /// Records that this process rests until `ready_ns` and will then want the turn,
    /// having been without it since `since_ns`.
    pub fn note_rest(&self, ready_ns: u64, since_ns: u64) {
        self.note_want(ready_ns, since_ns);
    }

    /// Records that this process ran work on the GPU.
    pub fn note_active(&self, now_ns: u64) {
        self.slot_at(self.slot).active_ns.store(now_ns, Relaxed);
    }

    /// Whether any other process waited for the turn within `within_ns` before now
    /// (and is not resting).
    pub fn others_want(&self, now_ns: u64, within_ns: u64) -> bool {
        (0..SLOTS).any(|i| {
            let s = self.slot_at(i);
            let want = s.want_ns.load(Relaxed);
            i != self.slot
                && s.key.load(Relaxed) != 0
                && want.saturating_add(within_ns) > now_ns
                && want <= now_ns
        })
    }

    /// Whether a process of another slice wanted the turn or ran work within
    /// `within_ns` before now.
    pub fn other_slices_busy(&self, now_ns: u64, within_ns: u64) -> bool {
        (0..SLOTS).any(|i| {
            let s = self.slot_at(i);
            if i == self.slot || s.key.load(Relaxed) == 0 || s.slice.load(Relaxed) == self.slice {
                return false;
            }
            let last = s.want_ns.load(Relaxed).max(s.active_ns.load(Relaxed));
            last.saturating_add(within_ns) > now_ns
        })
    }

    /// Gives the slot back (on exit), releasing the turn first.
    pub fn leave(&self) {
        self.release();
        let s = self.slot_at(self.slot);
        let _ = s.key.compare_exchange(self.key, 0, AcqRel, Relaxed);
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// [`SLOTS`] as the file's header stores it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assert fails the compile unless SLOTS fits a u32"
)]
const SLOTS_WORD: u32 = {
    assert!(SLOTS <= u32::MAX as usize);
    SLOTS as u32
};

/// A nonce from the clock, where getrandom fails.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the clock's low 32 bits are the nonce: dropping the high ones is the point"
)]
fn clock_nonce() -> u32 {
    crate::clock::monotonic_ns() as u32
}

fn initial_image() -> Vec<u8> {
    let mut buf = vec![0u8; FILE_BYTES];
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..12].copy_from_slice(&VERSION.to_ne_bytes());
    buf[12..16].copy_from_slice(&SLOTS_WORD.to_ne_bytes());
    buf
}

fn validate(map: &[u8], path: &Path) -> Result<(), TurnError> {
    let foreign = |reason: String| TurnError::Foreign {
        path: path.to_path_buf(),
        reason,
    };
    if map.len() < FILE_BYTES {
        return Err(foreign(format!(
            "it is {} bytes, expected {FILE_BYTES}",
            map.len()
        )));
    }
    if map[0..8] != MAGIC {
        return Err(foreign("wrong magic".into()));
    }
    let version = u32::from_ne_bytes([map[8], map[9], map[10], map[11]]);
    let slots = u32::from_ne_bytes([map[12], map[13], map[14], map[15]]);
    if version != VERSION || slots as usize != SLOTS {
        return Err(foreign(format!("version {version}, {slots} slots")));
    }
    Ok(())
}

/// A process key: PID and a random part drawn once per process (a forked child draws
/// its own), so that a reused PID in another container is never taken for this process.
pub fn process_key() -> u64 {
    static KEY: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    let key = KEY.load(Relaxed);
    if key != 0 && key >> 32 == pid {
        return key;
    }
    let mut bytes = [0u8; 4];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let nonce = if n == 4 {
        u32::from_ne_bytes(bytes)
    } else {
        clock_nonce()
    }
    .max(1);
    let key = (pid << 32) | u64::from(nonce);
    KEY.store(key, Relaxed);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn open(dir: &Path, slice: u64, key: u64, now: u64) -> GpuTurns {
        GpuTurns::open(dir, "GPU-test", slice, key, now).unwrap()
    }

    #[test]
    fn one_holder_at_a_time_and_leases_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), 1, 11, 1000 * MS);
        let mut b = open(dir.path(), 2, 22, 1000 * MS);
        let hold = |t: &mut GpuTurns, at: u64| t.try_hold(at, 5 * MS, at, MS);
        assert_eq!(hold(&mut a, 1000 * MS), Hold::Acquired);
        assert_eq!(hold(&mut a, 1001 * MS), Hold::Held);
        assert!(a.holds(1002 * MS));
        assert_eq!(
            hold(&mut b, 1002 * MS),
            Hold::Busy {
                until_ns: 1006 * MS
            }
        );
        // A holder that stops renewing loses the turn when its lease ends.
        assert_eq!(hold(&mut b, 1007 * MS), Hold::Acquired);
        assert!(!a.holds(1007 * MS));
        assert!(matches!(hold(&mut a, 1008 * MS), Hold::Busy { .. }));
        b.release();
        assert_eq!(hold(&mut a, 1008 * MS), Hold::Acquired);
    }

    #[test]
    fn a_lease_far_in_the_future_is_not_honoured() {
        // A process that writes itself a lease of an hour (a bug, or on purpose) does not
        // keep the other slices off the GPU.
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), 1, 11, 1000 * MS);
        let mut b = open(dir.path(), 2, 22, 1000 * MS);
        assert_eq!(
            a.try_hold(1000 * MS, 3_600_000 * MS, 1000 * MS, MS),
            Hold::Acquired
        );
        assert_eq!(b.try_hold(1001 * MS, 5 * MS, 1001 * MS, MS), Hold::Acquired);
    }

    #[test]
    fn a_free_turn_goes_to_who_was_without_it_longest() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = open(dir.path(), 1, 11, 0);
        let mut b = open(dir.path(), 1, 12, 0);
        // b has waited since 100 ms; a only since 150 ms: a must let b go first...
        b.note_want(200 * MS, 100 * MS);
        assert!(matches!(
            a.try_hold(200 * MS, 5 * MS, 150 * MS, MS),
            Hold::Busy { .. }
        ));
        assert_eq!(b.try_hold(200 * MS, 5 * MS, 100 * MS, MS), Hold::Acquired);
        b.release();
        // ...but only while b keeps asking: a waiter that went silent is passed over.
        b.note_want(300 * MS, 250 * MS);
        assert_eq!(a.try_hold(302 * MS, 5 * MS, 260 * MS, MS), Hold::Acquired);
    }

    #[test]
    fn wants_and_activity_of_other_slices() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), 1, 11, 0);
        let a2 = open(dir.path(), 1, 12, 0);
        let b = open(dir.path(), 2, 22, 0);
        assert!(!a.others_want(100 * MS, 2 * MS));
        a2.note_want(100 * MS, 100 * MS);
        assert!(a.others_want(101 * MS, 2 * MS));
        assert!(!a.others_want(103 * MS, 2 * MS));
        // a2 is the same slice: not "another slice".
        assert!(!a.other_slices_busy(101 * MS, 100 * MS));
        b.note_active(150 * MS);
        assert!(a.other_slices_busy(200 * MS, 100 * MS));
        assert!(!a.other_slices_busy(300 * MS, 100 * MS));
        b.leave();
        assert!(!a.other_slices_busy(151 * MS, 100 * MS));
    }

    /// Run by `a_holder_killed_by_sigkill_blocks_no_one_past_its_lease` in a child
    /// process: takes the turn, says so, and waits to be killed.
    #[test]
    #[ignore = "helper process of another test"]
    fn turn_holding_child() {
        let Some(dir) = std::env::var_os("TURNS_TEST_DIR") else {
            return;
        };
        let dir = PathBuf::from(dir);
        let now = crate::clock::monotonic_ns();
        let mut t = GpuTurns::open(&dir, "GPU-kill", 1, process_key(), now).unwrap();
        assert_eq!(t.try_hold(now, 300 * MS, now, MS), Hold::Acquired);
        std::fs::write(dir.join("held"), b"1").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }

    #[test]
    fn a_holder_killed_by_sigkill_blocks_no_one_past_its_lease() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "turns::tests::turn_holding_child", "--ignored"])
            .env("TURNS_TEST_DIR", dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !dir.path().join("held").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "the child never took the turn"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SIGKILL: no cleanup runs in the child.
        child.kill().unwrap();
        child.wait().unwrap();
        let clock = crate::clock::MonotonicClock;
        use crate::clock::Clock;
        let now = clock.now_ns();
        let mut me = GpuTurns::open(dir.path(), "GPU-kill", 2, process_key(), now).unwrap();
        let first = me.try_hold(now, 10 * MS, now, MS);
        assert!(
            matches!(first, Hold::Busy { .. }),
            "the dead holder's lease still runs: {first:?}"
        );
        // Once its lease has run out the turn is free, with nobody's help.
        let mut got = None;
        while got.is_none() {
            let t = clock.now_ns();
            assert!(t < now + 10 * 1_000 * MS, "the turn never came free");
            if me.try_hold(t, 10 * MS, now, MS) == Hold::Acquired {
                got = Some(t);
            }
            clock.sleep_ns(MS);
        }
        assert!(got.unwrap() >= now, "acquired after the lease");
    }

    #[test]
    fn a_waiter_is_woken_by_the_release_not_by_its_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let mut holder = open(dir.path(), 1, 11, 0);
        let waiter = open(dir.path(), 2, 22, 0);
        assert_eq!(holder.try_hold(0, 60_000 * MS, 0, MS), Hold::Acquired);
        let seen = waiter.releases();
        let started = std::time::Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(50));
                holder.release();
            });
            // A 20-second timeout: only the release's wake-up ends the wait early.
            waiter.wait_release(seen, 20_000 * MS);
        });
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_ne!(waiter.releases(), seen);
    }

    #[test]
    fn a_foreign_file_is_refused_and_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("GPU-x.turns"), b"not a turn file").unwrap();
        let e = GpuTurns::open(dir.path(), "GPU-x", 1, 1, 0)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("GPU-x.turns") && e.contains("not a gpuslice turn file"),
            "{e}"
        );
    }

    #[test]
    fn slots_of_silent_processes_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let mut all = Vec::new();
        for k in 0..SLOTS as u64 {
            all.push(open(dir.path(), 1, k + 1, 0));
        }
        assert!(GpuTurns::open(dir.path(), "GPU-test", 1, 999, 1).is_err());
        // A minute later they are all stale.
        let late = GpuTurns::open(dir.path(), "GPU-test", 1, 999, STALE_NS + 1).unwrap();
        assert_eq!(late.slot, 0);
    }

    #[test]
    fn links_and_other_files_at_a_turn_file_name_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"someone else's file").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("GPU-link.turns")).unwrap();
        let err = GpuTurns::open(dir.path(), "GPU-link", 1, 1, 0)
            .err()
            .unwrap();
        assert!(matches!(err, TurnError::Refused { .. }), "{err}");
        assert!(err.to_string().contains("GPU-link.turns"), "{err}");
        assert_eq!(std::fs::read(&victim).unwrap(), b"someone else's file");
        // A dangling link: nothing is created where it points.
        std::os::unix::fs::symlink(dir.path().join("made"), dir.path().join("GPU-d.turns"))
            .unwrap();
        assert!(GpuTurns::open(dir.path(), "GPU-d", 1, 1, 0).is_err());
        assert!(!dir.path().join("made").exists());
        std::fs::create_dir(dir.path().join("GPU-dir.turns")).unwrap();
        assert!(GpuTurns::open(dir.path(), "GPU-dir", 1, 1, 0).is_err());
    }

    #[test]
    fn a_turn_folder_is_made_shared_and_only_at_its_last_component() {
        let base = tempfile::tempdir().unwrap();
        let gpus = base.path().join("gpus");
        GpuTurns::open(&gpus, "GPU-test", 1, 1, 0).unwrap();
        let mode = std::fs::metadata(&gpus).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777);
        let deep = base.path().join("missing/gpus");
        assert!(GpuTurns::open(&deep, "GPU-test", 1, 1, 0).is_err());
        assert!(!base.path().join("missing").exists());
        std::os::unix::fs::symlink(&gpus, base.path().join("link")).unwrap();
        let err = GpuTurns::open(&base.path().join("link"), "GPU-test", 1, 1, 0)
            .err()
            .unwrap();
        assert!(matches!(err, TurnError::Refused { .. }), "{err}");
    }
}
