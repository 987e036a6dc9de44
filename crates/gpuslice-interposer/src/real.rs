//! Finding the real driver: the real `dlsym` (we export our own), the handles of the
//! real `libcuda.so.1` and `libnvidia-ml.so.1`, and the real address of every function
//! we hook, resolved once and cached.

use std::ffi::{CStr, c_char, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering::Acquire, Ordering::Release};

use crate::table::{COUNT, Library, hook_address, library_of, name_of};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

static REAL_DLSYM: AtomicPtr<c_void> = AtomicPtr::new(null_mut());

/// The real `dlsym`, found with `dlvsym` (which we do not interpose) so that looking it
/// up can never recurse into our own `dlsym`.
pub fn real_dlsym_ptr() -> *mut c_void {
    let p = REAL_DLSYM.load(Acquire);
    if !p.is_null() {
        return p;
    }
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5"] {
        // SAFETY: dlvsym with RTLD_NEXT and valid NUL-terminated strings.
        let found = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !found.is_null() {
            REAL_DLSYM.store(found, Release);
            return found;
        }
    }
    null_mut()
}

/// Calls the real `dlsym` on a handle (not for `RTLD_NEXT`, whose meaning depends on
/// the caller: the exported `dlsym` forwards that case by a tail jump instead).
pub fn real_dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let p = real_dlsym_ptr();
    if p.is_null() {
        return null_mut();
    }
    // SAFETY: `p` is glibc's dlsym, which has exactly this signature.
    let f: DlsymFn = unsafe { std::mem::transmute::<*mut c_void, DlsymFn>(p) };
    // SAFETY: forwarding the caller's arguments unchanged.
    unsafe { f(handle, symbol) }
}

static CUDA_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(null_mut());
static NVML_HANDLE: AtomicPtr<c_void> = AtomicPtr::new(null_mut());

fn open_library(slot: &AtomicPtr<c_void>, name: &CStr) -> *mut c_void {
    let h = slot.load(Acquire);
    if !h.is_null() {
        return h;
    }
    // SAFETY: dlopen with a valid name; RTLD_NOLOAD only returns an already loaded one.
    let mut h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if h.is_null() {
        // SAFETY: dlopen with a valid NUL-terminated name, loading the library if
        // nobody has yet; RTLD_LOCAL keeps its symbols out of the global scope.
        h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    }
    if !h.is_null() {
        slot.store(h, Release);
    }
    h
}

/// Handle of the real CUDA driver.
pub fn cuda_handle() -> *mut c_void {
    open_library(&CUDA_HANDLE, c"libcuda.so.1")
}

/// Whether the real CUDA driver is already loaded in this process (never loads it: a
/// process that only uses NVML, like `nvidia-smi`, keeps it out).
pub fn cuda_loaded() -> bool {
    if !CUDA_HANDLE.load(Acquire).is_null() {
        return true;
    }
    // SAFETY: dlopen with a valid name and RTLD_NOLOAD only looks for a loaded library.
    let h = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if h.is_null() {
        return false;
    }
    // SAFETY: `h` came from the dlopen above, which took a reference we give back.
    unsafe { libc::dlclose(h) };
    true
}

/// Handle of the real NVML.
pub fn nvml_handle() -> *mut c_void {
    open_library(&NVML_HANDLE, c"libnvidia-ml.so.1")
}

/// Looks a symbol up in the real CUDA driver or NVML (uncached; for functions that are
/// not hooked).
pub fn driver_symbol(library: Library, name: &CStr) -> *mut c_void {
    let handle = match library {
        Library::Cuda => cuda_handle(),
        Library::Nvml => nvml_handle(),
    };
    if handle.is_null() {
        return null_mut();
    }
    real_dlsym(handle, name.as_ptr())
}

static REAL: [AtomicPtr<c_void>; COUNT] = [const { AtomicPtr::new(null_mut()) }; COUNT];
const UNRESOLVED: u8 = 0;
const RESOLVED: u8 = 1;
static STATE: [AtomicU8; COUNT] = [const { AtomicU8::new(UNRESOLVED) }; COUNT];

/// The real address of hooked function `id` (null if the driver lacks it).
pub fn real(id: usize) -> *mut c_void {
    if STATE[id].load(Acquire) == RESOLVED {
        return REAL[id].load(Acquire);
    }
    let p = driver_symbol(library_of(id), name_of(id));
    REAL[id].store(p, Release);
    STATE[id].store(RESOLVED, Release);
    p
}

/// Which hooked CUDA function has the real address `p`, if any. Only hooked CUDA
/// entries are compared, so this never loads NVML.
pub fn hook_id_of_real(p: *mut c_void) -> Option<usize> {
    if p.is_null() {
        return None;
    }
    (0..COUNT)
        .find(|&id| library_of(id) == Library::Cuda && !hook_address(id).is_null() && real(id) == p)
}
