//! The little NVML this process needs: its own device memory as the driver counts it
//! (contexts and modules included), and NVML indices of devices for index-keyed limits.

use std::ffi::{CString, c_uint};
use std::ptr::null_mut;

use crate::ffi::{
    NVML_ERROR_INSUFFICIENT_SIZE, NVML_SUCCESS, NvmlDevice, NvmlProcessInfo,
    NvmlProcessUtilizationSample, NvmlReturn,
};
use crate::real::{call_nvml, function};
use crate::table::id;

type InitFn = unsafe extern "C" fn() -> NvmlReturn;
type ByUuidFn = unsafe extern "C" fn(*const std::ffi::c_char, *mut NvmlDevice) -> NvmlReturn;
type IndexFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn;
type ProcsFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut NvmlProcessInfo) -> NvmlReturn;

/// Initialises NVML (reference counted by NVML itself). False when there is none.
pub fn init() -> bool {
    call_nvml!(id::nvmlInit_v2, InitFn,) == NVML_SUCCESS
}

fn device_by_uuid(uuid: &str) -> Option<NvmlDevice> {
    let name = CString::new(uuid).ok()?;
    let mut dev: NvmlDevice = null_mut();
    let r = call_nvml!(
        id::nvmlDeviceGetHandleByUUID,
        ByUuidFn,
        name.as_ptr(),
        &mut dev
    );
    (r == NVML_SUCCESS).then_some(dev)
}

/// NVML index of the device with `uuid`.
pub fn index_of(uuid: &str) -> Option<u32> {
    let dev = device_by_uuid(uuid)?;
    let mut index: c_uint = 0;
    let r = call_nvml!(id::nvmlDeviceGetIndex, IndexFn, dev, &mut index);
    (r == NVML_SUCCESS).then_some(index)
}

type CountFn = unsafe extern "C" fn(*mut c_uint) -> NvmlReturn;
type ByIndexFn = unsafe extern "C" fn(c_uint, *mut NvmlDevice) -> NvmlReturn;
type UuidFn = unsafe extern "C" fn(NvmlDevice, *mut std::ffi::c_char, c_uint) -> NvmlReturn;

/// Every GPU NVML lists (the host's, or the container's; not cut down by
/// `CUDA_VISIBLE_DEVICES`): its index and UUID. `None` when NVML cannot say. Call
/// [`init`] first.
pub fn all_devices() -> Option<Vec<(u32, String)>> {
    // SAFETY: these types are the C signatures of NVML's nvmlDeviceGetCount_v2,
    // nvmlDeviceGetHandleByIndex_v2 and nvmlDeviceGetUUID.
    let (Some(count_fn), Some(by_index), Some(uuid_fn)) = (unsafe {
        (
            function::<CountFn>(id::nvmlDeviceGetCount_v2),
            function::<ByIndexFn>(id::nvmlDeviceGetHandleByIndex_v2),
            function::<UuidFn>(id::nvmlView_GetUUID),
        )
    }) else {
        return None;
    };
    let mut count: c_uint = 0;
    // SAFETY: a valid out pointer.
    if unsafe { count_fn(&mut count) } != NVML_SUCCESS {
        return None;
    }
    (0..count)
        .map(|index| {
            let mut dev: NvmlDevice = null_mut();
            // SAFETY: an index below the count NVML gave, and a valid out pointer.
            if unsafe { by_index(index, &mut dev) } != NVML_SUCCESS {
                return None;
            }
            let mut buf = [0 as std::ffi::c_char; 96];
            // SAFETY: a handle NVML just gave, and a buffer of the length passed.
            let r = unsafe {
                uuid_fn(
                    dev,
                    buf.as_mut_ptr(),
                    c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX),
                )
            };
            if r != NVML_SUCCESS {
                return None;
            }
            let bytes: Vec<u8> = buf
                .iter()
                .take_while(|&&c| c != 0)
                .map(|&c| c.to_ne_bytes()[0])
                .collect();
            Some((index, String::from_utf8_lossy(&bytes).into_owned()))
        })
        .collect()
}

/// Device memory that NVML attributes to process `pid` on the device with `uuid`.
/// `None` when NVML cannot say (no NVML, PID not listed, value not available).
pub fn process_memory(uuid: &str, pid: u32) -> Option<u64> {
    let dev = device_by_uuid(uuid)?;
    // SAFETY: the v2 and v3 functions share this signature and struct layout.
    let f = unsafe {
        function::<ProcsFn>(id::nvmlDeviceGetComputeRunningProcesses_v3)
            .or_else(|| function::<ProcsFn>(id::nvmlDeviceGetComputeRunningProcesses_v2))
    }?;
    let mut infos = vec![NvmlProcessInfo::default(); 64];
    for _ in 0..4 {
        // Saturating only ever tells NVML less room than there is.
        let mut count = c_uint::try_from(infos.len()).unwrap_or(c_uint::MAX);
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
            // Not available, or 0 (535.x/550.x in a container: a process with a context
            // never uses nothing): the driver cannot say.
            .filter(|&m| m != u64::MAX && m != 0);
    }
    None
}

type UtilFn = unsafe extern "C" fn(
    NvmlDevice,
    *mut NvmlProcessUtilizationSample,
    *mut c_uint,
    u64,
) -> NvmlReturn;

/// The driver's per-process utilization samples on the device with `uuid` newer than
/// `since_us`: `(pid, timestamp in µs, SM utilization in percent)`.
pub fn utilization_samples(uuid: &str, since_us: u64) -> Vec<(u32, u64, u32)> {
    static READY: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);
    match READY.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {
            let ok = init();
            READY.store(if ok { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
            if !ok {
                return Vec::new();
            }
        }
        1 => {}
        _ => return Vec::new(),
    }
    let Some(dev) = device_by_uuid(uuid) else {
        return Vec::new();
    };
    // SAFETY: the real nvmlDeviceGetProcessUtilization has this signature.
    let Some(f) = (unsafe { function::<UtilFn>(id::nvmlView_GetProcessUtilization) }) else {
        return Vec::new();
    };
    let mut samples = vec![NvmlProcessUtilizationSample::default(); 64];
    for _ in 0..4 {
        // Saturating only ever tells NVML less room than there is.
        let mut count = c_uint::try_from(samples.len()).unwrap_or(c_uint::MAX);
        // SAFETY: `samples` holds `count` entries.
        let r = unsafe { f(dev, samples.as_mut_ptr(), &mut count, since_us) };
        if r == NVML_ERROR_INSUFFICIENT_SIZE {
            samples.resize(count as usize + 16, NvmlProcessUtilizationSample::default());
            continue;
        }
        if r != NVML_SUCCESS {
            return Vec::new();
        }
        return samples[..(count as usize).min(samples.len())]
            .iter()
            .map(|s| (s.pid, s.time_stamp, s.sm_util))
            .collect();
    }
    Vec::new()
}
