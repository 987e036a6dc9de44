//! The exported NVML entry points. Each checks fault injection first, then initialisation,
//! then its arguments, and always returns an `nvmlReturn_t`.

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};

use crate::nvml::{Machine, handle_of, index_of, injected, machine};
use crate::types::*;
use crate::view::{Caller, listed_memory, listed_pid};

/// `nvmlDevice_t`.
pub type NvmlDevice = *mut c_void;

const DRIVER_VERSION: &str = "580.159.04";
const NVML_VERSION: &str = "13.580.159.04";
const CUDA_DRIVER_VERSION: c_int = 13000;
const PCI_DEVICE_ID: c_uint = 0x2330_10DE;
const PCI_SUBSYSTEM_ID: c_uint = 0x16C1_10DE;

pub(crate) fn call(
    symbol: &str,
    f: impl FnOnce(&'static Machine) -> Result<(), NvmlReturn>,
) -> NvmlReturn {
    if let Some(code) = injected(symbol) {
        return code;
    }
    match machine().and_then(f) {
        Ok(()) => NVML_SUCCESS,
        Err(e) => e,
    }
}

/// Writes `v` through an out-pointer.
///
/// # Safety
/// `p` must be null or valid for writing a `T`.
pub(crate) unsafe fn put<T>(p: *mut T, v: T) -> Result<(), NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and valid for writes by the caller's contract.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Copies `s` and a NUL into a caller buffer of `len` bytes.
///
/// # Safety
/// `buf` must be null or valid for writing `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_uint, s: &str) -> Result<(), NvmlReturn> {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the buffer holds at least s.len() + 1 bytes (checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), s.len());
        buf.add(s.len()).write(0);
    }
    Ok(())
}

/// Reads a C string argument.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string.
unsafe fn get_str<'a>(p: *const c_char) -> Result<&'a str, NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str().map_err(|_| NVML_ERROR_INVALID_ARGUMENT)
}

pub(crate) fn device_index(m: &Machine, dev: NvmlDevice) -> Result<usize, NvmlReturn> {
    index_of(m, dev)
}

/// A device index or count as NVML's `unsigned int` (both are below fake-gpu's
/// `MAX_DEVICES`, so this never saturates).
fn device_number(n: usize) -> c_uint {
    c_uint::try_from(n).unwrap_or(c_uint::MAX)
}

fn bus_id(index: usize) -> String {
    format!("{:08X}:{:02X}:00.0", 0, index + 1)
}

fn bus_id_legacy(index: usize) -> String {
    format!("{:04X}:{:02X}:00.0", 0, index + 1)
}

/// Parses `[domain:]bus:device.function` (hex) into (domain, bus, device, function).
fn parse_bus_id(text: &str) -> Option<(u32, u32, u32, u32)> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (u32::from_str_radix(d, 16).ok()?, *b, *df),
        [b, df] => (0, *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    Some((
        domain,
        u32::from_str_radix(bus, 16).ok()?,
        u32::from_str_radix(dev, 16).ok()?,
        u32::from_str_radix(func, 16).ok()?,
    ))
}

