//! Virtual memory management: physical memory (`cuMemCreate`) is charged when created
//! and given back when released.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_ulonglong;

use super::common::with_slice;
use crate::books::{Charge, Key};
use crate::ffi::*;
use crate::process::{Access, access};
use crate::real::call_driver;
use crate::table::id;

// Virtual memory management: physical memory is charged when created. Imported handles
// are not charged: their memory belongs to (and is charged to) the process that made it.

type MemCreateFn = unsafe extern "C" fn(
    *mut CUmemGenericAllocationHandle,
    usize,
    *const CUmemAllocationProp,
    c_ulonglong,
) -> CUresult;
type MemReleaseFn = unsafe extern "C" fn(CUmemGenericAllocationHandle) -> CUresult;

/// `cuMemCreate`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `handle` is null or valid for writing one handle; `prop` is null or
/// points to a readable, initialised `CUmemAllocationProp`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    flags: c_ulonglong,
) -> CUresult {
    let call = || call_driver!(id::cuMemCreate, MemCreateFn, handle, size, prop, flags);
    if handle.is_null() || prop.is_null() || size == 0 {
        return call();
    }
    // SAFETY: the caller's valid properties.
    let location = unsafe { (*prop).location };
    if location.type_ != CU_MEM_LOCATION_TYPE_DEVICE {
        return call();
    }
    with_slice!(|s| {
        let device = match s.device_entry(location.id) {
            Ok(Some(d)) => d,
            Ok(None) => return call(),
            Err(e) => return e,
        };
        let bytes = size as u64;
        if let Err(code) = s.reserve(device, bytes, "cuMemCreate") {
            return code;
        }
        let r = call();
        if r == CUDA_SUCCESS {
            // SAFETY: written by the driver on success.
            s.remember(Key::Handle(unsafe { *handle }), Charge::device_memory(device, bytes));
        } else {
            s.unreserve(device, bytes);
        }
        r
    }, else call())
}

/// `cuMemRelease`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    let r = call_driver!(id::cuMemRelease, MemReleaseFn, handle);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.forget(Key::Handle(handle));
    }
    r
}
