//! The CUDA driver ABI the fake implements: everything of `gpuslice-cuda-abi`'s `cuda`
//! module, plus [`Handle`], the fake's one name for every opaque handle type.

use std::ffi::c_void;

pub use gpuslice_cuda_abi::cuda::*;

/// Any opaque handle (`CUcontext`, `CUstream`, `CUmemoryPool`, ...).
pub type Handle = *mut c_void;
