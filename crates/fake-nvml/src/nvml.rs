//! The library's global state: the init refcount, the simulated machine it was initialised
//! with, the fault plan, and the device-handle encoding.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use fake_gpu::fault::FaultPlan;
use fake_gpu::{GpuConfig, MAX_DEVICES, SharedState};

use crate::types::*;

/// How pids are reported to a caller inside a PID namespace (`FAKE_NVML_PID_MODE`); see
/// [`crate::view`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidMode {
    /// `native` (default): every process under the PID it is stored with (its host PID),
    /// as if no namespaces were involved.
    Native,
    /// `host-pids`: drivers before 535.113. Every process of the host, under host PIDs.
    HostPids,
    /// `translated-broken-memory`: 535.113 to 560 and all 535.x/550.x. The caller's
    /// namespace only, translated, but per-process memory is not available (or 0 with
    /// `FAKE_NVML_BROKEN_MEMORY=zero`).
    TranslatedBrokenMemory,
    /// `translated`: 565 and later. The caller's namespace only, translated, with memory.
    Translated,
}

impl PidMode {
    /// Parses a `FAKE_NVML_PID_MODE` value.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text.trim() {
            "" | "native" => PidMode::Native,
            "host-pids" => PidMode::HostPids,
            "translated-broken-memory" => PidMode::TranslatedBrokenMemory,
            "translated" => PidMode::Translated,
            _ => return None,
        })
    }
}

/// What `nvmlInit` sets up.
pub struct Machine {
    pub cfg: GpuConfig,
    pub state: SharedState,
    pub pid_mode: PidMode,
    /// In [`PidMode::TranslatedBrokenMemory`], report 0 instead of "not available".
    pub broken_memory_zero: bool,
}

struct Global {
    init_count: u32,
    machine: Option<&'static Machine>,
}

static GLOBAL: Mutex<Global> = Mutex::new(Global {
    init_count: 0,
    machine: None,
});
static MACHINE: OnceLock<Result<Machine, String>> = OnceLock::new();
static FAULTS: OnceLock<FaultPlan> = OnceLock::new();
static WARNED_PID_MODE: AtomicU32 = AtomicU32::new(0);

/// Device handles point into this array, one element per device.
static HANDLES: [u8; MAX_DEVICES] = [0; MAX_DEVICES];

/// The code `symbol` must fail with under `FAKE_NVML_FAIL`, if any.
pub fn injected(symbol: &str) -> Option<NvmlReturn> {
    FAULTS
        .get_or_init(|| FaultPlan::from_env("FAKE_NVML_FAIL"))
        .check(symbol)
        // A code that does not fit an nvmlReturn_t fails nothing.
        .and_then(|c| NvmlReturn::try_from(c).ok())
}

fn build_machine() -> Result<Machine, String> {
    let cfg = GpuConfig::from_env();
    let state = SharedState::from_env(&cfg).map_err(|e| e.to_string())?;
    let mode = std::env::var("FAKE_NVML_PID_MODE").unwrap_or_default();
    let pid_mode = PidMode::parse(&mode).unwrap_or_else(|| {
        if WARNED_PID_MODE.swap(1, Ordering::Relaxed) == 0 {
            eprintln!(
                "fake-nvml: FAKE_NVML_PID_MODE={mode:?} is not one of native, host-pids, translated-broken-memory, translated; using native"
            );
        }
        PidMode::Native
    });
    let broken_memory_zero = std::env::var("FAKE_NVML_BROKEN_MEMORY").as_deref() == Ok("zero");
    Ok(Machine {
        cfg,
        state,
        pid_mode,
        broken_memory_zero,
    })
}

/// `nvmlInit*`: takes one reference.
pub fn init() -> NvmlReturn {
    let mut g = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    match MACHINE.get_or_init(build_machine) {
        Ok(m) => {
            g.machine = Some(m);
            g.init_count = g.init_count.saturating_add(1);
            NVML_SUCCESS
        }
        Err(e) => {
            eprintln!("fake-nvml: cannot open the simulated GPU state: {e}");
            NVML_ERROR_DRIVER_NOT_LOADED
        }
    }
}

/// `nvmlShutdown`: drops one reference.
pub fn shutdown() -> NvmlReturn {
    let mut g = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    if g.init_count == 0 {
        return NVML_ERROR_UNINITIALIZED;
    }
    g.init_count -= 1;
    NVML_SUCCESS
}

/// The machine, if NVML is initialised.
pub fn machine() -> Result<&'static Machine, NvmlReturn> {
    let g = GLOBAL.lock().unwrap_or_else(PoisonError::into_inner);
    match g.machine {
        Some(m) if g.init_count > 0 => Ok(m),
        _ => Err(NVML_ERROR_UNINITIALIZED),
    }
}

/// The opaque handle of device `index`.
pub fn handle_of(index: usize) -> *mut std::ffi::c_void {
    HANDLES.as_ptr().wrapping_add(index).cast_mut().cast()
}

/// The device index behind a handle.
pub fn index_of(m: &Machine, handle: *mut std::ffi::c_void) -> Result<usize, NvmlReturn> {
    let off = (handle as usize).wrapping_sub(HANDLES.as_ptr() as usize);
    if handle.is_null() || off >= m.cfg.count() {
        Err(NVML_ERROR_INVALID_ARGUMENT)
    } else {
        Ok(off)
    }
}
