//! A fake `libnvidia-ml.so.1` for GPU-less CI. It reads the simulated devices and the
//! cross-process memory table of `fake-gpu`, so what a process allocates through the fake
//! `libcuda.so.1` shows up in `nvmlDeviceGetMemoryInfo` and in the process lists.
//!
//! Like the real NVML it ignores `CUDA_VISIBLE_DEVICES` and lists every simulated device.
//! Environment: the `FAKE_GPU_*` variables of `fake-gpu`; `FAKE_NVML_FAIL` (fault injection,
//! `SYMBOL@N=CODE` / `SYMBOL@*=CODE`); `FAKE_NVML_PID_MODE` (`native`, the default and only
//! mode so far: report pids as stored, i.e. as seen by the allocating process).
//!
//! Every exported function is an `unsafe extern "C"` entry point whose safety contract is the
//! NVML API documentation: pointer arguments must be null or valid for the documented access.
#![allow(non_snake_case, clippy::missing_safety_doc)]

mod api;
mod nvml;
mod types;

pub use api::*;
