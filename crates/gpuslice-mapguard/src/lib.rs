//! The mapping guard: what keeps a process alive when another process cuts short a
//! shared file it has mapped.
//!
//! gpuslice shares state between processes through shared mappings of files: a slice's
//! ledger (writable by every process of the slice, containers included) and the per-GPU
//! turn files of compute slices (writable by every compute slice of the host). Reading a
//! page of a mapping past the end of its file raises `SIGBUS`, whose default action ends
//! the process. So a process that can write such a file could kill every process that
//! maps it, in other slices too.
//!
//! A process calls [`install`] once, explicitly, and then [`register`]s the mappings to
//! guard. The `SIGBUS` handler, for a fault raised by the kernel (`BUS_ADRERR`) at an
//! address inside a registered mapping, maps private zero pages over the whole mapping
//! (`MAP_FIXED`), marks it truncated and returns: the faulting instruction runs again on
//! the zero pages, the mapping reads as zeros from then on, and
//! [`Registration::truncated`] says so, so that the owner discards what it read. Any other
//! `SIGBUS` (another mapping, or one sent by a process) gets the disposition the process
//! had before [`install`]: its handler is called, or the default action ends the process
//! as it would have. A handler the program installs after [`install`] replaces this one;
//! then a truncation ends the process as it would have without the guard.
//!
//! Who installs it: the host-side tools (the agent, `gpuslice status`, `run`, `cdi`),
//! through `gpuslice_ledger::guard::install`, which also registers every ledger they map;
//! and the interposer, only in processes of compute slices and only for the per-GPU turn
//! files (a slice's own ledger is never guarded there: read as zeros, it would lift the
//! slice's limits, so a slice member that truncates it breaks its own slice, as
//! docs/design.md says).
//!
//! The handler does only async-signal-safe work: atomic loads and stores of the registry
//! (a fixed array, never a lock), `mmap`, `sigaction` and `raise`.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Acquire, Ordering::Release};

use nix::errno::Errno;
use nix::sys::mman::{MapFlags, ProtFlags};
use nix::sys::signal::{self, SaFlags, SigAction, SigHandler, SigSet, Signal};

/// How many mappings one process can have guarded at once.
pub const CAPACITY: usize = 64;

