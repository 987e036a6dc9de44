//! Device enumeration and queries (`cuDeviceGet*`), honouring `CUDA_VISIBLE_DEVICES`.

use std::ffi::{CStr, c_char, c_int};

use crate::driver::{Driver, Out, api, size_t};
use crate::types::*;

/// Copies `s` into a caller buffer of `len` bytes, truncating and always NUL-terminating.
///
/// # Safety
/// `buf` must be null or valid for writing `len` bytes.
unsafe fn put_str(buf: *mut c_char, len: c_int, s: &str) -> Result<(), CUresult> {
    if buf.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let room = usize::try_from(len).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
    let n = s.len().min(room - 1);
    // SAFETY: `buf` holds `len` > n bytes by the caller's contract.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf.cast::<u8>(), n);
        buf.add(n).write(0);
    }
    Ok(())
}

fn format_bus_id(d: &Driver, dev: usize) -> String {
    format!("{:04x}:{:02x}:00.0", 0, d.phys_index(dev) + 1)
}

/// The PCI bus number of device `dev` (index + 1; 0 where it would not fit).
fn pci_bus(d: &Driver, dev: usize) -> c_int {
    crate::driver::ordinal(d.phys_index(dev)).map_or(0, |i| i + 1)
}

/// Value of a `CUdevice_attribute` (unknown attributes read 0).
pub fn attribute(d: &Driver, attr: c_int, dev: usize) -> c_int {
    match attr {
        1 => 1024,                                       // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                                   // MAX_BLOCK_DIM_X / Y
        4 => 64,                                         // MAX_BLOCK_DIM_Z
        5 => 2_147_483_647,                              // MAX_GRID_DIM_X
        6 | 7 => 65535,                                  // MAX_GRID_DIM_Y / Z
        8 => 49152,                                      // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 65536,                                      // TOTAL_CONSTANT_MEMORY
        10 => 32,                                        // WARP_SIZE
        11 => 2_147_483_647,                             // MAX_PITCH
        12 => 65536,                                     // MAX_REGISTERS_PER_BLOCK
        13 => 1_980_000,                                 // CLOCK_RATE (kHz)
        14 => 512,                                       // TEXTURE_ALIGNMENT
        15 => 1,                                         // GPU_OVERLAP
        16 => 132,                                       // MULTIPROCESSOR_COUNT
        19 => 1,                                         // CAN_MAP_HOST_MEMORY
        31 => 1,                                         // CONCURRENT_KERNELS
        32 => 1,                                         // ECC_ENABLED
        33 => pci_bus(d, dev),                           // PCI_BUS_ID
        36 => 2_619_000,                                 // MEMORY_CLOCK_RATE (kHz)
        37 => 5120,                                      // GLOBAL_MEMORY_BUS_WIDTH
        38 => 50 * 1024 * 1024,                          // L2_CACHE_SIZE
        39 => 2048,                                      // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 3,                                         // ASYNC_ENGINE_COUNT
        41 => 1,                                         // UNIFIED_ADDRESSING
        75 => 9,                                         // COMPUTE_CAPABILITY_MAJOR
        76 => 0,                                         // COMPUTE_CAPABILITY_MINOR
        81 => 233_472,                                   // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,                                     // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 1,                                         // MANAGED_MEMORY
        89 => 1,                                         // CONCURRENT_MANAGED_ACCESS
        95 => 1,                                         // COOPERATIVE_LAUNCH
        97 => 232_448,                                   // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        102 => 1,                                        // VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        103 => 1,  // HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED
        106 => 32, // MAX_BLOCKS_PER_MULTIPROCESSOR
        115 => 1,  // MEMORY_POOLS_SUPPORTED
        119 => CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, // MEMPOOL_SUPPORTED_HANDLE_TYPES
        _ => 0,
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CUresult {
    api("cuDeviceGetCount", |d| {
        // SAFETY: `count` is null or writable by the API contract.
        unsafe { Out::new(count) }?.set(crate::driver::ordinal(d.device_count())?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int) -> CUresult {
    api("cuDeviceGet", |d| {
        // SAFETY: `device` is null or writable by the API contract.
        let out = unsafe { Out::new(device) }?;
        out.set(crate::driver::ordinal(d.device(ordinal)?)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice) -> CUresult {
    api("cuDeviceGetName", |d| {
        let dev = d.device(dev)?;
        let n = &d.cfg.devices[d.phys_index(dev)].name;
        // SAFETY: `name` is valid for `len` bytes by the API contract.
        unsafe { put_str(name, len, n) }
    })
}

fn uuid(symbol: &str, out: *mut [u8; 16], dev: CUdevice) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `out` is null or points to a CUuuid by the API contract.
        let out = unsafe { Out::new(out) }?;
        let dev = d.device(dev)?;
        out.set(d.cfg.devices[d.phys_index(dev)].uuid_bytes);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid_out: *mut [u8; 16], dev: CUdevice) -> CUresult {
    uuid("cuDeviceGetUuid", uuid_out, dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid_out: *mut [u8; 16], dev: CUdevice) -> CUresult {
    uuid("cuDeviceGetUuid_v2", uuid_out, dev)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    api("cuDeviceTotalMem_v2", |d| {
        // SAFETY: `bytes` is null or writable by the API contract.
        let out = unsafe { Out::new(bytes) }?;
        let dev = d.device(dev)?;
        out.set(size_t(d.total(dev))?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut c_int,
    attrib: c_int,
    dev: CUdevice,
) -> CUresult {
    api("cuDeviceGetAttribute", |d| {
        // SAFETY: `pi` is null or writable by the API contract.
        let out = unsafe { Out::new(pi) }?;
        let dev = d.device(dev)?;
        out.set(attribute(d, attrib, dev));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetPCIBusId(
    pci_bus_id: *mut c_char,
    len: c_int,
    dev: CUdevice,
) -> CUresult {
    api("cuDeviceGetPCIBusId", |d| {
        let dev = d.device(dev)?;
        // SAFETY: `pci_bus_id` is valid for `len` bytes by the API contract.
        unsafe { put_str(pci_bus_id, len, &format_bus_id(d, dev)) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetByPCIBusId(
    dev: *mut CUdevice,
    pci_bus_id: *const c_char,
) -> CUresult {
    api("cuDeviceGetByPCIBusId", |d| {
        // SAFETY: `dev` is null or writable by the API contract.
        let out = unsafe { Out::new(dev) }?;
        if pci_bus_id.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: non-null and NUL-terminated by the API contract.
        let want = unsafe { CStr::from_ptr(pci_bus_id) }.to_string_lossy();
        let parse = |s: &str| -> Option<(u32, u32, u32, u32)> {
            let parts: Vec<&str> = s.trim().split(':').collect();
            let (dom, bus, df) = match parts.as_slice() {
                [a, b, c] => (u32::from_str_radix(a, 16).ok()?, *b, *c),
                [b, c] => (0, *b, *c),
                _ => return None,
            };
            let (dv, f) = df.split_once('.')?;
            Some((
                dom,
                u32::from_str_radix(bus, 16).ok()?,
                u32::from_str_radix(dv, 16).ok()?,
                u32::from_str_radix(f, 16).ok()?,
            ))
        };
        let want = parse(&want).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let found = (0..d.device_count())
            .find(|&v| parse(&format_bus_id(d, v)) == Some(want))
            .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
        out.set(crate::driver::ordinal(found)?);
        Ok(())
    })
}
