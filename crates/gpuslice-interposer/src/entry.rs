//! How programs reach the hooks: the exported `dlsym` (the CUDA runtime looks the driver
//! up through a `dlopen` handle, which never sees preloaded symbols) and the exported
//! `cuGetProcAddress`/`cuGetProcAddress_v2` (how the runtime gets every driver entry
//! point, by version and per-thread-stream flag).
//!
//! Both ask the real driver first and substitute a hook only when the real answer is
//! exactly the real function that hook wraps, so versions, flags and `symbolStatus` are
//! the driver's own.
//!
//! This is the top floor: the one file that names every hook, in [`HOOKS`] (the address
//! of the hook of each table entry that has one).

// The exported entry points carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::{CStr, c_char, c_int, c_void};
use std::ptr::null_mut;

use crate::ffi::{CUDA_SUCCESS, CUresult};
use crate::hooks as h;
use crate::launch as c;
use crate::nvml_view as v;
use crate::real::{call_driver, real, real_dlsym, real_dlsym_ptr};
use crate::table::{COUNT, Library, id, ids_by_name, library_of};

/// A hook's address in a static table.
struct HookAddress(*mut c_void);
// SAFETY: the addresses are of functions, immutable and valid in every thread.
unsafe impl Sync for HookAddress {}

/// Fills [`HOOKS`]: table entry => the function that hooks it.
macro_rules! hooks {
    ($($entry:ident => $hook:path;)*) => {
        /// The hook of each table entry, null where the function is only called.
        static HOOKS: [HookAddress; COUNT] = {
            let mut table = [const { HookAddress(null_mut()) }; COUNT];
            $( table[id::$entry] = HookAddress($hook as *mut c_void); )*
            table
        };
    };
}

