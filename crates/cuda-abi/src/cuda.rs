//! The CUDA driver API (`cuda.h` of CUDA 12 and 13): handle types, `CUresult` codes,
//! attribute and flag values, the structures gpuslice reads or fills in, and the
//! function-pointer types of the entry points called by more than one crate.

use std::ffi::{c_int, c_uint, c_void};

/// `CUresult`.
pub type CUresult = c_int;
/// `CUdevice`: a device ordinal.
pub type CUdevice = c_int;
/// `CUdeviceptr`: a device address.
pub type CUdeviceptr = u64;
/// `CUstream`.
pub type CUstream = *mut c_void;
/// `CUcontext`.
pub type CUcontext = *mut c_void;
/// `CUevent`.
pub type CUevent = *mut c_void;
/// `CUmemoryPool`.
pub type CUmemoryPool = *mut c_void;
/// `CUarray`.
pub type CUarray = *mut c_void;
/// `CUmipmappedArray`.
pub type CUmipmappedArray = *mut c_void;
/// `CUgraph`.
pub type CUgraph = *mut c_void;
/// `CUgraphExec`.
pub type CUgraphExec = *mut c_void;
/// `CUgraphNode`.
pub type CUgraphNode = *mut c_void;
/// `CUmemGenericAllocationHandle`.
pub type CUmemGenericAllocationHandle = u64;

pub const CUDA_SUCCESS: CUresult = 0;
pub const CUDA_ERROR_INVALID_VALUE: CUresult = 1;
pub const CUDA_ERROR_OUT_OF_MEMORY: CUresult = 2;
pub const CUDA_ERROR_NOT_INITIALIZED: CUresult = 3;
pub const CUDA_ERROR_NO_DEVICE: CUresult = 100;
pub const CUDA_ERROR_INVALID_DEVICE: CUresult = 101;
pub const CUDA_ERROR_INVALID_CONTEXT: CUresult = 201;
pub const CUDA_ERROR_FILE_NOT_FOUND: CUresult = 301;
pub const CUDA_ERROR_OPERATING_SYSTEM: CUresult = 304;
pub const CUDA_ERROR_INVALID_HANDLE: CUresult = 400;
pub const CUDA_ERROR_ILLEGAL_STATE: CUresult = 401;
pub const CUDA_ERROR_NOT_FOUND: CUresult = 500;
pub const CUDA_ERROR_NOT_READY: CUresult = 600;
pub const CUDA_ERROR_NOT_PERMITTED: CUresult = 800;
pub const CUDA_ERROR_NOT_SUPPORTED: CUresult = 801;
pub const CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED: CUresult = 900;
pub const CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: CUresult = 901;

/// `CUstreamCaptureMode`.
pub const CU_STREAM_CAPTURE_MODE_GLOBAL: c_int = 0;
pub const CU_STREAM_CAPTURE_MODE_RELAXED: c_int = 2;

/// `CUstreamCaptureStatus`.
pub const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;
pub const CU_STREAM_CAPTURE_STATUS_ACTIVE: c_int = 1;

/// `CUdriverProcAddressQueryResult` values.
pub const CU_GET_PROC_ADDRESS_SUCCESS: c_int = 0;
pub const CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND: c_int = 1;
pub const CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT: c_int = 2;
/// `cuGetProcAddress` flags.
pub const CU_GET_PROC_ADDRESS_LEGACY_STREAM: u64 = 1;
pub const CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM: u64 = 2;

/// Special stream handles (`CU_STREAM_LEGACY`, `CU_STREAM_PER_THREAD`).
pub const CU_STREAM_LEGACY: u64 = 0x1;
pub const CU_STREAM_PER_THREAD: u64 = 0x2;

/// `CUmemAllocationType` / `CUmemLocationType` / `CUmemAllocationHandleType`.
pub const CU_MEM_ALLOCATION_TYPE_PINNED: c_int = 1;
pub const CU_MEM_LOCATION_TYPE_DEVICE: c_int = 1;
pub const CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR: c_int = 1;

/// `CUmemPool_attribute` values (the memory ones are read as `cuuint64_t`).
pub const CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES: c_int = 1;
pub const CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES: c_int = 3;
pub const CU_MEMPOOL_ATTR_RELEASE_THRESHOLD: c_int = 4;
pub const CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT: c_int = 5;
pub const CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH: c_int = 6;
pub const CU_MEMPOOL_ATTR_USED_MEM_CURRENT: c_int = 7;
pub const CU_MEMPOOL_ATTR_USED_MEM_HIGH: c_int = 8;

