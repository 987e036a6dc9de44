//! The ground floor's one way to the real driver: the real `dlsym` (we export our own),
//! the handles of the real `libcuda.so.1` and `libnvidia-ml.so.1`, the real address of
//! every function in the table (resolved once and cached), and the only place where such
//! an address becomes a callable function: [`function`], and over it the
//! [`call_driver!`] (CUDA) and [`call_nvml!`] (NVML) macros. The few driver queries that
//! several floors make (the current device, a device's UUID, pool and graph-memory
//! attributes) live here too.

use std::ffi::{CStr, c_char, c_void};
use std::ptr::null_mut;
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering::Acquire, Ordering::Release};

use crate::ffi::{CUDA_ERROR_NOT_FOUND, CUDA_SUCCESS, CUdevice, CUmemoryPool, CUresult};
use crate::table::{COUNT, Library, id, library_of, name_of};

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
    let f: DlsymFn = unsafe { as_function(p) };
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

/// A function pointer type (`unsafe extern "C" fn(...) -> ...`) made from an address.
///
/// # Safety
/// `p` is non-null and is the address of a function whose C signature is `F`.
#[inline(always)]
pub unsafe fn as_function<F: Copy>(p: *mut c_void) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: `F` is a function pointer type of the same size as `p` (checked above at
    // compile time), and the caller guarantees `p` is a function of that signature.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

/// The real function of table entry `id` as the function pointer type `F`; `None` when
/// the driver lacks it.
///
/// # Safety
/// `F` is the C signature of the function the table names by `id`.
#[inline(always)]
pub unsafe fn function<F: Copy>(id: usize) -> Option<F> {
    let p = real(id);
    // SAFETY: `p` is the driver's own implementation of entry `id`, whose signature the
    // caller guarantees is `F`.
    (!p.is_null()).then(|| unsafe { as_function::<F>(p) })
}

/// A symbol of a real library, outside the table, as the function pointer type `F`;
/// `None` when the library lacks it.
///
/// # Safety
/// `F` is the C signature of the function the library exports as `name`.
pub unsafe fn symbol<F: Copy>(library: Library, name: &CStr) -> Option<F> {
    let p = driver_symbol(library, name);
    // SAFETY: `p` is the library's own `name`, whose signature the caller guarantees is
    // `F`.
    (!p.is_null()).then(|| unsafe { as_function::<F>(p) })
}

/// Calls the real CUDA driver function of table entry `$id`, whose C signature is `$ty`;
/// `CUDA_ERROR_NOT_FOUND` when the driver lacks it.
macro_rules! call_driver {
    ($id:expr, $ty:ty, $($arg:expr),*) => {{
        // SAFETY: `$ty` is the C signature of the table's entry `$id` (each call site
        // names the type declared for that function).
        match unsafe { $crate::real::function::<$ty>($id) } {
            // SAFETY: the arguments follow the driver's contract for this function (the
            // caller's own, or locals of the documented types).
            Some(f) => unsafe { f($($arg),*) },
            None => $crate::ffi::CUDA_ERROR_NOT_FOUND,
        }
    }};
}
pub(crate) use call_driver;

/// Calls the real NVML function of table entry `$id`, whose C signature is `$ty`;
/// `NVML_ERROR_FUNCTION_NOT_FOUND` when NVML lacks it.
macro_rules! call_nvml {
    ($id:expr, $ty:ty, $($arg:expr),*) => {{
        // SAFETY: `$ty` is the C signature of the table's entry `$id` (each call site
        // names the type declared for that function).
        match unsafe { $crate::real::function::<$ty>($id) } {
            // SAFETY: the arguments follow NVML's contract for this function (they are
            // the caller's own, or buffers of the documented size).
            Some(f) => unsafe { f($($arg),*) },
            None => $crate::ffi::NVML_ERROR_FUNCTION_NOT_FOUND,
        }
    }};
}
pub(crate) use call_nvml;

type CtxGetDeviceFn = unsafe extern "C" fn(*mut CUdevice) -> CUresult;
type UuidFn = unsafe extern "C" fn(*mut [u8; 16], CUdevice) -> CUresult;
type PoolAttrFn = unsafe extern "C" fn(CUmemoryPool, std::ffi::c_int, *mut c_void) -> CUresult;
type GraphAttrFn = unsafe extern "C" fn(CUdevice, std::ffi::c_int, *mut c_void) -> CUresult;

/// The device of the current context.
pub fn current_cuda_device() -> Result<CUdevice, CUresult> {
    let mut dev: CUdevice = 0;
    let r = call_driver!(id::cuCtxGetDevice, CtxGetDeviceFn, &mut dev);
    if r == CUDA_SUCCESS { Ok(dev) } else { Err(r) }
}

/// The UUID of a CUDA device as `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn device_uuid(dev: CUdevice) -> Result<String, CUresult> {
    let mut raw = [0u8; 16];
    let mut r = call_driver!(id::cuDeviceGetUuid_v2, UuidFn, &mut raw, dev);
    if r == CUDA_ERROR_NOT_FOUND {
        r = call_driver!(id::cuDeviceGetUuid, UuidFn, &mut raw, dev);
    }
    if r != CUDA_SUCCESS {
        return Err(r);
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!(
        "GPU-{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}

/// A u64 attribute of a memory pool.
pub fn pool_attribute(pool: CUmemoryPool, attr: std::ffi::c_int) -> Option<u64> {
    let mut v: u64 = 0;
    let r = call_driver!(
        id::cuMemPoolGetAttribute,
        PoolAttrFn,
        pool,
        attr,
        (&mut v as *mut u64).cast()
    );
    (r == CUDA_SUCCESS).then_some(v)
}

/// A u64 graph-memory attribute of a device.
pub fn graph_mem_attribute(dev: CUdevice, attr: std::ffi::c_int) -> Option<u64> {
    let mut v: u64 = 0;
    let r = call_driver!(
        id::cuDeviceGetGraphMemAttribute,
        GraphAttrFn,
        dev,
        attr,
        (&mut v as *mut u64).cast()
    );
    (r == CUDA_SUCCESS).then_some(v)
}
