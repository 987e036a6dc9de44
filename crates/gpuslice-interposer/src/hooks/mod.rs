//! The memory hooks, by allocation path: every driver call that allocates or frees device
//! memory, reports memory, or creates a context, wrapped so that the slice's ledger is
//! charged before memory is taken and credited after it is given back. Each hook returns
//! a valid `CUresult`; a refusal is `CUDA_ERROR_OUT_OF_MEMORY`, exactly what a full GPU
//! returns. The exported hooks are named by `entry.rs`; the launch hooks are in
//! `launch.rs`, the NVML ones in `nvml_view/`.

pub mod alloc;
pub mod array;
mod common;
pub mod context;
pub mod graph;
pub mod pool;
pub mod vmm;