/// `CUgraphMem_attribute`.
pub const CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT: c_int = 0;
pub const CU_GRAPH_MEM_ATTR_USED_MEM_HIGH: c_int = 1;
pub const CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT: c_int = 2;
pub const CU_GRAPH_MEM_ATTR_RESERVED_MEM_HIGH: c_int = 3;

/// `CUgraphNodeType`.
pub const CU_GRAPH_NODE_TYPE_KERNEL: c_int = 0;
pub const CU_GRAPH_NODE_TYPE_EMPTY: c_int = 2;
pub const CU_GRAPH_NODE_TYPE_GRAPH: c_int = 4;
pub const CU_GRAPH_NODE_TYPE_MEM_ALLOC: c_int = 10;
pub const CU_GRAPH_NODE_TYPE_MEM_FREE: c_int = 11;

/// `CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD`.
pub const CUDA_GRAPH_INSTANTIATE_FLAG_UPLOAD: u64 = 2;

/// `CU_AD_FORMAT_FLOAT`: a `CUarray_format` of 32-bit float channels.
pub const CU_AD_FORMAT_FLOAT: c_int = 0x20;

/// `CUDA_ARRAY3D_SPARSE`: the array has no memory until it is mapped.
pub const CUDA_ARRAY3D_SPARSE: c_uint = 0x40;
/// `CUDA_ARRAY3D_DEFERRED_MAPPING`: the array gets its memory later, from a VMM mapping.
pub const CUDA_ARRAY3D_DEFERRED_MAPPING: c_uint = 0x80;

/// `CUmemAttach_flags` accepted by `cuMemAllocManaged`.
pub const CU_MEM_ATTACH_GLOBAL: c_uint = 1;
pub const CU_MEM_ATTACH_HOST: c_uint = 2;

/// Bytes per channel element of a `CUarray_format`, for the formats of `cuda.h` with
/// 8, 16 and 32-bit channels; `None` for any other.
pub fn array_format_bytes(format: c_int) -> Option<u64> {
    Some(match format {
        0x01 | 0x08 => 1,        // (UN)SIGNED_INT8
        0x02 | 0x09 | 0x10 => 2, // (UN)SIGNED_INT16, HALF
        0x03 | 0x0a | 0x20 => 4, // (UN)SIGNED_INT32, FLOAT
        _ => return None,
    })
}

/// `CUmemLocation`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CUmemLocation {
    /// `type`: a `CUmemLocationType`.
    pub type_: c_int,
    pub id: c_int,
}

/// `CUmemAllocationProp`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemAllocationProp {
    /// `type`: a `CUmemAllocationType`.
    pub type_: c_int,
    pub requested_handle_types: c_int,
    pub location: CUmemLocation,
    pub win32_handle_meta_data: *mut c_void,
    /// `allocFlags`: compressionType, gpuDirectRDMACapable, usage (u16), reserved[4].
    pub alloc_flags: [u8; 8],
}

/// `CUmemPoolProps` (88 bytes in CUDA 11.2 to 13).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CUmemPoolProps {
    pub alloc_type: c_int,
    pub handle_types: c_int,
    pub location: CUmemLocation,
    pub win32_security_attributes: *mut c_void,
    pub max_size: usize,
    pub usage: u16,
    pub reserved: [u8; 54],
}

/// `CUDA_MEM_ALLOC_NODE_PARAMS` (v1).
#[repr(C)]
#[derive(Debug)]
pub struct CudaMemAllocNodeParams {
    pub pool_props: CUmemPoolProps,
    pub access_descs: *const c_void,
    pub access_desc_count: usize,
    pub bytesize: usize,
    pub dptr: CUdeviceptr,
}

/// `CUDA_ARRAY_DESCRIPTOR` (v2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CudaArrayDescriptor {
    pub width: usize,
    pub height: usize,
    pub format: c_int,
    pub num_channels: c_uint,
}

/// `CUDA_ARRAY3D_DESCRIPTOR` (v2).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct CudaArray3dDescriptor {
    pub width: usize,
    pub height: usize,
    pub depth: usize,
    pub format: c_int,
    pub num_channels: c_uint,
    pub flags: c_uint,
}

/// `CUDA_ARRAY_MEMORY_REQUIREMENTS`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct CudaArrayMemoryRequirements {
    pub size: usize,
    pub alignment: usize,
    pub reserved: [c_uint; 4],
}

/// `CUlaunchConfig`.
#[repr(C)]
#[derive(Debug)]
pub struct CUlaunchConfig {
    pub grid_dim: [c_uint; 3],
    pub block_dim: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub h_stream: CUstream,
    pub attrs: *mut c_void,
    pub num_attrs: c_uint,
}

