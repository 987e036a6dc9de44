//! The C ABI the hooks speak: the CUDA driver and NVML types, codes and layouts of
//! `gpuslice-cuda-abi`, re-exported so that every hook file names them as `crate::ffi`.

pub use gpuslice_cuda_abi::cuda::*;
pub use gpuslice_cuda_abi::nvml::*;
