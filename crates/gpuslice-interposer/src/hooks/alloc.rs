//! Plain allocations (`cuMemAlloc`, pitch, managed) and their free, and what the
//! program is told about memory (`cuMemGetInfo`, `cuDeviceTotalMem`): each allocation is
//! charged to the slice's ledger before the driver takes the memory, and given back
//! after it is freed. A refusal is `CUDA_ERROR_OUT_OF_MEMORY`, what a full GPU returns.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_uint;

use super::common::{PAGE, round_up, with_slice};
use crate::books::{Charge, Key};
use crate::ffi::*;
use crate::lock::lock;
use crate::process::{Access, access};
use crate::real::call_driver;
use crate::slice::Slice;
use crate::table::id;

// Plain allocations.

type AllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;
type FreeFn = unsafe extern "C" fn(CUdeviceptr) -> CUresult;
type PitchFn = unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint) -> CUresult;
type ManagedFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, c_uint) -> CUresult;

/// Charges `bytes` on the current device, runs `call`, and records the result under
/// the key `key_of` gives; gives the charge back if the call fails.
pub fn charged_on_current(
    s: &Slice,
    bytes: u64,
    what: &str,
    call: impl FnOnce() -> CUresult,
    key_of: impl FnOnce() -> Key,
) -> CUresult {
    charged_on_current_as(s, bytes, what, true, call, key_of)
}

/// [`charged_on_current`], saying whether NVML's per-process usage shows the memory.
fn charged_on_current_as(
    s: &Slice,
    bytes: u64,
    what: &str,
    visible_to_nvml: bool,
    call: impl FnOnce() -> CUresult,
    key_of: impl FnOnce() -> Key,
) -> CUresult {
    let device = match s.current_device() {
        Ok((_, Some(d))) => d,
        Ok((_, None)) => return call(),
        Err(e) => return e,
    };
    if let Err(code) = s.reserve(device, bytes, what) {
        return code;
    }
    let r = call();
    if r == CUDA_SUCCESS {
        s.remember(
            key_of(),
            Charge {
                device,
                bytes,
                visible_to_nvml,
            },
        );
    } else {
        s.unreserve(device, bytes);
    }
    r
}

/// `cuMemAlloc_v2`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `dptr` is null or valid for writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, size: usize) -> CUresult {
    let call = || call_driver!(id::cuMemAlloc_v2, AllocFn, dptr, size);
    if size == 0 || dptr.is_null() {
        return call();
    }
    with_slice!(
        // SAFETY: the driver filled *dptr on success.
        |s| charged_on_current(s, round_up(size as u64, PAGE), "cuMemAlloc", call, || Key::Pointer(unsafe { *dptr })),
        else call()
    )
}

/// `cuMemAllocManaged`: managed memory is charged in full when allocated, as if it were
/// all resident on the device, because its pages may migrate there at any time.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `dptr` is null or valid for writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    size: usize,
    flags: c_uint,
) -> CUresult {
    let call = || call_driver!(id::cuMemAllocManaged, ManagedFn, dptr, size, flags);
    if size == 0 || dptr.is_null() {
        return call();
    }
    with_slice!(
        // SAFETY: the driver filled *dptr on success.
        |s| charged_on_current_as(s, round_up(size as u64, PAGE), "cuMemAllocManaged", false, call, || Key::Pointer(unsafe { *dptr })),
        else call()
    )
}

