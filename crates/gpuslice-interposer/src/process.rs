//! This process: its mode (outside any slice, in one, or with a broken configuration),
//! the configuration read once from the environment, the process's one [`Slice`], and
//! what happens at `fork` and at exit.
//!
//! Nothing here runs in a constructor: the slice is built by the first hook that needs
//! it. After `fork` the child drops the parent's slice (a `pthread_atfork` handler) and
//! builds its own on first use, under its own PID.

use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, Ordering::*};

use gpuslice_config::SliceConfig;

use crate::ffi::{CUDA_ERROR_NOT_PERMITTED, CUresult};
use crate::log::report_broken_once;
use crate::slice::Slice;

const MODE_UNKNOWN: u8 = 0;
const MODE_INERT: u8 = 1;
const MODE_SLICED: u8 = 2;
const MODE_BROKEN: u8 = 3;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
static CONFIG: AtomicPtr<Result<SliceConfig, String>> = AtomicPtr::new(std::ptr::null_mut());

fn config() -> &'static Result<SliceConfig, String> {
    let p = CONFIG.load(Acquire);
    if !p.is_null() {
        // SAFETY: published once below and never freed.
        return unsafe { &*p };
    }
    let parsed = SliceConfig::from_process_env().map_err(|e| e.to_string());
    if let Ok(cfg) = &parsed {
        crate::log::set_level(cfg.log_level);
    }
    let boxed = Box::into_raw(Box::new(parsed));
    match CONFIG.compare_exchange(std::ptr::null_mut(), boxed, AcqRel, Acquire) {
        // SAFETY: we just published it.
        Ok(_) => unsafe { &*boxed },
        Err(existing) => {
            // SAFETY: we own `boxed`, nobody saw it.
            drop(unsafe { Box::from_raw(boxed) });
            // SAFETY: published by the winner and never freed.
            unsafe { &*existing }
        }
    }
}

fn mode() -> u8 {
    let m = MODE.load(Relaxed);
    if m != MODE_UNKNOWN {
        return m;
    }
    let m = match config() {
        Ok(cfg) if cfg.is_sliced() => MODE_SLICED,
        Ok(_) => MODE_INERT,
        Err(_) => MODE_BROKEN,
    };
    MODE.store(m, Relaxed);
    m
}

/// Whether entry points should hand out hooks. A process outside any slice gets the
/// real driver untouched, so it pays nothing; a broken configuration still gets hooks,
/// so that they can refuse.
pub fn hooks_wanted() -> bool {
    mode() != MODE_INERT
}

/// Whether launch hooks should be handed out: only to a slice with a compute limit (or
/// a broken configuration, so that it can refuse), so that no other process pays for
/// them.
pub fn launch_hooks_wanted() -> bool {
    match config() {
        Ok(c) => c.compute.is_limited(),
        Err(_) => true,
    }
}

/// `GPUSLICE_SMI_IOCTL` as this process's configuration has it; the configuration's
/// error when it is broken.
pub fn configured_smi_ioctl() -> Result<Option<gpuslice_config::SmiIoctl>, &'static str> {
    config()
        .as_ref()
        .map(|c| c.smi_ioctl)
        .map_err(String::as_str)
}

