//! The table of driver functions the interposer knows by name: the ones it hooks (with
//! the address of the hook) and the ones it only calls. Ids index `real::real`.

use std::ffi::{CStr, c_void};
use std::ptr::null_mut;

/// Which real library a function lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// `libcuda.so.1`.
    Cuda,
    /// `libnvidia-ml.so.1`.
    Nvml,
}

macro_rules! driver_functions {
    ($( $id:ident => $name:literal, $lib:ident, $hook:expr ;)*) => {
        /// Ids of the functions in the table.
        #[allow(non_upper_case_globals, dead_code)]
        pub mod id {
            driver_functions!(@ids 0usize; $($id)*);
        }
        /// Number of entries.
        pub const COUNT: usize = [$($name),*].len();
        const NAMES: [&CStr; COUNT] = [$(
            match CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                Ok(s) => s,
                Err(_) => panic!("bad name"),
            }
        ),*];
        const LIBRARIES: [Library; COUNT] = [$(Library::$lib),*];
        static HOOKS: [HookAddress; COUNT] = [$(HookAddress($hook)),*];
        /// The hook for entry `id`, or null when the function is only called, not hooked.
        pub fn hook_address(id: usize) -> *mut c_void {
            HOOKS.get(id).map(|h| h.0).unwrap_or(null_mut())
        }
    };
    (@ids $n:expr; $first:ident $($rest:ident)*) => {
        pub const $first: usize = $n;
        driver_functions!(@ids $n + 1; $($rest)*);
    };
    (@ids $n:expr;) => {};
}

/// A hook's address in a static table.
struct HookAddress(*mut c_void);
// SAFETY: the addresses are of functions, immutable and valid in every thread.
unsafe impl Sync for HookAddress {}

/// The symbol name of entry `id`.
pub fn name_of(id: usize) -> &'static CStr {
    NAMES[id]
}

/// The library of entry `id`.
pub fn library_of(id: usize) -> Library {
    LIBRARIES[id]
}

/// The hooked entry whose symbol is `name`, if any.
pub fn hooked_id_by_name(name: &CStr) -> Option<usize> {
    let bytes = name.to_bytes();
    if !(bytes.starts_with(b"cu") || bytes.starts_with(b"nvml")) {
        return None;
    }
    (0..COUNT).find(|&id| NAMES[id].to_bytes() == bytes && !hook_address(id).is_null())
}

use crate::compute as c;
use crate::entry as e;
use crate::hooks as h;
use crate::nvml_view as v;

const NONE: *mut c_void = null_mut();