hooks! {
    cuGetProcAddress => cuGetProcAddress;
    cuGetProcAddress_v2 => cuGetProcAddress_v2;
    cuInit => h::context::cuInit;
    cuMemAlloc_v2 => h::alloc::cuMemAlloc_v2;
    cuMemAllocPitch_v2 => h::alloc::cuMemAllocPitch_v2;
    cuMemAllocManaged => h::alloc::cuMemAllocManaged;
    cuMemFree_v2 => h::alloc::cuMemFree_v2;
    cuMemGetInfo_v2 => h::alloc::cuMemGetInfo_v2;
    cuDeviceTotalMem_v2 => h::alloc::cuDeviceTotalMem_v2;
    cuMemAllocAsync => h::pool::cuMemAllocAsync;
    cuMemAllocAsync_ptsz => h::pool::cuMemAllocAsync_ptsz;
    cuMemAllocFromPoolAsync => h::pool::cuMemAllocFromPoolAsync;
    cuMemAllocFromPoolAsync_ptsz => h::pool::cuMemAllocFromPoolAsync_ptsz;
    cuMemFreeAsync => h::pool::cuMemFreeAsync;
    cuMemFreeAsync_ptsz => h::pool::cuMemFreeAsync_ptsz;
    cuMemPoolCreate => h::pool::cuMemPoolCreate;
    cuMemPoolDestroy => h::pool::cuMemPoolDestroy;
    cuMemPoolTrimTo => h::pool::cuMemPoolTrimTo;
    cuMemCreate => h::vmm::cuMemCreate;
    cuMemRelease => h::vmm::cuMemRelease;
    cuArrayCreate_v2 => h::array::cuArrayCreate_v2;
    cuArray3DCreate_v2 => h::array::cuArray3DCreate_v2;
    cuArrayDestroy => h::array::cuArrayDestroy;
    cuMipmappedArrayCreate => h::array::cuMipmappedArrayCreate;
    cuMipmappedArrayDestroy => h::array::cuMipmappedArrayDestroy;
    cuDevicePrimaryCtxRetain => h::context::cuDevicePrimaryCtxRetain;
    cuDevicePrimaryCtxRelease_v2 => h::context::cuDevicePrimaryCtxRelease_v2;
    cuDevicePrimaryCtxRelease => h::context::cuDevicePrimaryCtxRelease;
    cuDevicePrimaryCtxReset_v2 => h::context::cuDevicePrimaryCtxReset_v2;
    cuDevicePrimaryCtxReset => h::context::cuDevicePrimaryCtxReset;
    cuCtxCreate => h::context::cuCtxCreate;
    cuCtxCreate_v2 => h::context::cuCtxCreate_v2;
    cuCtxCreate_v3 => h::context::cuCtxCreate_v3;
    cuCtxCreate_v4 => h::context::cuCtxCreate_v4;
    cuGraphInstantiateWithFlags => h::graph::cuGraphInstantiateWithFlags;
    cuGraphInstantiateWithParams => h::graph::cuGraphInstantiateWithParams;
    cuGraphInstantiateWithParams_ptsz => h::graph::cuGraphInstantiateWithParams_ptsz;
    cuGraphInstantiate_v2 => h::graph::cuGraphInstantiate_v2;
    cuGraphLaunch => h::graph::cuGraphLaunch;
    cuGraphLaunch_ptsz => h::graph::cuGraphLaunch_ptsz;
    cuGraphUpload => h::graph::cuGraphUpload;
    cuGraphUpload_ptsz => h::graph::cuGraphUpload_ptsz;
    cuGraphExecDestroy => h::graph::cuGraphExecDestroy;
    cuDeviceGraphMemTrim => h::graph::cuDeviceGraphMemTrim;
    cuStreamSynchronize => c::cuStreamSynchronize;
    cuStreamSynchronize_ptsz => c::cuStreamSynchronize_ptsz;
    cuCtxSynchronize => c::cuCtxSynchronize;
    cuCtxSynchronize_v2 => c::cuCtxSynchronize_v2;
    cuLaunchKernel => c::cuLaunchKernel;
    cuLaunchKernel_ptsz => c::cuLaunchKernel_ptsz;
    cuLaunchKernelEx => c::cuLaunchKernelEx;
    cuLaunchKernelEx_ptsz => c::cuLaunchKernelEx_ptsz;
    cuLaunchCooperativeKernel => c::cuLaunchCooperativeKernel;
    cuLaunchCooperativeKernel_ptsz => c::cuLaunchCooperativeKernel_ptsz;
    cuEventSynchronize => c::cuEventSynchronize;
    cuStreamDestroy => c::cuStreamDestroy;
    cuStreamDestroy_v2 => c::cuStreamDestroy_v2;
    cuCtxDestroy_v2 => c::cuCtxDestroy_v2;
    cuCtxDestroy => c::cuCtxDestroy;
    nvmlView_GetMemoryInfo => v::memory::nvmlDeviceGetMemoryInfo;
    nvmlView_GetMemoryInfo_v2 => v::memory::nvmlDeviceGetMemoryInfo_v2;
    nvmlView_GetUtilizationRates => v::utilization::nvmlDeviceGetUtilizationRates;
    nvmlView_ComputeRunningProcesses => v::processes::nvmlDeviceGetComputeRunningProcesses;
    nvmlView_ComputeRunningProcesses_v2 => v::processes::nvmlDeviceGetComputeRunningProcesses_v2;
    nvmlView_ComputeRunningProcesses_v3 => v::processes::nvmlDeviceGetComputeRunningProcesses_v3;
    nvmlView_GraphicsRunningProcesses => v::processes::nvmlDeviceGetGraphicsRunningProcesses;
    nvmlView_GraphicsRunningProcesses_v2 => v::processes::nvmlDeviceGetGraphicsRunningProcesses_v2;
    nvmlView_GraphicsRunningProcesses_v3 => v::processes::nvmlDeviceGetGraphicsRunningProcesses_v3;
    nvmlView_MPSComputeRunningProcesses => v::processes::nvmlDeviceGetMPSComputeRunningProcesses;
    nvmlView_MPSComputeRunningProcesses_v2 => v::processes::nvmlDeviceGetMPSComputeRunningProcesses_v2;
    nvmlView_MPSComputeRunningProcesses_v3 => v::processes::nvmlDeviceGetMPSComputeRunningProcesses_v3;
    nvmlView_GetRunningProcessDetailList => v::processes::nvmlDeviceGetRunningProcessDetailList;
    nvmlView_GetProcessUtilization => v::utilization::nvmlDeviceGetProcessUtilization;
    nvmlView_GetProcessesUtilizationInfo => v::utilization::nvmlDeviceGetProcessesUtilizationInfo;
    nvmlView_GetAccountingPids => v::accounting::nvmlDeviceGetAccountingPids;
    nvmlView_GetAccountingStats => v::accounting::nvmlDeviceGetAccountingStats;
    nvmlView_GetEncoderSessions => v::accounting::nvmlDeviceGetEncoderSessions;
    nvmlView_GetFBCSessions => v::accounting::nvmlDeviceGetFBCSessions;
}

/// The hook for entry `id`, or null when the function is only called, not hooked.
pub fn hook_address(id: usize) -> *mut c_void {
    HOOKS.get(id).map(|h| h.0).unwrap_or(null_mut())
}