/// What a hook should do.
pub enum Access {
    /// No slice: call the driver and do nothing else.
    PassThrough,
    /// Enforce this slice.
    Slice(&'static Slice),
    /// Refuse with this code (the configuration or the ledger is unusable).
    Refuse(CUresult),
}

/// The slice of this process, building it on first use.
pub fn access() -> Access {
    match mode() {
        MODE_INERT => return Access::PassThrough,
        MODE_BROKEN => {
            if let Err(message) = config() {
                report_broken_once(message);
            }
            return Access::Refuse(CUDA_ERROR_NOT_PERMITTED);
        }
        _ => {}
    }
    match slice() {
        Ok(s) => Access::Slice(s),
        Err(message) => {
            report_broken_once(message);
            Access::Refuse(CUDA_ERROR_NOT_PERMITTED)
        }
    }
}

static SLICE: AtomicPtr<Result<Slice, String>> = AtomicPtr::new(std::ptr::null_mut());
static SLICE_INIT_LOCK: AtomicU32 = AtomicU32::new(0);
static ATFORK_REGISTERED: AtomicU32 = AtomicU32::new(0);

fn slice() -> Result<&'static Slice, &'static str> {
    let p = SLICE.load(Acquire);
    if !p.is_null() {
        // SAFETY: published below; only replaced (never freed) in a forked child.
        return unsafe { &*p }.as_ref().map_err(String::as_str);
    }
    while SLICE_INIT_LOCK
        .compare_exchange(0, 1, Acquire, Relaxed)
        .is_err()
    {
        std::thread::yield_now();
    }
    let mut p = SLICE.load(Acquire);
    if p.is_null() {
        let built = match config() {
            Ok(c) => Slice::build(c.clone()),
            Err(e) => Err(e.clone()),
        };
        p = Box::into_raw(Box::new(built));
        SLICE.store(p, Release);
        if ATFORK_REGISTERED.swap(1, Relaxed) == 0 {
            // SAFETY: registering plain extern "C" functions.
            unsafe {
                libc::pthread_atfork(None, None, Some(after_fork_in_child));
                libc::atexit(at_exit);
            }
        }
    }
    SLICE_INIT_LOCK.store(0, Release);
    // SAFETY: `p` came from Box::into_raw above (or from another thread's, published
    // with Release and read with Acquire under the init lock); it is never freed, only
    // replaced in a forked child, so the reference lives for the process.
    unsafe { &*p }.as_ref().map_err(String::as_str)
}

/// The slice of this process if it was built already (and built without error); never
/// builds one. For exit handlers, which must not start a slice in a process that never
/// used the GPU.
pub fn existing() -> Option<&'static Slice> {
    let p = SLICE.load(Acquire);
    if p.is_null() {
        return None;
    }
    // SAFETY: published by `slice`; only replaced (never freed) in a forked child.
    let slice = unsafe { &*p }.as_ref().ok()?;
    (slice.pid == std::process::id()).then_some(slice)
}

/// In a forked child: forget the parent's slice state (its ledger entry, books and
/// locks belong to the parent). The child builds its own on first use.
extern "C" fn after_fork_in_child() {
    SLICE.store(std::ptr::null_mut(), Release);
    SLICE_INIT_LOCK.store(0, Release);
}

/// On normal exit: give the ledger entry back now instead of waiting for a sweep.
extern "C" fn at_exit() {
    let p = SLICE.load(Acquire);
    if p.is_null() {
        return;
    }
    // SAFETY: published state, never freed.
    if let Ok(slice) = unsafe { &*p }
        && slice.pid == std::process::id()
    {
        slice.compute.leave();
        slice.ledger.unregister(slice.entry);
    }
}

static EXIT_HANDLER: AtomicU32 = AtomicU32::new(0);

/// Registers [`settle_at_exit`] once per process (a forked child inherits both the
/// handler and the flag), when the first context gets a gate. Exit handlers run in the
/// reverse order of registration, so this one runs before those of the libraries that
/// were initialised before the process's first launch, the CUDA runtime's teardown among
/// them: the contexts it settles still exist. The slice's own handler (registered when
/// the slice was built, earlier) runs after it.
pub fn register_compute_exit_handler() {
    if EXIT_HANDLER.swap(1, Relaxed) == 0 {
        // SAFETY: registers a plain extern "C" function with no arguments; atexit only
        // stores the pointer.
        unsafe {
            libc::atexit(settle_at_exit);
        }
    }
}

/// At exit: charges what the process's contexts still have queued, and gives their
/// turns back (see `Compute::leave`). Never builds a slice.
extern "C" fn settle_at_exit() {
    if let Some(s) = existing() {
        s.compute.leave();
    }
}