driver_functions! {
    // Entry points.
    cuGetProcAddress => "cuGetProcAddress", Cuda, e::cuGetProcAddress as *mut c_void;
    cuGetProcAddress_v2 => "cuGetProcAddress_v2", Cuda, e::cuGetProcAddress_v2 as *mut c_void;
    cuInit => "cuInit", Cuda, h::cuInit as *mut c_void;
    // Plain allocations.
    cuMemAlloc_v2 => "cuMemAlloc_v2", Cuda, h::cuMemAlloc_v2 as *mut c_void;
    cuMemAllocPitch_v2 => "cuMemAllocPitch_v2", Cuda, h::cuMemAllocPitch_v2 as *mut c_void;
    cuMemAllocManaged => "cuMemAllocManaged", Cuda, h::cuMemAllocManaged as *mut c_void;
    cuMemFree_v2 => "cuMemFree_v2", Cuda, h::cuMemFree_v2 as *mut c_void;
    cuMemGetInfo_v2 => "cuMemGetInfo_v2", Cuda, h::cuMemGetInfo_v2 as *mut c_void;
    cuDeviceTotalMem_v2 => "cuDeviceTotalMem_v2", Cuda, h::cuDeviceTotalMem_v2 as *mut c_void;
    // Stream-ordered allocation.
    cuMemAllocAsync => "cuMemAllocAsync", Cuda, h::cuMemAllocAsync as *mut c_void;
    cuMemAllocAsync_ptsz => "cuMemAllocAsync_ptsz", Cuda, h::cuMemAllocAsync_ptsz as *mut c_void;
    cuMemAllocFromPoolAsync => "cuMemAllocFromPoolAsync", Cuda, h::cuMemAllocFromPoolAsync as *mut c_void;
    cuMemAllocFromPoolAsync_ptsz => "cuMemAllocFromPoolAsync_ptsz", Cuda, h::cuMemAllocFromPoolAsync_ptsz as *mut c_void;
    cuMemFreeAsync => "cuMemFreeAsync", Cuda, h::cuMemFreeAsync as *mut c_void;
    cuMemFreeAsync_ptsz => "cuMemFreeAsync_ptsz", Cuda, h::cuMemFreeAsync_ptsz as *mut c_void;
    cuMemPoolCreate => "cuMemPoolCreate", Cuda, h::cuMemPoolCreate as *mut c_void;
    cuMemPoolDestroy => "cuMemPoolDestroy", Cuda, h::cuMemPoolDestroy as *mut c_void;
    cuMemPoolTrimTo => "cuMemPoolTrimTo", Cuda, h::cuMemPoolTrimTo as *mut c_void;
    // Virtual memory management.
    cuMemCreate => "cuMemCreate", Cuda, h::cuMemCreate as *mut c_void;
    cuMemRelease => "cuMemRelease", Cuda, h::cuMemRelease as *mut c_void;
    // Arrays.
    cuArrayCreate_v2 => "cuArrayCreate_v2", Cuda, h::cuArrayCreate_v2 as *mut c_void;
    cuArray3DCreate_v2 => "cuArray3DCreate_v2", Cuda, h::cuArray3DCreate_v2 as *mut c_void;
    cuArrayDestroy => "cuArrayDestroy", Cuda, h::cuArrayDestroy as *mut c_void;
    cuMipmappedArrayCreate => "cuMipmappedArrayCreate", Cuda, h::cuMipmappedArrayCreate as *mut c_void;
    cuMipmappedArrayDestroy => "cuMipmappedArrayDestroy", Cuda, h::cuMipmappedArrayDestroy as *mut c_void;
    // Contexts (their memory is charged before the driver creates them).
    cuDevicePrimaryCtxRetain => "cuDevicePrimaryCtxRetain", Cuda, h::cuDevicePrimaryCtxRetain as *mut c_void;
    cuDevicePrimaryCtxRelease_v2 => "cuDevicePrimaryCtxRelease_v2", Cuda, h::cuDevicePrimaryCtxRelease_v2 as *mut c_void;
    cuDevicePrimaryCtxRelease => "cuDevicePrimaryCtxRelease", Cuda, h::cuDevicePrimaryCtxRelease as *mut c_void;
    cuDevicePrimaryCtxReset_v2 => "cuDevicePrimaryCtxReset_v2", Cuda, h::cuDevicePrimaryCtxReset_v2 as *mut c_void;
    cuDevicePrimaryCtxReset => "cuDevicePrimaryCtxReset", Cuda, h::cuDevicePrimaryCtxReset as *mut c_void;
    cuCtxCreate => "cuCtxCreate", Cuda, h::cuCtxCreate as *mut c_void;
    cuCtxCreate_v2 => "cuCtxCreate_v2", Cuda, h::cuCtxCreate_v2 as *mut c_void;
    cuCtxCreate_v3 => "cuCtxCreate_v3", Cuda, h::cuCtxCreate_v3 as *mut c_void;
    cuCtxCreate_v4 => "cuCtxCreate_v4", Cuda, h::cuCtxCreate_v4 as *mut c_void;
    // CUDA graphs with memory nodes.
    cuGraphInstantiateWithFlags => "cuGraphInstantiateWithFlags", Cuda, h::cuGraphInstantiateWithFlags as *mut c_void;
    cuGraphInstantiateWithParams => "cuGraphInstantiateWithParams", Cuda, h::cuGraphInstantiateWithParams as *mut c_void;
    cuGraphInstantiateWithParams_ptsz => "cuGraphInstantiateWithParams_ptsz", Cuda, h::cuGraphInstantiateWithParams_ptsz as *mut c_void;
    cuGraphInstantiate_v2 => "cuGraphInstantiate_v2", Cuda, h::cuGraphInstantiate_v2 as *mut c_void;
    cuGraphLaunch => "cuGraphLaunch", Cuda, h::cuGraphLaunch as *mut c_void;
    cuGraphLaunch_ptsz => "cuGraphLaunch_ptsz", Cuda, h::cuGraphLaunch_ptsz as *mut c_void;
    cuGraphUpload => "cuGraphUpload", Cuda, h::cuGraphUpload as *mut c_void;
    cuGraphUpload_ptsz => "cuGraphUpload_ptsz", Cuda, h::cuGraphUpload_ptsz as *mut c_void;
    cuGraphExecDestroy => "cuGraphExecDestroy", Cuda, h::cuGraphExecDestroy as *mut c_void;
    cuDeviceGraphMemTrim => "cuDeviceGraphMemTrim", Cuda, h::cuDeviceGraphMemTrim as *mut c_void;
    // Called, not hooked.
    cuCtxGetDevice => "cuCtxGetDevice", Cuda, NONE;
    cuDeviceGetCount => "cuDeviceGetCount", Cuda, NONE;
    cuDeviceGetUuid_v2 => "cuDeviceGetUuid_v2", Cuda, NONE;
    cuDeviceGetUuid => "cuDeviceGetUuid", Cuda, NONE;
    cuDeviceGetMemPool => "cuDeviceGetMemPool", Cuda, NONE;
    cuMemPoolGetAttribute => "cuMemPoolGetAttribute", Cuda, NONE;
    cuStreamIsCapturing => "cuStreamIsCapturing", Cuda, NONE;
    cuStreamSynchronize => "cuStreamSynchronize", Cuda, c::cuStreamSynchronize as *mut c_void;
    cuStreamSynchronize_ptsz => "cuStreamSynchronize_ptsz", Cuda, c::cuStreamSynchronize_ptsz as *mut c_void;
    cuCtxSynchronize => "cuCtxSynchronize", Cuda, c::cuCtxSynchronize as *mut c_void;
    cuArrayGetMemoryRequirements => "cuArrayGetMemoryRequirements", Cuda, NONE;
    cuMipmappedArrayGetMemoryRequirements => "cuMipmappedArrayGetMemoryRequirements", Cuda, NONE;
    cuGraphGetNodes => "cuGraphGetNodes", Cuda, NONE;
    cuGraphNodeGetType => "cuGraphNodeGetType", Cuda, NONE;
    cuGraphMemAllocNodeGetParams => "cuGraphMemAllocNodeGetParams", Cuda, NONE;
    cuGraphChildGraphNodeGetGraph => "cuGraphChildGraphNodeGetGraph", Cuda, NONE;
    cuDeviceGetGraphMemAttribute => "cuDeviceGetGraphMemAttribute", Cuda, NONE;
    cuDevicePrimaryCtxGetState => "cuDevicePrimaryCtxGetState", Cuda, NONE;
    // ---- Compute slices (compute.rs): launch hooks, handed out only when the slice
    // has a compute limit, and the event functions the meter calls.
    cuLaunchKernel => "cuLaunchKernel", Cuda, c::cuLaunchKernel as *mut c_void;
    cuLaunchKernel_ptsz => "cuLaunchKernel_ptsz", Cuda, c::cuLaunchKernel_ptsz as *mut c_void;
    cuLaunchKernelEx => "cuLaunchKernelEx", Cuda, c::cuLaunchKernelEx as *mut c_void;
    cuLaunchKernelEx_ptsz => "cuLaunchKernelEx_ptsz", Cuda, c::cuLaunchKernelEx_ptsz as *mut c_void;
    cuLaunchCooperativeKernel => "cuLaunchCooperativeKernel", Cuda, c::cuLaunchCooperativeKernel as *mut c_void;
    cuLaunchCooperativeKernel_ptsz => "cuLaunchCooperativeKernel_ptsz", Cuda, c::cuLaunchCooperativeKernel_ptsz as *mut c_void;
    cuCtxGetCurrent => "cuCtxGetCurrent", Cuda, NONE;
    cuEventCreate => "cuEventCreate", Cuda, NONE;
    cuEventRecord => "cuEventRecord", Cuda, NONE;
    cuEventQuery => "cuEventQuery", Cuda, NONE;
    cuStreamQuery => "cuStreamQuery", Cuda, NONE;
    cuEventSynchronize => "cuEventSynchronize", Cuda, c::cuEventSynchronize as *mut c_void;
    cuEventElapsedTime => "cuEventElapsedTime", Cuda, NONE;
    cuEventElapsedTime_v2 => "cuEventElapsedTime_v2", Cuda, NONE;
    cuStreamCreate => "cuStreamCreate", Cuda, NONE;
    cuStreamDestroy => "cuStreamDestroy", Cuda, c::cuStreamDestroy as *mut c_void;
    cuStreamDestroy_v2 => "cuStreamDestroy_v2", Cuda, c::cuStreamDestroy_v2 as *mut c_void;
    cuCtxDestroy_v2 => "cuCtxDestroy_v2", Cuda, c::cuCtxDestroy_v2 as *mut c_void;
    cuCtxDestroy => "cuCtxDestroy", Cuda, c::cuCtxDestroy as *mut c_void;
    cuThreadExchangeStreamCaptureMode => "cuThreadExchangeStreamCaptureMode", Cuda, NONE;
    nvmlInit_v2 => "nvmlInit_v2", Nvml, NONE;
    nvmlDeviceGetHandleByUUID => "nvmlDeviceGetHandleByUUID", Nvml, NONE;
    nvmlDeviceGetIndex => "nvmlDeviceGetIndex", Nvml, NONE;
    nvmlDeviceGetCount_v2 => "nvmlDeviceGetCount_v2", Nvml, NONE;
    nvmlDeviceGetHandleByIndex_v2 => "nvmlDeviceGetHandleByIndex_v2", Nvml, NONE;
    nvmlDeviceGetComputeRunningProcesses_v3 => "nvmlDeviceGetComputeRunningProcesses_v3", Nvml, NONE;
    nvmlDeviceGetComputeRunningProcesses_v2 => "nvmlDeviceGetComputeRunningProcesses_v2", Nvml, NONE;
    // ---- NVML view (nvml_view.rs): what NVML shows inside a slice. Entries above that
    // name the same functions are the interposer's own (unfiltered) calls.
    nvmlView_GetMemoryInfo => "nvmlDeviceGetMemoryInfo", Nvml, v::nvmlDeviceGetMemoryInfo as *mut c_void;
    nvmlView_GetMemoryInfo_v2 => "nvmlDeviceGetMemoryInfo_v2", Nvml, v::nvmlDeviceGetMemoryInfo_v2 as *mut c_void;
    nvmlView_GetUtilizationRates => "nvmlDeviceGetUtilizationRates", Nvml, v::nvmlDeviceGetUtilizationRates as *mut c_void;
    nvmlView_ComputeRunningProcesses => "nvmlDeviceGetComputeRunningProcesses", Nvml, v::nvmlDeviceGetComputeRunningProcesses as *mut c_void;
    nvmlView_ComputeRunningProcesses_v2 => "nvmlDeviceGetComputeRunningProcesses_v2", Nvml, v::nvmlDeviceGetComputeRunningProcesses_v2 as *mut c_void;
    nvmlView_ComputeRunningProcesses_v3 => "nvmlDeviceGetComputeRunningProcesses_v3", Nvml, v::nvmlDeviceGetComputeRunningProcesses_v3 as *mut c_void;
    nvmlView_GraphicsRunningProcesses => "nvmlDeviceGetGraphicsRunningProcesses", Nvml, v::nvmlDeviceGetGraphicsRunningProcesses as *mut c_void;
    nvmlView_GraphicsRunningProcesses_v2 => "nvmlDeviceGetGraphicsRunningProcesses_v2", Nvml, v::nvmlDeviceGetGraphicsRunningProcesses_v2 as *mut c_void;
    nvmlView_GraphicsRunningProcesses_v3 => "nvmlDeviceGetGraphicsRunningProcesses_v3", Nvml, v::nvmlDeviceGetGraphicsRunningProcesses_v3 as *mut c_void;
    nvmlView_MPSComputeRunningProcesses => "nvmlDeviceGetMPSComputeRunningProcesses", Nvml, v::nvmlDeviceGetMPSComputeRunningProcesses as *mut c_void;
    nvmlView_MPSComputeRunningProcesses_v2 => "nvmlDeviceGetMPSComputeRunningProcesses_v2", Nvml, v::nvmlDeviceGetMPSComputeRunningProcesses_v2 as *mut c_void;
    nvmlView_MPSComputeRunningProcesses_v3 => "nvmlDeviceGetMPSComputeRunningProcesses_v3", Nvml, v::nvmlDeviceGetMPSComputeRunningProcesses_v3 as *mut c_void;
    nvmlView_GetRunningProcessDetailList => "nvmlDeviceGetRunningProcessDetailList", Nvml, v::nvmlDeviceGetRunningProcessDetailList as *mut c_void;
    nvmlView_GetProcessUtilization => "nvmlDeviceGetProcessUtilization", Nvml, v::nvmlDeviceGetProcessUtilization as *mut c_void;
    nvmlView_GetProcessesUtilizationInfo => "nvmlDeviceGetProcessesUtilizationInfo", Nvml, v::nvmlDeviceGetProcessesUtilizationInfo as *mut c_void;
    nvmlView_GetAccountingPids => "nvmlDeviceGetAccountingPids", Nvml, v::nvmlDeviceGetAccountingPids as *mut c_void;
    nvmlView_GetAccountingStats => "nvmlDeviceGetAccountingStats", Nvml, v::nvmlDeviceGetAccountingStats as *mut c_void;
    nvmlView_GetEncoderSessions => "nvmlDeviceGetEncoderSessions", Nvml, v::nvmlDeviceGetEncoderSessions as *mut c_void;
    nvmlView_GetFBCSessions => "nvmlDeviceGetFBCSessions", Nvml, v::nvmlDeviceGetFBCSessions as *mut c_void;
    nvmlView_GetUUID => "nvmlDeviceGetUUID", Nvml, NONE;
}
