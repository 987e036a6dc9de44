//! The memory the slice shows through NVML (`nvmlDeviceGetMemoryInfo`, `_v2`): total
//! the slice's limit on that GPU, used its usage from the ledger (contexts included),
//! free what is left (never more than the GPU really has free); `reserved` is 0.

// The hooks carry NVML's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use crate::ffi::*;
use crate::real::call_nvml;
use crate::slice::Slice;
use crate::table::id;

use super::source::{handle_index, handle_uuid, view_hook};

type MemFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> NvmlReturn;

type MemV2Fn = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemoryV2) -> NvmlReturn;

/// The slice's (limit, usage) on a device, `None` when the slice does not limit it.
fn slice_memory(slice: &Slice, device: NvmlDevice) -> Result<Option<(u64, u64)>, NvmlReturn> {
    let uuid = handle_uuid(device)?;
    if let Some(d) = slice
        .ledger
        .devices()
        .into_iter()
        .find(|d| d.uuid.eq_ignore_ascii_case(&uuid))
    {
        return Ok(Some((d.limit, d.used)));
    }
    // No process of the slice has used this GPU yet: the configuration's limit, nothing
    // used.
    let index = if slice.config.memory.has_index_selectors() {
        handle_index(device)
    } else {
        None
    };
    Ok(slice
        .config
        .memory
        .limit_for(index, &uuid)
        .map(|limit| (limit, 0)))
}

/// (total, used, free) of a slice whose limit is `limit` and usage `used`, on a GPU with
/// `real_free` bytes really free.
fn slice_numbers(limit: u64, used: u64, real_free: u64) -> (u64, u64, u64) {
    let used = used.min(limit);
    (limit, used, (limit - used).min(real_free))
}

/// Hook of `nvmlDeviceGetMemoryInfo`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: NvmlDevice,
    memory: *mut NvmlMemory,
) -> NvmlReturn {
    let r = call_nvml!(id::nvmlView_GetMemoryInfo, MemFn, device, memory);
    view_hook(
        || r,
        |slice| {
            if r != NVML_SUCCESS || memory.is_null() {
                return Ok(r);
            }
            let Some((limit, used)) = slice_memory(slice, device)? else {
                return Ok(r);
            };
            // SAFETY: the real call just filled this struct.
            let m = unsafe { &mut *memory };
            let (total, used, free) = slice_numbers(limit, used, m.free);
            *m = NvmlMemory { total, free, used };
            Ok(NVML_SUCCESS)
        },
    )
}

/// Hook of `nvmlDeviceGetMemoryInfo_v2`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    memory: *mut NvmlMemoryV2,
) -> NvmlReturn {
    let r = call_nvml!(id::nvmlView_GetMemoryInfo_v2, MemV2Fn, device, memory);
    view_hook(
        || r,
        |slice| {
            if r != NVML_SUCCESS || memory.is_null() {
                return Ok(r);
            }
            let Some((limit, used)) = slice_memory(slice, device)? else {
                return Ok(r);
            };
            // SAFETY: the real call just filled this struct (its version was checked).
            let m = unsafe { &mut *memory };
            let (total, used, free) = slice_numbers(limit, used, m.free);
            m.total = total;
            m.reserved = 0;
            m.free = free;
            m.used = used;
            Ok(NVML_SUCCESS)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_numbers_never_underflow_or_exceed_the_gpu() {
        let gib = 1u64 << 30;
        assert_eq!(
            slice_numbers(4 * gib, gib, 100 * gib),
            (4 * gib, gib, 3 * gib)
        );
        // Over the limit (forced charges): used is the limit, nothing is free.
        assert_eq!(
            slice_numbers(4 * gib, 5 * gib, 100 * gib),
            (4 * gib, 4 * gib, 0)
        );
        // The GPU itself is fuller than the slice thinks.
        assert_eq!(
            slice_numbers(4 * gib, gib, gib / 2),
            (4 * gib, gib, gib / 2)
        );
    }
}