/// The hooked entry whose symbol is `name`, if any.
fn hooked_id_by_name(name: &CStr) -> Option<usize> {
    ids_by_name(name).find(|&id| !hook_address(id).is_null())
}

/// Which hooked CUDA function has the real address `p`, if any. Only hooked CUDA
/// entries are compared, so this never loads NVML.
fn hook_id_of_real(p: *mut c_void) -> Option<usize> {
    if p.is_null() {
        return None;
    }
    (0..COUNT)
        .find(|&id| library_of(id) == Library::Cuda && !hook_address(id).is_null() && real(id) == p)
}

/// Our `dlsym`. For the special handles `RTLD_DEFAULT` and `RTLD_NEXT`, whose meaning
/// depends on the caller's position in the search order, it tail-jumps into the real
/// `dlsym` so glibc sees the original caller's return address. Every other handle goes
/// to [`dlsym_on_handle`].
///
/// # Safety
/// Same contract as `dlsym(3)`.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmp rdi, -1",
        "je 2f",
        "test rdi, rdi",
        "je 2f",
        "jmp {on_handle}",
        "2:",
        "push rdi",
        "push rsi",
        "sub rsp, 8",
        "call {real_ptr}",
        "add rsp, 8",
        "pop rsi",
        "pop rdi",
        "test rax, rax",
        "je 3f",
        "jmp rax",
        "3:",
        "ret",
        on_handle = sym dlsym_on_handle,
        real_ptr = sym real_dlsym_ptr_for_asm,
    )
}

extern "C" fn real_dlsym_ptr_for_asm() -> *mut c_void {
    real_dlsym_ptr()
}

/// `dlsym` on an ordinary handle: the real answer, or our hook when the real answer is
/// the driver function that hook wraps and this process is in a slice.
extern "C" fn dlsym_on_handle(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let found = real_dlsym(handle, symbol);
    if found.is_null() || symbol.is_null() {
        return found;
    }
    // SAFETY: dlsym's contract: `symbol` is a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(symbol) };
    match hooked_id_by_name(name) {
        Some(hook)
            if real(hook) == found
                && crate::process::hooks_wanted()
                && (!crate::launch::is_launch_hook(hook)
                    || crate::process::launch_hooks_wanted()) =>
        {
            hook_address(hook)
        }
        _ => found,
    }
}

/// Replaces a real driver entry point with our hook where we have one.
fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64) {
    if pfn.is_null() || !crate::process::hooks_wanted() {
        return;
    }
    // SAFETY: the driver just wrote a function pointer there.
    let found = unsafe { *pfn };
    let mut hooked = false;
    if let Some(hook) = hook_id_of_real(found)
        && (!crate::launch::is_launch_hook(hook) || crate::process::launch_hooks_wanted())
    {
        let addr = hook_address(hook);
        if !addr.is_null() {
            // SAFETY: same location, a pointer of the same kind.
            unsafe { *pfn = addr };
            hooked = true;
        }
    }
    if crate::log::enabled(gpuslice_config::LogLevel::Trace) && !symbol.is_null() {
        // SAFETY: the driver accepted it, so it is a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(symbol) };
        crate::log::line(
            gpuslice_config::LogLevel::Trace,
            format_args!(
                "cuGetProcAddress {} version={cuda_version} flags={flags} hooked={hooked}",
                name.to_string_lossy()
            ),
        );
    }
}

type GetProcV1 = unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64) -> CUresult;
type GetProcV2 =
    unsafe extern "C" fn(*const c_char, *mut *mut c_void, c_int, u64, *mut c_int) -> CUresult;

/// Hook of `cuGetProcAddress` (CUDA 11.3 to 11.8 signature).
///
/// # Safety
/// Same contract as the driver's function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
) -> CUresult {
    let r = call_driver!(
        id::cuGetProcAddress,
        GetProcV1,
        symbol,
        pfn,
        cuda_version,
        flags
    );
    if r == CUDA_SUCCESS {
        substitute(symbol, pfn, cuda_version, flags);
    }
    r
}

/// Hook of `cuGetProcAddress_v2` (CUDA 12+, with `symbolStatus`).
///
/// # Safety
/// Same contract as the driver's function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGetProcAddress_v2(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    cuda_version: c_int,
    flags: u64,
    symbol_status: *mut c_int,
) -> CUresult {
    let r = call_driver!(
        id::cuGetProcAddress_v2,
        GetProcV2,
        symbol,
        pfn,
        cuda_version,
        flags,
        symbol_status
    );
    if r == CUDA_SUCCESS {
        substitute(symbol, pfn, cuda_version, flags);
    }
    r
}
