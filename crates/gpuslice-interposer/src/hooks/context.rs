//! Contexts: `cuInit` (where a broken configuration is refused), the primary context's
//! retain, release and reset, and `cuCtxCreate`: a new context is charged before the
//! driver creates it, and given back when it goes.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::{c_int, c_uint, c_void};

use gpuslice_ledger::DeviceSlot;

use super::common::with_slice;
use crate::ffi::*;
use crate::process::{Access, access};
use crate::real::call_driver;
use crate::slice::{PrimaryClaim, Slice};
use crate::table::id;

type InitFn = unsafe extern "C" fn(c_uint) -> CUresult;

/// `cuInit`: also where a broken configuration or ledger is reported and refused.
#[unsafe(no_mangle)]
pub extern "C" fn cuInit(flags: c_uint) -> CUresult {
    let r = call_driver!(id::cuInit, InitFn, flags);
    if r != CUDA_SUCCESS {
        return r;
    }
    with_slice!(|_s| r, else r)
}

// Contexts: their memory shows in nvidia-smi but in no allocation call. A new context is
// charged what a context takes in this slice *before* the driver creates it, so that
// contexts created at once in many processes never take the GPU past the slice, and
// refused with CUDA_ERROR_OUT_OF_MEMORY without being created when that does not fit.
// Once it exists, the charge is corrected by measuring when the slice is nearly full
// (or has not measured a context yet); a context measured larger than fits is
// destroyed and refused.

type RetainFn = unsafe extern "C" fn(*mut CUcontext, CUdevice) -> CUresult;
type ReleaseFn = unsafe extern "C" fn(CUdevice) -> CUresult;
type CtxCreate2Fn = unsafe extern "C" fn(*mut CUcontext, c_uint, CUdevice) -> CUresult;
type CtxCreate3Fn =
    unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_int, c_uint, CUdevice) -> CUresult;
type CtxCreate4Fn = unsafe extern "C" fn(*mut CUcontext, *mut c_void, c_uint, CUdevice) -> CUresult;
type CtxDestroyFn = unsafe extern "C" fn(CUcontext) -> CUresult;

/// Logs the refusal of a new context on a device entry.
fn refuse_context(s: &Slice, device: DeviceSlot, refusal: Option<gpuslice_ledger::Refusal>) {
    let (limit, used) = match refusal {
        Some(r) => (r.limit, r.used),
        None => (s.ledger.limit(device), s.used(device)),
    };
    crate::log::refusal(format_args!(
        "slice '{}' on {}: a new CUDA context (about {}) does not fit: the slice's limit is {} and {} is in use",
        s.name,
        s.ledger.uuid(device),
        gpuslice_config::human_size(s.context_estimate(device)),
        gpuslice_config::human_size(limit),
        gpuslice_config::human_size(used),
    ));
}

/// Runs `create`, which makes the driver create a context on `dev`, charged first;
/// `destroy` undoes a created context that turns out not to fit. Returns the code for
/// the caller.
fn create_context_charged(
    s: &Slice,
    device: DeviceSlot,
    create: impl FnOnce() -> CUresult,
    destroy: impl FnOnce(),
) -> CUresult {
    let charge = match s.reserve_context(device) {
        Ok(charge) => charge,
        Err(refusal) => {
            refuse_context(s, device, Some(refusal));
            return CUDA_ERROR_OUT_OF_MEMORY;
        }
    };
    let r = create();
    if r != CUDA_SUCCESS {
        s.cancel_context(charge);
        return r;
    }
    if s.context_created(&charge) {
        return CUDA_SUCCESS;
    }
    // Measured larger than fits: the refused charge of the measurement counted it.
    destroy();
    s.context_gone(device, charge.bytes);
    refuse_context(s, device, None);
    CUDA_ERROR_OUT_OF_MEMORY
}

/// `cuDevicePrimaryCtxRetain`. The primary context is reference-counted: the driver
/// creates it on the first retain, and libraries retain it again and again (the CUDA
/// runtime, cuBLAS, ...). It is charged once, before the retain that activates it in
/// this process; other threads retaining it meanwhile wait for that charge.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `ctx` is null or valid for writing one `CUcontext`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice) -> CUresult {
    let retain = || call_driver!(id::cuDevicePrimaryCtxRetain, RetainFn, ctx, dev);
    if ctx.is_null() {
        return retain();
    }
    let r = with_slice!(|s| retain_primary_charged(s, dev, retain), else retain());
    if r == CUDA_SUCCESS
        && let Some(s) = crate::process::existing()
    {
        // SAFETY: `ctx` is not null (checked above), and the driver wrote the primary
        // context there since the retain succeeded.
        s.compute.note_primary(dev, unsafe { *ctx });
    }
    r
}

