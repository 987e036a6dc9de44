//! The table of driver functions the interposer knows by name: for each, an id (which
//! indexes `real::real`), its symbol name and the real library it lives in. Which of them
//! are hooked, and by what, is the entry floor's business (`entry.rs`).

use std::ffi::CStr;

/// Which real library a function lives in.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Library {
    /// `libcuda.so.1`.
    Cuda,
    /// `libnvidia-ml.so.1`.
    Nvml,
}

macro_rules! driver_functions {
    ($( $id:ident => $name:literal, $lib:ident ;)*) => {
        /// Ids of the functions in the table.
        // The ids are the driver's own symbol names (camelCase), and not every id is
        // named in code: some only fill the table for lookups by name.
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
    };
    (@ids $n:expr; $first:ident $($rest:ident)*) => {
        pub const $first: usize = $n;
        driver_functions!(@ids $n + 1; $($rest)*);
    };
    (@ids $n:expr;) => {};
}

/// The symbol name of entry `id`.
pub fn name_of(id: usize) -> &'static CStr {
    NAMES[id]
}

/// The library of entry `id`.
pub fn library_of(id: usize) -> Library {
    LIBRARIES[id]
}

/// The entries whose symbol is `name` (several entries may name one symbol: the
/// interposer's own unfiltered calls and the hooked view of NVML).
pub fn ids_by_name(name: &CStr) -> impl Iterator<Item = usize> + '_ {
    let bytes = name.to_bytes();
    let plausible = bytes.starts_with(b"cu") || bytes.starts_with(b"nvml");
    (0..COUNT).filter(move |&id| plausible && NAMES[id].to_bytes() == bytes)
}