/// `cuMemAllocPitch_v2`: charged by the pitch the driver really chose.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `dptr` and `pitch` are each null or valid for writing one
/// `CUdeviceptr` and one `usize`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width: usize,
    height: usize,
    element_size: c_uint,
) -> CUresult {
    let call = || {
        call_driver!(
            id::cuMemAllocPitch_v2,
            PitchFn,
            dptr,
            pitch,
            width,
            height,
            element_size
        )
    };
    if dptr.is_null() || pitch.is_null() || width == 0 || height == 0 {
        return call();
    }
    with_slice!(|s| {
        let estimate = round_up(round_up(width as u64, 512).saturating_mul(height as u64), PAGE);
        let r = charged_on_current(s, estimate, "cuMemAllocPitch", call, || {
            // SAFETY: the driver filled *dptr on success.
            Key::Pointer(unsafe { *dptr })
        });
        if r != CUDA_SUCCESS {
            return r;
        }
        // SAFETY: both written by the driver on success.
        let (ptr, real_pitch) = unsafe { (*dptr, *pitch) };
        let actual = round_up((real_pitch as u64).saturating_mul(height as u64), PAGE);
        if actual != estimate && !adjust(s, Key::Pointer(ptr), actual, "cuMemAllocPitch") {
            call_driver!(id::cuMemFree_v2, FreeFn, ptr);
            s.forget(Key::Pointer(ptr));
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
        r
    }, else call())
}

/// Moves the charge recorded under `key` to `actual` bytes; false if growth does not fit
/// (then [`Slice::reserve`] has logged the refusal and counted it in the ledger: the
/// caller takes the allocation back and counts nothing more).
pub fn adjust(s: &Slice, key: Key, actual: u64, what: &str) -> bool {
    let Some(charge) = lock(&s.allocations).get(&key).copied() else {
        return true;
    };
    if actual > charge.bytes {
        if s.reserve(charge.device, actual - charge.bytes, what)
            .is_err()
        {
            return false;
        }
    } else {
        s.unreserve(charge.device, charge.bytes - actual);
    }
    lock(&s.allocations).insert(
        key,
        Charge {
            bytes: actual,
            ..charge
        },
    );
    true
}

/// `cuMemFree_v2`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    let r = call_driver!(id::cuMemFree_v2, FreeFn, dptr);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.forget(Key::Pointer(dptr));
    }
    r
}

// ---------------------------------------------------------------------------------
// What the program is told about memory.

type MemInfoFn = unsafe extern "C" fn(*mut usize, *mut usize) -> CUresult;
type TotalMemFn = unsafe extern "C" fn(*mut usize, CUdevice) -> CUresult;

/// `cuMemGetInfo_v2`: total is the slice's limit, free what is left of it (never more
/// than the GPU really has free).
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `free` and `total` are each null or valid for writing one `usize`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    let r = call_driver!(id::cuMemGetInfo_v2, MemInfoFn, free, total);
    if r != CUDA_SUCCESS || free.is_null() || total.is_null() {
        return r;
    }
    with_slice!(|s| {
        let device = match s.current_device() {
            Ok((_, Some(d))) => d,
            Ok((_, None)) => return r,
            Err(e) => return e,
        };
        // Context and module memory is measured through NVML (which costs milliseconds
        // the first time) when the slice has not learned what a context takes yet, and
        // when it is nearly full; elsewhere the learned estimate is close enough.
        if s.ledger.context_estimate(device).is_none() {
            s.maybe_refresh_overhead(device, false);
        } else {
            s.refresh_overhead_if_tight(device, 0);
        }
        s.reconcile_pools();
        let limit = s.ledger.limit(device);
        let left = limit.saturating_sub(s.used(device));
        // A limit beyond usize (none on a 64-bit host) caps nothing.
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let left = usize::try_from(left).unwrap_or(usize::MAX);
        // SAFETY: both pointers were written by the driver just now.
        unsafe {
            *total = (*total).min(limit);
            *free = (*free).min(left);
        }
        r
    }, else r)
}

/// `cuDeviceTotalMem_v2`: the slice's limit for that device.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `bytes` is null or valid for writing one `usize`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    let r = call_driver!(id::cuDeviceTotalMem_v2, TotalMemFn, bytes, dev);
    if r != CUDA_SUCCESS || bytes.is_null() {
        return r;
    }
    with_slice!(|s| match s.device_entry(dev) {
        Ok(Some(d)) => {
            let limit = usize::try_from(s.ledger.limit(d)).unwrap_or(usize::MAX);
            // SAFETY: written by the driver just now.
            unsafe { *bytes = (*bytes).min(limit) };
            r
        }
        Ok(None) => r,
        Err(e) => e,
    }, else r)
}
