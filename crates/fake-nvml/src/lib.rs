//! A fake `libnvidia-ml.so.1` for GPU-less CI. It reads the simulated devices and the
//! cross-process memory table of `fake-gpu`, so what a process allocates through the fake
//! `libcuda.so.1` shows up in `nvmlDeviceGetMemoryInfo` and in the process lists.
//!
//! Like the real NVML it ignores `CUDA_VISIBLE_DEVICES` and lists every simulated device.
//! Environment: the `FAKE_GPU_*` variables of `fake-gpu`; `FAKE_NVML_FAIL` (fault injection,
//! `SYMBOL@N=CODE` / `SYMBOL@*=CODE`); `FAKE_NVML_PID_MODE` (`native`, `host-pids`,
//! `translated-broken-memory`, `translated`: how a caller inside a PID namespace sees
//! processes, like the three driver branches; see `src/view.rs`); `FAKE_NVML_BROKEN_MEMORY=zero`
//! (per-process memory 0 instead of "not available" in `translated-broken-memory`).
//!
//! Test hook: `fakeNvmlSmiTable` answers the kernel driver's process-list ioctls the way
//! each branch does, behind a seccomp trap in the calling process, and sends them through
//! libc's `ioctl` (see `src/rm.rs`).
//!
//! Every exported function is an `unsafe extern "C"` entry point whose safety contract is the
//! NVML API documentation: pointer arguments must be null or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod activity;
mod api;
mod nvml;
mod rm;
mod types;
mod view;

pub use api::*;
pub use rm::fakeNvmlSmiTable;