/// `CUDA_KERNEL_NODE_PARAMS` (v1).
#[repr(C)]
#[derive(Debug)]
pub struct CudaKernelNodeParams {
    pub func: *mut c_void,
    pub grid_dim: [c_uint; 3],
    pub block_dim: [c_uint; 3],
    pub shared_mem_bytes: c_uint,
    pub kernel_params: *mut *mut c_void,
    pub extra: *mut *mut c_void,
}

/// `CUDA_GRAPH_INSTANTIATE_PARAMS`.
#[repr(C)]
#[derive(Debug)]
pub struct CudaGraphInstantiateParams {
    pub flags: u64,
    pub h_upload_stream: CUstream,
    pub h_err_node_out: CUgraphNode,
    pub result_out: c_int,
}

/// `cuInit`.
pub type CuInitFn = unsafe extern "C" fn(c_uint) -> CUresult;
/// `cuDeviceGet`.
pub type CuDeviceGetFn = unsafe extern "C" fn(*mut CUdevice, c_int) -> CUresult;
/// `cuDevicePrimaryCtxRetain`.
pub type CuDevicePrimaryCtxRetainFn = unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult;
/// `cuCtxSetCurrent`.
pub type CuCtxSetCurrentFn = unsafe extern "C" fn(CUcontext) -> CUresult;
/// `cuMemAlloc_v2`.
pub type CuMemAllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;
/// `cuMemsetD8_v2`.
pub type CuMemsetD8Fn = unsafe extern "C" fn(CUdeviceptr, u8, usize) -> CUresult;
/// `cuCtxSynchronize`.
pub type CuCtxSynchronizeFn = unsafe extern "C" fn() -> CUresult;
/// `cuGetProcAddress_v2`: symbol, address out, CUDA version, flags, query result out.
pub type CuGetProcAddressFn = unsafe extern "C" fn(
    *const std::ffi::c_char,
    *mut *mut c_void,
    c_int,
    u64,
    *mut c_int,
) -> CUresult;

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_match_cuda_h() {
        assert_eq!(size_of::<CUmemLocation>(), 8);
        assert_eq!(size_of::<CUmemAllocationProp>(), 32);
        assert_eq!(offset_of!(CUmemAllocationProp, location), 8);
        assert_eq!(offset_of!(CUmemAllocationProp, win32_handle_meta_data), 16);
        assert_eq!(offset_of!(CUmemAllocationProp, alloc_flags), 24);
        assert_eq!(size_of::<CUmemPoolProps>(), 88);
        assert_eq!(align_of::<CUmemPoolProps>(), 8);
        assert_eq!(offset_of!(CUmemPoolProps, location), 8);
        assert_eq!(offset_of!(CUmemPoolProps, max_size), 24);
        assert_eq!(offset_of!(CUmemPoolProps, usage), 32);
        assert_eq!(size_of::<CudaMemAllocNodeParams>(), 120);
        assert_eq!(offset_of!(CudaMemAllocNodeParams, access_descs), 88);
        assert_eq!(offset_of!(CudaMemAllocNodeParams, bytesize), 104);
        assert_eq!(offset_of!(CudaMemAllocNodeParams, dptr), 112);
        assert_eq!(size_of::<CudaArrayDescriptor>(), 24);
        assert_eq!(offset_of!(CudaArrayDescriptor, format), 16);
        assert_eq!(size_of::<CudaArray3dDescriptor>(), 40);
        assert_eq!(offset_of!(CudaArray3dDescriptor, flags), 32);
        assert_eq!(size_of::<CudaArrayMemoryRequirements>(), 32);
        assert_eq!(offset_of!(CUlaunchConfig, shared_mem_bytes), 24);
        assert_eq!(offset_of!(CUlaunchConfig, h_stream), 32);
        assert_eq!(size_of::<CUlaunchConfig>(), 56);
        assert_eq!(size_of::<CudaKernelNodeParams>(), 56);
        assert_eq!(offset_of!(CudaKernelNodeParams, kernel_params), 40);
        assert_eq!(size_of::<CudaGraphInstantiateParams>(), 32);
        assert_eq!(offset_of!(CudaGraphInstantiateParams, result_out), 24);
    }

    #[test]
    fn array_formats() {
        assert_eq!(array_format_bytes(0x01), Some(1));
        assert_eq!(array_format_bytes(0x08), Some(1));
        assert_eq!(array_format_bytes(0x10), Some(2));
        assert_eq!(array_format_bytes(0x20), Some(4));
        assert_eq!(array_format_bytes(0x0a), Some(4));
        assert_eq!(array_format_bytes(0x50), None);
    }
}