/// Why the guard could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    /// `sigaction` refused the handler.
    #[error("cannot install the SIGBUS handler that guards shared mappings: {0}")]
    Install(#[source] Errno),
    /// The page size could not be read.
    #[error("cannot read the page size for the mapping guard: {0}")]
    PageSize(#[source] Errno),
}

/// One registered mapping: `start == 0` when the entry is free.
struct Region {
    start: AtomicUsize,
    /// Bytes, rounded up to whole pages.
    len: AtomicUsize,
    truncated: AtomicBool,
}

static REGIONS: [Region; CAPACITY] = [const {
    Region {
        start: AtomicUsize::new(0),
        len: AtomicUsize::new(0),
        truncated: AtomicBool::new(false),
    }
}; CAPACITY];

static INSTALLED: AtomicBool = AtomicBool::new(false);
static INSTALLING: Mutex<()> = Mutex::new(());
static PAGE: AtomicUsize = AtomicUsize::new(0);
/// The `SIGBUS` disposition before [`install`].
static PREVIOUS: OnceLock<SigHandler> = OnceLock::new();

/// Installs the `SIGBUS` handler that guards the registered mappings of this process.
/// Idempotent.
pub fn install() -> Result<(), GuardError> {
    let _once = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if INSTALLED.load(Acquire) {
        return Ok(());
    }
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .map_err(GuardError::PageSize)?
        .and_then(|p| usize::try_from(p).ok())
        .filter(|&p| p.is_power_of_two())
        .ok_or(GuardError::PageSize(Errno::EINVAL))?;
    PAGE.store(page, Release);
    let action = SigAction::new(
        SigHandler::SigAction(on_sigbus),
        SaFlags::SA_ONSTACK | SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    // SAFETY: `on_sigbus` is async-signal-safe (see the module documentation) and stays
    // valid for the life of the process.
    let previous =
        unsafe { signal::sigaction(Signal::SIGBUS, &action) }.map_err(GuardError::Install)?;
    // A SIGBUS that arrives between the two lines is handled as if the previous
    // disposition were the default, which is what it is in a tool that just started.
    let _ = PREVIOUS.set(previous.handler());
    INSTALLED.store(true, Release);
    Ok(())
}

/// Whether [`install`] has run in this process.
pub fn installed() -> bool {
    INSTALLED.load(Acquire)
}

/// A registered mapping; dropping it unregisters the mapping, which must happen before
/// the mapping is unmapped.
#[derive(Debug)]
pub struct Registration {
    index: usize,
}

/// The outcome of [`register`].
#[derive(Debug)]
pub enum Registered {
    /// The guard is not installed: the mapping is not watched.
    Unguarded,
    /// The mapping is watched.
    Guarded(Registration),
    /// The guard is installed, but [`CAPACITY`] mappings are watched already.
    Full,
}

/// Registers the mapping at `start`, `len` bytes long (page aligned, as `mmap` returns).
pub fn register(start: *const u8, len: usize) -> Registered {
    if !installed() || start.is_null() || len == 0 {
        return Registered::Unguarded;
    }
    let page = PAGE.load(Acquire);
    let len = len.div_ceil(page).saturating_mul(page);
    for (index, region) in REGIONS.iter().enumerate() {
        if region
            .start
            .compare_exchange(0, start as usize, Acquire, Acquire)
            .is_ok()
        {
            region.truncated.store(false, Release);
            region.len.store(len, Release);
            return Registered::Guarded(Registration { index });
        }
    }
    Registered::Full
}

impl Registration {
    /// Whether the handler has replaced the mapping with zero pages.
    pub fn truncated(&self) -> bool {
        REGIONS[self.index].truncated.load(Acquire)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let region = &REGIONS[self.index];
        region.len.store(0, Release);
        region.truncated.store(false, Release);
        region.start.store(0, Release);
    }
}

/// Replaces the registered mapping that holds `addr` with zero pages. Returns whether
/// `addr` was in one (and the replacement worked).
fn cover(addr: usize) -> bool {
    for region in &REGIONS {
        let start = region.start.load(Acquire);
        let len = region.len.load(Acquire);
        if start == 0 || addr < start || addr - start >= len {
            continue;
        }
        let (Some(at), Some(length)) = (NonZeroUsize::new(start), NonZeroUsize::new(len)) else {
            return false;
        };
        // SAFETY: [start, start + len) is a registered mapping of this process that is
        // still mapped (it is unregistered before it is unmapped, and a fault inside it
        // means someone is reading it). Registered mappings are only accessed as atomics
        // valid for any bit pattern, so replacing the pages with private zero pages of
        // the same size is, to every reader, the same as a writer zeroing the file;
        // nothing else lives there.
        let mapped = unsafe {
            nix::sys::mman::mmap_anonymous(
                Some(at),
                length,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE | MapFlags::MAP_FIXED,
            )
        };
        if mapped.is_err() {
            return false;
        }
        region.truncated.store(true, Release);
        return true;
    }
    false
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    let errno = Errno::last_raw();
    // SAFETY: the kernel passes a valid `siginfo_t` to a handler installed with
    // SA_SIGINFO (which `SigHandler::SigAction` sets); `si_addr` is meaningful for the
    // kernel's own fault codes, and only read as a number here.
    let (code, addr) = unsafe { ((*info).si_code, (*info).si_addr() as usize) };
    if !(code == libc::BUS_ADRERR && cover(addr)) {
        pass_on(sig, info, context, code);
    }
    Errno::set_raw(errno);
}

/// Gives a `SIGBUS` that is not a truncated mapping's to the disposition the process had
/// before [`install`].
fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void, code: i32) {
    // `si_code` <= 0: sent by a process (kill, tgkill, sigqueue), not raised by a fault.
    let sent = code <= 0;
    match PREVIOUS.get().copied().unwrap_or(SigHandler::SigDfl) {
        SigHandler::SigAction(previous) => previous(sig, info, context),
        SigHandler::Handler(previous) => previous(sig),
        SigHandler::SigIgn if sent => {}
        // The default action, or "ignore", which the kernel does not honour for a fault
        // either: put the default back and let the signal take its course. A fault runs
        // again when the handler returns and ends the process; a sent signal is raised
        // again, and is delivered as soon as the handler returns.
        SigHandler::SigDfl | SigHandler::SigIgn => {
            let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
            // SAFETY: restores the default disposition, which needs no handler.
            let _ = unsafe { signal::sigaction(Signal::SIGBUS, &default) };
            if sent {
                let _ = signal::raise(Signal::SIGBUS);
            }
        }
    }
}
