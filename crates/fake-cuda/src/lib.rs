//! A stateful fake CUDA driver (`libcuda.so.1`) for testing gpuslice without a GPU.
//!
//! It implements enough of the CUDA 12/13 driver API (devices, contexts, allocations, memory
//! pools, streams, VMM, arrays, modules, graphs with memory nodes, `cuGetProcAddress`) to run
//! the interposer against, and charges every byte of simulated device memory to the calling
//! process in the cross-process state of `fake-gpu`, so tests can check what the hardware
//! would have seen.
//!
//! Environment: the `FAKE_GPU_*` variables of `fake-gpu`; `CUDA_VISIBLE_DEVICES`;
//! `FAKE_CUDA_CONTEXT_BYTES` (300MiB), `FAKE_CUDA_MODULE_BYTES` (2MiB),
//! `FAKE_CUDA_GRANULARITY` (2MiB), `FAKE_CUDA_POOL_CHUNK` (2MiB); `FAKE_CUDA_SM_UTIL`,
//! `FAKE_CUDA_MEM_UTIL` (percent), `FAKE_CUDA_ENCODER_SESSIONS`, `FAKE_CUDA_FBC_SESSIONS`
//! (what a process with a context is recorded doing, for the fake NVML); `FAKE_CUDA_FAIL`
//! (`SYMBOL@N=CODE` / `SYMBOL@*=CODE` fault injection); `CUDA_API_PER_THREAD_DEFAULT_STREAM`.
//!
//! Every exported function is an `unsafe extern "C"` entry point whose safety contract is the
//! CUDA driver API documentation: pointer arguments must be null or valid for the documented
//! access. No entry point panics; each returns a `CUresult`.
#![allow(non_snake_case, clippy::missing_safety_doc, clippy::too_many_arguments)]

mod array;
mod context;
mod device;
mod driver;
mod errors;
mod graph;
mod init;
mod memory;
mod module;
mod pool;
mod procaddr;
mod stream;
mod timing;
mod types;
mod vmm;
