//! How programs reach the hooks: the exported `dlsym` (the CUDA runtime looks the driver
//! up through a `dlopen` handle, which never sees preloaded symbols) and the exported
//! `cuGetProcAddress`/`cuGetProcAddress_v2` (how the runtime gets every driver entry
//! point, by version and per-thread-stream flag).
//!
//! Both ask the real driver first and substitute a hook only when the real answer is
//! exactly the real function that hook wraps, so versions, flags and `symbolStatus` are
//! the driver's own.

#![allow(non_snake_case)]

use std::ffi::{CStr, c_char, c_int, c_void};

use crate::ffi::{CUDA_SUCCESS, CUresult};
use crate::real::{real, real_dlsym, real_dlsym_ptr};
use crate::table::{hook_address, hooked_id_by_name, id};

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
                && crate::state::hooks_wanted()
                && (!crate::compute::is_launch_hook(hook)
                    || crate::state::launch_hooks_wanted()) =>
        {
            hook_address(hook)
        }
        _ => found,
    }
}

/// Replaces a real driver entry point with our hook where we have one.
fn substitute(symbol: *const c_char, pfn: *mut *mut c_void, cuda_version: c_int, flags: u64) {
    if pfn.is_null() || !crate::state::hooks_wanted() {
        return;
    }
    // SAFETY: the driver just wrote a function pointer there.
    let found = unsafe { *pfn };
    let mut hooked = false;
    if let Some(hook) = crate::real::hook_id_of_real(found)
        && (!crate::compute::is_launch_hook(hook) || crate::state::launch_hooks_wanted())
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
    let p = real(id::cuGetProcAddress);
    if p.is_null() {
        return crate::ffi::CUDA_ERROR_NOT_FOUND;
    }
    // SAFETY: the real function of this signature.
    let f: GetProcV1 = unsafe { std::mem::transmute::<*mut c_void, GetProcV1>(p) };
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { f(symbol, pfn, cuda_version, flags) };
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
    let p = real(id::cuGetProcAddress_v2);
    if p.is_null() {
        return crate::ffi::CUDA_ERROR_NOT_FOUND;
    }
    // SAFETY: the real function of this signature.
    let f: GetProcV2 = unsafe { std::mem::transmute::<*mut c_void, GetProcV2>(p) };
    // SAFETY: forwarding the caller's arguments.
    let r = unsafe { f(symbol, pfn, cuda_version, flags, symbol_status) };
    if r == CUDA_SUCCESS {
        substitute(symbol, pfn, cuda_version, flags);
    }
    r
}
