//! Simulated GPU hardware shared by the fake CUDA driver (`libcuda.so`) and the fake NVML
//! (`libnvidia-ml.so`) used to test gpuslice without a GPU: device configuration from the
//! environment, the cross-process memory table, process liveness and fault injection.
//!
//! Environment: `FAKE_GPU_STATE` (state file; unset: private in-process state),
//! `FAKE_GPU_COUNT`, `FAKE_GPU_MEMORY`, `FAKE_GPU_UUIDS`, `FAKE_GPU_NAME`.

pub mod config;
pub mod fault;
pub mod process;
pub mod size;
pub mod state;

use std::path::Path;

pub use config::{DeviceConfig, GpuConfig, MAX_DEVICES};
pub use state::{Activity, ChargeError, Guard, ProcessUsage, SharedState, StateError};

fn with_existing<R>(path: &Path, default: R, f: impl FnOnce(&mut Guard<'_>) -> R) -> R {
    match SharedState::open_existing(path) {
        Ok(Some(state)) => f(&mut state.lock()),
        _ => default,
    }
}

/// Highest sum of used (allocation) bytes over all live processes ever observed on `dev`,
/// read from the state file at `path` (0 if it does not exist).
pub fn peak_used(path: impl AsRef<Path>, dev: usize) -> u64 {
    with_existing(path.as_ref(), 0, |g| g.peak_used(dev))
}

/// Like [`peak_used`] but counting context and module bytes too.
pub fn peak_physical(path: impl AsRef<Path>, dev: usize) -> u64 {
    with_existing(path.as_ref(), 0, |g| g.peak_physical(dev))
}

/// Allocation bytes `pid` holds on `dev` (0 for dead processes).
pub fn used_by_pid(path: impl AsRef<Path>, dev: usize, pid: u32) -> u64 {
    with_existing(path.as_ref(), 0, |g| g.usage(pid, dev).used)
}

/// Context and module bytes `pid` holds on `dev` (0 for dead processes).
pub fn context_by_pid(path: impl AsRef<Path>, dev: usize, pid: u32) -> u64 {
    with_existing(path.as_ref(), 0, |g| g.usage(pid, dev).context)
}

/// Sum of used plus context bytes of all live processes on `dev`.
pub fn in_use(path: impl AsRef<Path>, dev: usize) -> u64 {
    with_existing(path.as_ref(), 0, |g| g.in_use(dev))
}

/// Resets every device's peaks to its current usage.
pub fn reset_peak(path: impl AsRef<Path>) {
    with_existing(path.as_ref(), (), |g| g.reset_peak());
}
