//! CUDA arrays and mipmapped arrays: charged by an estimate from the descriptor, then
//! corrected to the driver's own memory requirements.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::{c_int, c_uint, c_void};

use super::alloc::{adjust, charged_on_current};
use super::common::{PAGE, round_up, with_slice};
use crate::books::Key;
use crate::ffi::*;
use crate::process::{Access, access};
use crate::real::call_driver;
use crate::slice::Slice;
use crate::table::id;

// Arrays: charged by an estimate from the descriptor, then corrected to the driver's
// own memory requirements.

type ArrayCreateFn = unsafe extern "C" fn(*mut CUarray, *const CudaArrayDescriptor) -> CUresult;
type Array3DCreateFn = unsafe extern "C" fn(*mut CUarray, *const CudaArray3dDescriptor) -> CUresult;
type MipmapCreateFn =
    unsafe extern "C" fn(*mut CUmipmappedArray, *const CudaArray3dDescriptor, c_uint) -> CUresult;
type ArrayDestroyFn = unsafe extern "C" fn(*mut c_void) -> CUresult;
type ArrayReqFn =
    unsafe extern "C" fn(*mut CudaArrayMemoryRequirements, *mut c_void, CUdevice) -> CUresult;

/// Bytes per channel element assumed for a `CUarray_format` this crate does not know:
/// the estimate errs high, and is corrected from the driver's memory requirements.
const UNKNOWN_FORMAT_BYTES: u64 = 16;

fn array_bytes(width: usize, height: usize, depth: usize, format: c_int, channels: c_uint) -> u64 {
    (width.max(1) as u64)
        .saturating_mul(height.max(1) as u64)
        .saturating_mul(depth.max(1) as u64)
        .saturating_mul(array_format_bytes(format).unwrap_or(UNKNOWN_FORMAT_BYTES))
        .saturating_mul(channels.max(1) as u64)
}

fn create_array(
    s: &Slice,
    estimate: u64,
    what: &str,
    create: impl FnOnce() -> CUresult,
    created: impl FnOnce() -> *mut c_void,
    requirements_id: usize,
    destroy_id: usize,
) -> CUresult {
    let estimate = round_up(estimate, PAGE);
    let mut handle: *mut c_void = std::ptr::null_mut();
    let r = charged_on_current(s, estimate, what, create, || {
        handle = created();
        Key::Array(handle as u64)
    });
    if r != CUDA_SUCCESS {
        return r;
    }
    let Ok(dev) = crate::real::current_cuda_device() else {
        return r;
    };
    let mut req = CudaArrayMemoryRequirements::default();
    if call_driver!(requirements_id, ArrayReqFn, &mut req, handle, dev) == CUDA_SUCCESS
        && req.size > 0
    {
        let actual = round_up(req.size as u64, PAGE);
        if !adjust(s, Key::Array(handle as u64), actual, what) {
            call_driver!(destroy_id, ArrayDestroyFn, handle);
            s.forget(Key::Array(handle as u64));
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    }
    r
}

/// `cuArrayCreate_v2`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `array` is null or valid for writing one `CUarray`; `desc` is null or
/// points to a readable `CUDA_ARRAY_DESCRIPTOR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut CUarray,
    desc: *const CudaArrayDescriptor,
) -> CUresult {
    let call = || call_driver!(id::cuArrayCreate_v2, ArrayCreateFn, array, desc);
    if array.is_null() || desc.is_null() {
        return call();
    }
    // SAFETY: the caller's valid descriptor.
    let d = unsafe { &*desc };
    let estimate = array_bytes(d.width, d.height, 1, d.format, d.num_channels);
    with_slice!(
        // SAFETY: written by the driver on success.
        |s| create_array(s, estimate, "cuArrayCreate", call, || unsafe { *array }, id::cuArrayGetMemoryRequirements, id::cuArrayDestroy),
        else call()
    )
}

/// `cuArray3DCreate_v2`. Sparse and deferred-mapping arrays have no memory of their own.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `array` is null or valid for writing one `CUarray`; `desc` is null or
/// points to a readable `CUDA_ARRAY3D_DESCRIPTOR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    array: *mut CUarray,
    desc: *const CudaArray3dDescriptor,
) -> CUresult {
    let call = || call_driver!(id::cuArray3DCreate_v2, Array3DCreateFn, array, desc);
    if array.is_null() || desc.is_null() {
        return call();
    }
    // SAFETY: the caller's valid descriptor.
    let d = unsafe { &*desc };
    if d.flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING) != 0 {
        return call();
    }
    let estimate = array_bytes(d.width, d.height, d.depth, d.format, d.num_channels);
    with_slice!(
        // SAFETY: written by the driver on success.
        |s| create_array(s, estimate, "cuArray3DCreate", call, || unsafe { *array }, id::cuArrayGetMemoryRequirements, id::cuArrayDestroy),
        else call()
    )
}

/// `cuMipmappedArrayCreate`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `array` is null or valid for writing one `CUmipmappedArray`; `desc` is
/// null or points to a readable `CUDA_ARRAY3D_DESCRIPTOR`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut CUmipmappedArray,
    desc: *const CudaArray3dDescriptor,
    levels: c_uint,
) -> CUresult {
    let call = || {
        call_driver!(
            id::cuMipmappedArrayCreate,
            MipmapCreateFn,
            array,
            desc,
            levels
        )
    };
    if array.is_null() || desc.is_null() {
        return call();
    }
    // SAFETY: the caller's valid descriptor.
    let d = unsafe { &*desc };
    if d.flags & (CUDA_ARRAY3D_SPARSE | CUDA_ARRAY3D_DEFERRED_MAPPING) != 0 {
        return call();
    }
    let (mut w, mut h, mut z) = (d.width.max(1), d.height.max(1), d.depth.max(1));
    let mut estimate = 0u64;
    for _ in 0..levels.clamp(1, 32) {
        estimate = estimate.saturating_add(array_bytes(w, h, z, d.format, d.num_channels));
        (w, h, z) = ((w / 2).max(1), (h / 2).max(1), (z / 2).max(1));
    }
    with_slice!(
        // SAFETY: written by the driver on success.
        |s| create_array(s, estimate, "cuMipmappedArrayCreate", call, || unsafe { *array }, id::cuMipmappedArrayGetMemoryRequirements, id::cuMipmappedArrayDestroy),
        else call()
    )
}

/// `cuArrayDestroy`.
#[unsafe(no_mangle)]
pub extern "C" fn cuArrayDestroy(array: CUarray) -> CUresult {
    let r = call_driver!(id::cuArrayDestroy, ArrayDestroyFn, array);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.forget(Key::Array(array as u64));
    }
    r
}

/// `cuMipmappedArrayDestroy`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMipmappedArrayDestroy(array: CUmipmappedArray) -> CUresult {
    let r = call_driver!(id::cuMipmappedArrayDestroy, ArrayDestroyFn, array);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.forget(Key::Array(array as u64));
    }
    r
}