// ---------------------------------------------------------------------------------------
// Initialisation and system queries.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit_v2() -> NvmlReturn {
    if let Some(code) = injected("nvmlInit_v2") {
        return code;
    }
    crate::nvml::init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInit() -> NvmlReturn {
    if let Some(code) = injected("nvmlInit") {
        return code;
    }
    crate::nvml::init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> NvmlReturn {
    if let Some(code) = injected("nvmlInitWithFlags") {
        return code;
    }
    crate::nvml::init()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlShutdown() -> NvmlReturn {
    if let Some(code) = injected("nvmlShutdown") {
        return code;
    }
    crate::nvml::shutdown()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlErrorString(result: NvmlReturn) -> *const c_char {
    error_string(result).as_ptr()
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    // SAFETY: `version` is valid for `length` bytes by the API contract.
    call("nvmlSystemGetDriverVersion", |_| unsafe {
        put_str(version, length, DRIVER_VERSION)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(
    version: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    // SAFETY: `version` is valid for `length` bytes by the API contract.
    call("nvmlSystemGetNVMLVersion", |_| unsafe {
        put_str(version, length, NVML_VERSION)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(version: *mut c_int) -> NvmlReturn {
    // SAFETY: `version` is null or writable by the API contract.
    call("nvmlSystemGetCudaDriverVersion", |_| unsafe {
        put(version, CUDA_DRIVER_VERSION)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(version: *mut c_int) -> NvmlReturn {
    // SAFETY: `version` is null or writable by the API contract.
    call("nvmlSystemGetCudaDriverVersion_v2", |_| unsafe {
        put(version, CUDA_DRIVER_VERSION)
    })
}

// ---------------------------------------------------------------------------------------
// Device enumeration.

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: `count` is null or writable by the API contract.
    call("nvmlDeviceGetCount_v2", |m| unsafe {
        put(count, device_number(m.cfg.count()))
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCount(count: *mut c_uint) -> NvmlReturn {
    // SAFETY: `count` is null or writable by the API contract.
    call("nvmlDeviceGetCount", |m| unsafe {
        put(count, device_number(m.cfg.count()))
    })
}

fn handle_by_index(m: &Machine, index: c_uint, device: *mut NvmlDevice) -> Result<(), NvmlReturn> {
    if index as usize >= m.cfg.count() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: `device` is null or writable by the API contract of the callers.
    unsafe { put(device, handle_of(index as usize)) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    call("nvmlDeviceGetHandleByIndex_v2", |m| {
        handle_by_index(m, index, device)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex(
    index: c_uint,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    call("nvmlDeviceGetHandleByIndex", |m| {
        handle_by_index(m, index, device)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    call("nvmlDeviceGetHandleByUUID", |m| {
        // SAFETY: `uuid` is null or a C string by the API contract.
        let want = unsafe { get_str(uuid) }?;
        let d = m
            .cfg
            .devices
            .iter()
            .find(|d| d.uuid.eq_ignore_ascii_case(want.trim()))
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        // SAFETY: `device` is null or writable by the API contract.
        unsafe { put(device, handle_of(d.index)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId_v2(
    pci_bus_id: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    call("nvmlDeviceGetHandleByPciBusId_v2", |m| {
        // SAFETY: `pci_bus_id` is null or a C string by the API contract.
        let text = unsafe { get_str(pci_bus_id) }?;
        let (domain, bus, dev, func) = parse_bus_id(text).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
        let d = m
            .cfg
            .devices
            .iter()
            .find(|d| domain == 0 && dev == 0 && func == 0 && bus == d.pci_bus())
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        // SAFETY: `device` is null or writable by the API contract.
        unsafe { put(device, handle_of(d.index)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetHandleByPciBusId(
    pci_bus_id: *const c_char,
    device: *mut NvmlDevice,
) -> NvmlReturn {
    // SAFETY: same contract as the _v2 entry point.
    unsafe { nvmlDeviceGetHandleByPciBusId_v2(pci_bus_id, device) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: NvmlDevice, index: *mut c_uint) -> NvmlReturn {
    call("nvmlDeviceGetIndex", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `index` is null or writable by the API contract.
        unsafe { put(index, device_number(i)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: NvmlDevice,
    minor: *mut c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetMinorNumber", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `minor` is null or writable by the API contract.
        unsafe { put(minor, device_number(i)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: NvmlDevice,
    uuid: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetUUID", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `uuid` is valid for `length` bytes by the API contract.
        unsafe { put_str(uuid, length, &m.cfg.devices[i].uuid) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: NvmlDevice,
    name: *mut c_char,
    length: c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetName", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `name` is valid for `length` bytes by the API contract.
        unsafe { put_str(name, length, &m.cfg.devices[i].name) }
    })
}

fn fill_pci(index: usize) -> NvmlPciInfo {
    let mut info = NvmlPciInfo {
        bus_id_legacy: [0; 16],
        domain: 0,
        bus: device_number(index) + 1,
        device: 0,
        pci_device_id: PCI_DEVICE_ID,
        pci_sub_system_id: PCI_SUBSYSTEM_ID,
        bus_id: [0; 32],
    };
    let legacy = bus_id_legacy(index);
    let full = bus_id(index);
    info.bus_id_legacy[..legacy.len()].copy_from_slice(legacy.as_bytes());
    info.bus_id[..full.len()].copy_from_slice(full.as_bytes());
    info
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v3(
    device: NvmlDevice,
    pci: *mut NvmlPciInfo,
) -> NvmlReturn {
    call("nvmlDeviceGetPciInfo_v3", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `pci` is null or points to an nvmlPciInfo_t by the API contract.
        unsafe { put(pci, fill_pci(i)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetPciInfo_v2(
    device: NvmlDevice,
    pci: *mut NvmlPciInfo,
) -> NvmlReturn {
    call("nvmlDeviceGetPciInfo_v2", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `pci` is null or points to an nvmlPciInfo_t by the API contract.
        unsafe { put(pci, fill_pci(i)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetCudaComputeCapability(
    device: NvmlDevice,
    major: *mut c_int,
    minor: *mut c_int,
) -> NvmlReturn {
    call("nvmlDeviceGetCudaComputeCapability", |m| {
        device_index(m, device)?;
        if major.is_null() || minor.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: both pointers are non-null and writable by the API contract.
        unsafe {
            put(major, 9)?;
            put(minor, 0)
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: NvmlDevice,
    utilization: *mut NvmlUtilization,
) -> NvmlReturn {
    call("nvmlDeviceGetUtilizationRates", |m| {
        let i = device_index(m, device)?;
        let (gpu, memory) = m
            .state
            .lock()
            .processes(i)
            .iter()
            .fold((0, 0), |(g, mm), p| {
                (g + p.activity.sm_util, mm + p.activity.mem_util)
            });
        let v = NvmlUtilization {
            gpu: gpu.min(100),
            memory: memory.min(100),
        };
        // SAFETY: `utilization` is null or writable by the API contract.
        unsafe { put(utilization, v) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: NvmlDevice,
    current: *mut c_uint,
    pending: *mut c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetMigMode", |m| {
        device_index(m, device)?;
        if current.is_null() || pending.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: both pointers are non-null and writable by the API contract.
        unsafe {
            put(current, 0)?;
            put(pending, 0)
        }
    })
}

// ---------------------------------------------------------------------------------------
// Memory and processes.

fn memory(m: &Machine, index: usize) -> (u64, u64) {
    let g = m.state.lock();
    let total = g.total(index);
    let used = g.in_use(index).min(total);
    (total, used)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: NvmlDevice,
    mem: *mut NvmlMemory,
) -> NvmlReturn {
    call("nvmlDeviceGetMemoryInfo", |m| {
        let i = device_index(m, device)?;
        let (total, used) = memory(m, i);
        let v = NvmlMemory {
            total,
            free: total - used,
            used,
        };
        // SAFETY: `mem` is null or points to an nvmlMemory_t by the API contract.
        unsafe { put(mem, v) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    mem: *mut NvmlMemoryV2,
) -> NvmlReturn {
    call("nvmlDeviceGetMemoryInfo_v2", |m| {
        let i = device_index(m, device)?;
        if mem.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: `mem` is non-null and points to an nvmlMemory_v2_t by the API contract.
        let version = unsafe { std::ptr::addr_of!((*mem).version).read_unaligned() };
        if version != NVML_MEMORY_V2 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let (total, used) = memory(m, i);
        let v = NvmlMemoryV2 {
            version,
            total,
            reserved: 0,
            free: total - used,
            used,
        };
        // SAFETY: `mem` is non-null and points to a writable nvmlMemory_v2_t by the API
        // contract (its version was checked above).
        unsafe { put(mem, v) }
    })
}

/// The `infoCount` protocol shared by every process-list call.
///
/// # Safety
/// `count` must be null or valid for reads and writes; `infos` null or valid for `*count`
/// elements of `T`.
pub(crate) unsafe fn list_processes<T>(
    symbol: &str,
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut T,
    graphics: bool,
    make: impl Fn(c_uint, u64) -> T,
) -> NvmlReturn {
    call(symbol, |m| {
        let i = device_index(m, device)?;
        if count.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        let procs = if graphics {
            Vec::new()
        } else {
            compute_processes(m, i)
        };
        // SAFETY: `count` is non-null and valid by the caller's contract.
        let room = unsafe { count.read_unaligned() } as usize;
        // SAFETY: `count` is non-null and writable by the caller's contract; written
        // without assuming alignment.
        unsafe { count.write_unaligned(c_uint::try_from(procs.len()).unwrap_or(c_uint::MAX)) };
        if procs.is_empty() {
            return Ok(());
        }
        if room < procs.len() {
            return Err(NVML_ERROR_INSUFFICIENT_SIZE);
        }
        if infos.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        for (k, &(pid, used)) in procs.iter().enumerate() {
            // SAFETY: k < procs.len() <= room, the caller's array length.
            unsafe { infos.add(k).write_unaligned(make(pid, used)) };
        }
        Ok(())
    })
}

/// The compute processes on device `i` as the caller sees them: (pid, usedGpuMemory).
pub(crate) fn compute_processes(m: &Machine, i: usize) -> Vec<(c_uint, u64)> {
    let caller = Caller::current();
    m.state
        .lock()
        .processes(i)
        .iter()
        .filter_map(|p| {
            let pid = listed_pid(m.pid_mode, &caller, p.pid)?;
            let used = listed_memory(m.pid_mode, &caller, p.total(), m.broken_memory_zero);
            Some((pid, used))
        })
        .collect()
}

fn info_v2(pid: c_uint, used: u64) -> NvmlProcessInfo {
    NvmlProcessInfo {
        pid,
        used_gpu_memory: used,
        gpu_instance_id: NVML_VALUE_NOT_AVAILABLE,
        compute_instance_id: NVML_VALUE_NOT_AVAILABLE,
    }
}

fn info_v1(pid: c_uint, used: u64) -> NvmlProcessInfoV1 {
    NvmlProcessInfoV1 {
        pid,
        used_gpu_memory: used,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: forwarded API contract.
    unsafe {
        list_processes(
            "nvmlDeviceGetComputeRunningProcesses_v3",
            device,
            count,
            infos,
            false,
            info_v2,
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v2(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: forwarded API contract.
    unsafe {
        list_processes(
            "nvmlDeviceGetComputeRunningProcesses_v2",
            device,
            count,
            infos,
            false,
            info_v2,
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfoV1,
) -> NvmlReturn {
    // SAFETY: forwarded API contract.
    unsafe {
        list_processes(
            "nvmlDeviceGetComputeRunningProcesses",
            device,
            count,
            infos,
            false,
            info_v1,
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v3(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: forwarded API contract.
    unsafe {
        list_processes(
            "nvmlDeviceGetGraphicsRunningProcesses_v3",
            device,
            count,
            infos,
            true,
            info_v2,
        )
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetGraphicsRunningProcesses_v2(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlProcessInfo,
) -> NvmlReturn {
    // SAFETY: forwarded API contract.
    unsafe {
        list_processes(
            "nvmlDeviceGetGraphicsRunningProcesses_v2",
            device,
            count,
            infos,
            true,
            info_v2,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bus_ids() {
        assert_eq!(bus_id(0), "00000000:01:00.0");
        assert_eq!(bus_id_legacy(10), "0000:0B:00.0");
        assert_eq!(parse_bus_id("00000000:01:00.0"), Some((0, 1, 0, 0)));
        assert_eq!(parse_bus_id("0000:0b:00.0"), Some((0, 11, 0, 0)));
        assert_eq!(parse_bus_id("02:00.0"), Some((0, 2, 0, 0)));
        assert_eq!(parse_bus_id("nope"), None);
        let p = fill_pci(0);
        assert_eq!(&p.bus_id[..17], b"00000000:01:00.0\0");
        assert_eq!(&p.bus_id_legacy[..13], b"0000:01:00.0\0");
    }
}