driver_functions! {
    // Entry points.
    cuGetProcAddress => "cuGetProcAddress", Cuda;
    cuGetProcAddress_v2 => "cuGetProcAddress_v2", Cuda;
    cuInit => "cuInit", Cuda;
    // Plain allocations.
    cuMemAlloc_v2 => "cuMemAlloc_v2", Cuda;
    cuMemAllocPitch_v2 => "cuMemAllocPitch_v2", Cuda;
    cuMemAllocManaged => "cuMemAllocManaged", Cuda;
    cuMemFree_v2 => "cuMemFree_v2", Cuda;
    cuMemGetInfo_v2 => "cuMemGetInfo_v2", Cuda;
    cuDeviceTotalMem_v2 => "cuDeviceTotalMem_v2", Cuda;
    // Stream-ordered allocation.
    cuMemAllocAsync => "cuMemAllocAsync", Cuda;
    cuMemAllocAsync_ptsz => "cuMemAllocAsync_ptsz", Cuda;
    cuMemAllocFromPoolAsync => "cuMemAllocFromPoolAsync", Cuda;
    cuMemAllocFromPoolAsync_ptsz => "cuMemAllocFromPoolAsync_ptsz", Cuda;
    cuMemFreeAsync => "cuMemFreeAsync", Cuda;
    cuMemFreeAsync_ptsz => "cuMemFreeAsync_ptsz", Cuda;
    cuMemPoolCreate => "cuMemPoolCreate", Cuda;
    cuMemPoolDestroy => "cuMemPoolDestroy", Cuda;
    cuMemPoolTrimTo => "cuMemPoolTrimTo", Cuda;
    // Virtual memory management.
    cuMemCreate => "cuMemCreate", Cuda;
    cuMemRelease => "cuMemRelease", Cuda;
    // Arrays.
    cuArrayCreate_v2 => "cuArrayCreate_v2", Cuda;
    cuArray3DCreate_v2 => "cuArray3DCreate_v2", Cuda;
    cuArrayDestroy => "cuArrayDestroy", Cuda;
    cuMipmappedArrayCreate => "cuMipmappedArrayCreate", Cuda;
    cuMipmappedArrayDestroy => "cuMipmappedArrayDestroy", Cuda;
    // Contexts (their memory is charged before the driver creates them).
    cuDevicePrimaryCtxRetain => "cuDevicePrimaryCtxRetain", Cuda;
    cuDevicePrimaryCtxRelease_v2 => "cuDevicePrimaryCtxRelease_v2", Cuda;
    cuDevicePrimaryCtxRelease => "cuDevicePrimaryCtxRelease", Cuda;
    cuDevicePrimaryCtxReset_v2 => "cuDevicePrimaryCtxReset_v2", Cuda;
    cuDevicePrimaryCtxReset => "cuDevicePrimaryCtxReset", Cuda;
    cuCtxCreate => "cuCtxCreate", Cuda;
    cuCtxCreate_v2 => "cuCtxCreate_v2", Cuda;
    cuCtxCreate_v3 => "cuCtxCreate_v3", Cuda;
    cuCtxCreate_v4 => "cuCtxCreate_v4", Cuda;
    // CUDA graphs with memory nodes.
    cuGraphInstantiateWithFlags => "cuGraphInstantiateWithFlags", Cuda;
    cuGraphInstantiateWithParams => "cuGraphInstantiateWithParams", Cuda;
    cuGraphInstantiateWithParams_ptsz => "cuGraphInstantiateWithParams_ptsz", Cuda;
    cuGraphInstantiate_v2 => "cuGraphInstantiate_v2", Cuda;
    cuGraphLaunch => "cuGraphLaunch", Cuda;
    cuGraphLaunch_ptsz => "cuGraphLaunch_ptsz", Cuda;
    cuGraphUpload => "cuGraphUpload", Cuda;
    cuGraphUpload_ptsz => "cuGraphUpload_ptsz", Cuda;
    cuGraphExecDestroy => "cuGraphExecDestroy", Cuda;
    cuDeviceGraphMemTrim => "cuDeviceGraphMemTrim", Cuda;
    // Called, not hooked.
    cuCtxGetDevice => "cuCtxGetDevice", Cuda;
    cuDeviceGetCount => "cuDeviceGetCount", Cuda;
    cuDeviceGetUuid_v2 => "cuDeviceGetUuid_v2", Cuda;
    cuDeviceGetUuid => "cuDeviceGetUuid", Cuda;
    cuDeviceGetMemPool => "cuDeviceGetMemPool", Cuda;
    cuMemPoolGetAttribute => "cuMemPoolGetAttribute", Cuda;
    cuStreamIsCapturing => "cuStreamIsCapturing", Cuda;
    cuStreamSynchronize => "cuStreamSynchronize", Cuda;
    cuStreamSynchronize_ptsz => "cuStreamSynchronize_ptsz", Cuda;
    cuCtxSynchronize => "cuCtxSynchronize", Cuda;
    cuCtxSynchronize_v2 => "cuCtxSynchronize_v2", Cuda;
    cuArrayGetMemoryRequirements => "cuArrayGetMemoryRequirements", Cuda;
    cuMipmappedArrayGetMemoryRequirements => "cuMipmappedArrayGetMemoryRequirements", Cuda;
    cuGraphGetNodes => "cuGraphGetNodes", Cuda;
    cuGraphNodeGetType => "cuGraphNodeGetType", Cuda;
    cuGraphMemAllocNodeGetParams => "cuGraphMemAllocNodeGetParams", Cuda;
    cuGraphChildGraphNodeGetGraph => "cuGraphChildGraphNodeGetGraph", Cuda;
    cuDeviceGetGraphMemAttribute => "cuDeviceGetGraphMemAttribute", Cuda;
    cuDevicePrimaryCtxGetState => "cuDevicePrimaryCtxGetState", Cuda;
    // ---- Compute slices (launch.rs): launch hooks, handed out only when the slice
    // has a compute limit, and the event functions the meter calls.
    cuLaunchKernel => "cuLaunchKernel", Cuda;
    cuLaunchKernel_ptsz => "cuLaunchKernel_ptsz", Cuda;
    cuLaunchKernelEx => "cuLaunchKernelEx", Cuda;
    cuLaunchKernelEx_ptsz => "cuLaunchKernelEx_ptsz", Cuda;
    cuLaunchCooperativeKernel => "cuLaunchCooperativeKernel", Cuda;
    cuLaunchCooperativeKernel_ptsz => "cuLaunchCooperativeKernel_ptsz", Cuda;
    cuCtxGetCurrent => "cuCtxGetCurrent", Cuda;
    cuEventCreate => "cuEventCreate", Cuda;
    cuEventRecord => "cuEventRecord", Cuda;
    cuEventQuery => "cuEventQuery", Cuda;
    cuStreamQuery => "cuStreamQuery", Cuda;
    cuEventSynchronize => "cuEventSynchronize", Cuda;
    cuEventElapsedTime => "cuEventElapsedTime", Cuda;
    cuEventElapsedTime_v2 => "cuEventElapsedTime_v2", Cuda;
    cuStreamCreate => "cuStreamCreate", Cuda;
    cuStreamDestroy => "cuStreamDestroy", Cuda;
    cuStreamDestroy_v2 => "cuStreamDestroy_v2", Cuda;
    cuCtxDestroy_v2 => "cuCtxDestroy_v2", Cuda;
    cuCtxDestroy => "cuCtxDestroy", Cuda;
    cuThreadExchangeStreamCaptureMode => "cuThreadExchangeStreamCaptureMode", Cuda;
    nvmlInit_v2 => "nvmlInit_v2", Nvml;
    nvmlDeviceGetHandleByUUID => "nvmlDeviceGetHandleByUUID", Nvml;
    nvmlDeviceGetIndex => "nvmlDeviceGetIndex", Nvml;
    nvmlDeviceGetCount_v2 => "nvmlDeviceGetCount_v2", Nvml;
    nvmlDeviceGetHandleByIndex_v2 => "nvmlDeviceGetHandleByIndex_v2", Nvml;
    nvmlDeviceGetComputeRunningProcesses_v3 => "nvmlDeviceGetComputeRunningProcesses_v3", Nvml;
    nvmlDeviceGetComputeRunningProcesses_v2 => "nvmlDeviceGetComputeRunningProcesses_v2", Nvml;
    // ---- NVML view (nvml_view/): what NVML shows inside a slice. Entries above that
    // name the same functions are the interposer's own (unfiltered) calls.
    nvmlView_GetMemoryInfo => "nvmlDeviceGetMemoryInfo", Nvml;
    nvmlView_GetMemoryInfo_v2 => "nvmlDeviceGetMemoryInfo_v2", Nvml;
    nvmlView_GetUtilizationRates => "nvmlDeviceGetUtilizationRates", Nvml;
    nvmlView_ComputeRunningProcesses => "nvmlDeviceGetComputeRunningProcesses", Nvml;
    nvmlView_ComputeRunningProcesses_v2 => "nvmlDeviceGetComputeRunningProcesses_v2", Nvml;
    nvmlView_ComputeRunningProcesses_v3 => "nvmlDeviceGetComputeRunningProcesses_v3", Nvml;
    nvmlView_GraphicsRunningProcesses => "nvmlDeviceGetGraphicsRunningProcesses", Nvml;
    nvmlView_GraphicsRunningProcesses_v2 => "nvmlDeviceGetGraphicsRunningProcesses_v2", Nvml;
    nvmlView_GraphicsRunningProcesses_v3 => "nvmlDeviceGetGraphicsRunningProcesses_v3", Nvml;
    nvmlView_MPSComputeRunningProcesses => "nvmlDeviceGetMPSComputeRunningProcesses", Nvml;
    nvmlView_MPSComputeRunningProcesses_v2 => "nvmlDeviceGetMPSComputeRunningProcesses_v2", Nvml;
    nvmlView_MPSComputeRunningProcesses_v3 => "nvmlDeviceGetMPSComputeRunningProcesses_v3", Nvml;
    nvmlView_GetRunningProcessDetailList => "nvmlDeviceGetRunningProcessDetailList", Nvml;
    nvmlView_GetProcessUtilization => "nvmlDeviceGetProcessUtilization", Nvml;
    nvmlView_GetProcessesUtilizationInfo => "nvmlDeviceGetProcessesUtilizationInfo", Nvml;
    nvmlView_GetAccountingPids => "nvmlDeviceGetAccountingPids", Nvml;
    nvmlView_GetAccountingStats => "nvmlDeviceGetAccountingStats", Nvml;
    nvmlView_GetEncoderSessions => "nvmlDeviceGetEncoderSessions", Nvml;
    nvmlView_GetFBCSessions => "nvmlDeviceGetFBCSessions", Nvml;
    nvmlView_GetUUID => "nvmlDeviceGetUUID", Nvml;
}