fn retain_primary_charged(s: &Slice, dev: CUdevice, retain: impl FnOnce() -> CUresult) -> CUresult {
    let device = match s.device_entry(dev) {
        Ok(Some(d)) => d,
        Ok(None) => return retain(),
        Err(e) => return e,
    };
    let mut spins = 0u32;
    loop {
        match s.claim_primary_context(device) {
            PrimaryClaim::Mine => break,
            PrimaryClaim::Charged => return retain(),
            PrimaryClaim::Pending => {
                // Another thread is charging and creating it (a driver call that can take
                // a while): wait for it rather than create it uncharged.
                spins += 1;
                if spins < 64 {
                    std::thread::yield_now();
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }
    let before = s.context_bytes(device);
    let r = create_context_charged(s, device, retain, || {
        call_driver!(id::cuDevicePrimaryCtxRelease_v2, ReleaseFn, dev);
    });
    if r == CUDA_SUCCESS {
        s.note_primary_charge(device, s.context_bytes(device).saturating_sub(before));
    } else {
        s.unclaim_primary_context(device);
    }
    r
}

type GetStateFn = unsafe extern "C" fn(CUdevice, *mut c_uint, *mut c_int) -> CUresult;

/// After a release or reset of `dev`'s primary context: if the driver has destroyed it,
/// its charge is given back.
fn after_primary_release(r: CUresult, dev: CUdevice) -> CUresult {
    if r != CUDA_SUCCESS {
        return r;
    }
    let (mut flags, mut active): (c_uint, c_int) = (0, 0);
    let state = call_driver!(
        id::cuDevicePrimaryCtxGetState,
        GetStateFn,
        dev,
        &mut flags,
        &mut active
    );
    if state == CUDA_SUCCESS
        && active == 0
        && let Access::Slice(s) = access()
        && let Ok(Some(device)) = s.device_entry(dev)
    {
        s.primary_context_gone(device);
    }
    if state == CUDA_SUCCESS
        && active == 0
        && let Some(s) = crate::process::existing()
    {
        s.compute.primary_gone(dev);
    }
    r
}

/// `cuDevicePrimaryCtxRelease_v2`.
#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice) -> CUresult {
    after_primary_release(
        call_driver!(id::cuDevicePrimaryCtxRelease_v2, ReleaseFn, dev),
        dev,
    )
}

/// `cuDevicePrimaryCtxRelease` (the name before CUDA 11).
#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxRelease(dev: CUdevice) -> CUresult {
    after_primary_release(
        call_driver!(id::cuDevicePrimaryCtxRelease, ReleaseFn, dev),
        dev,
    )
}

/// `cuDevicePrimaryCtxReset_v2`: destroys the primary context at once.
#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxReset_v2(dev: CUdevice) -> CUresult {
    after_primary_release(
        call_driver!(id::cuDevicePrimaryCtxReset_v2, ReleaseFn, dev),
        dev,
    )
}

/// `cuDevicePrimaryCtxReset` (the name before CUDA 11).
#[unsafe(no_mangle)]
pub extern "C" fn cuDevicePrimaryCtxReset(dev: CUdevice) -> CUresult {
    after_primary_release(
        call_driver!(id::cuDevicePrimaryCtxReset, ReleaseFn, dev),
        dev,
    )
}

/// A `cuCtxCreate` variant: `create` calls the driver's function, which writes the new
/// context to `*ctx` on success.
///
/// # Safety
/// `ctx` is null or valid for reads once `create` has succeeded (the driver wrote it).
unsafe fn ctx_create_charged(
    ctx: *mut CUcontext,
    dev: CUdevice,
    create: impl FnOnce() -> CUresult,
) -> CUresult {
    if ctx.is_null() {
        return create();
    }
    let destroy = || {
        // SAFETY: called only after `create` succeeded, so the driver wrote the new
        // context to `*ctx`, which the caller guarantees is readable.
        let created = unsafe { *ctx };
        call_driver!(id::cuCtxDestroy_v2, CtxDestroyFn, created);
    };
    with_slice!(|s| match s.device_entry(dev) {
        Ok(Some(device)) => create_context_charged(s, device, create, destroy),
        Ok(None) => create(),
        Err(e) => e,
    }, else create())
}

/// `cuCtxCreate`: the symbol of the first ABI, still exported by the driver and handed
/// out by `cuGetProcAddress` for versions before 3.2.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `ctx` is null or valid for
/// writing one `CUcontext`, and any other pointer argument points to what `cuda.h` says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate(
    ctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let create = || call_driver!(id::cuCtxCreate, CtxCreate2Fn, ctx, flags, dev);
    // SAFETY: the driver writes `*ctx` on success; the caller made it writable.
    unsafe { ctx_create_charged(ctx, dev, create) }
}

/// `cuCtxCreate_v2`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `ctx` is null or valid for
/// writing one `CUcontext`, and any other pointer argument points to what `cuda.h` says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v2(
    ctx: *mut CUcontext,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let create = || call_driver!(id::cuCtxCreate_v2, CtxCreate2Fn, ctx, flags, dev);
    // SAFETY: the driver writes `*ctx` on success; the caller made it writable.
    unsafe { ctx_create_charged(ctx, dev, create) }
}

/// `cuCtxCreate_v3`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `ctx` is null or valid for
/// writing one `CUcontext`, and any other pointer argument points to what `cuda.h` says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v3(
    ctx: *mut CUcontext,
    params: *mut c_void,
    n: c_int,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let create = || call_driver!(id::cuCtxCreate_v3, CtxCreate3Fn, ctx, params, n, flags, dev);
    // SAFETY: the driver writes `*ctx` on success; the caller made it writable.
    unsafe { ctx_create_charged(ctx, dev, create) }
}

/// `cuCtxCreate_v4`.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `ctx` is null or valid for
/// writing one `CUcontext`, and any other pointer argument points to what `cuda.h` says.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuCtxCreate_v4(
    ctx: *mut CUcontext,
    params: *mut c_void,
    flags: c_uint,
    dev: CUdevice,
) -> CUresult {
    let create = || call_driver!(id::cuCtxCreate_v4, CtxCreate4Fn, ctx, params, flags, dev);
    // SAFETY: the driver writes `*ctx` on success; the caller made it writable.
    unsafe { ctx_create_charged(ctx, dev, create) }
}
