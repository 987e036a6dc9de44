//! The little NVML this process needs: its own device memory as the driver counts it
//! (contexts and modules included), and NVML indices of devices for index-keyed limits.

use std::ffi::{CString, c_uint, c_void};
use std::ptr::null_mut;

use crate::ffi::{
    NVML_ERROR_INSUFFICIENT_SIZE, NVML_SUCCESS, NvmlDevice, NvmlProcessInfo, NvmlReturn,
};
use crate::real::real;
use crate::table::id;

type InitFn = unsafe extern "C" fn() -> NvmlReturn;
type ByUuidFn = unsafe extern "C" fn(*const std::ffi::c_char, *mut NvmlDevice) -> NvmlReturn;
type IndexFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn;
type ProcsFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut NvmlProcessInfo) -> NvmlReturn;

/// Initialises NVML (reference counted by NVML itself). False when there is none.
pub fn init() -> bool {
    let p = real(id::nvmlInit_v2);
    if p.is_null() {
        return false;
    }
    // SAFETY: NVML's nvmlInit_v2 takes no arguments.
    unsafe { std::mem::transmute::<*mut c_void, InitFn>(p)() == NVML_SUCCESS }
}

fn device_by_uuid(uuid: &str) -> Option<NvmlDevice> {
    let p = real(id::nvmlDeviceGetHandleByUUID);
    let name = CString::new(uuid).ok()?;
    if p.is_null() {
        return None;
    }
    let mut dev: NvmlDevice = null_mut();
    // SAFETY: valid string and out pointer.
    let r = unsafe { std::mem::transmute::<*mut c_void, ByUuidFn>(p)(name.as_ptr(), &mut dev) };
    (r == NVML_SUCCESS).then_some(dev)
}

/// NVML index of the device with `uuid`.
pub fn index_of(uuid: &str) -> Option<u32> {
    let dev = device_by_uuid(uuid)?;
    let p = real(id::nvmlDeviceGetIndex);
    if p.is_null() {
        return None;
    }
    let mut index: c_uint = 0;
    // SAFETY: valid device handle and out pointer.
    let r = unsafe { std::mem::transmute::<*mut c_void, IndexFn>(p)(dev, &mut index) };
    (r == NVML_SUCCESS).then_some(index)
}

/// Device memory that NVML attributes to process `pid` on the device with `uuid`.
/// `None` when NVML cannot say (no NVML, PID not listed, value not available).
pub fn process_memory(uuid: &str, pid: u32) -> Option<u64> {
    let dev = device_by_uuid(uuid)?;
    let mut p = real(id::nvmlDeviceGetComputeRunningProcesses_v3);
    if p.is_null() {
        p = real(id::nvmlDeviceGetComputeRunningProcesses_v2);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: the v2 and v3 functions share this signature and struct layout.
    let f = unsafe { std::mem::transmute::<*mut c_void, ProcsFn>(p) };
    let mut infos = vec![NvmlProcessInfo::default(); 64];
    for _ in 0..4 {
        let mut count = infos.len() as c_uint;
        // SAFETY: `infos` has `count` entries.
        let r = unsafe { f(dev, &mut count, infos.as_mut_ptr()) };
        if r == NVML_ERROR_INSUFFICIENT_SIZE {
            infos.resize(count as usize + 16, NvmlProcessInfo::default());
            continue;
        }
        if r != NVML_SUCCESS {
            return None;
        }
        return infos[..count as usize]
            .iter()
            .find(|i| i.pid == pid)
            .map(|i| i.used_gpu_memory)
            .filter(|&m| m != u64::MAX);
    }
    None
}
