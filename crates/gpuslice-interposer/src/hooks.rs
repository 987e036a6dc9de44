//! The hooks: every driver call that allocates or frees device memory, reports memory,
//! or creates a context, wrapped so that the slice's ledger is charged before memory is
//! taken and credited after it is given back. Each hook returns a valid `CUresult`; a
//! refusal is `CUDA_ERROR_OUT_OF_MEMORY`, exactly what a full GPU returns.

#![allow(non_snake_case)]

use std::ffi::{c_int, c_uint, c_ulonglong, c_void};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use gpuslice_ledger::DeviceSlot;

use crate::ffi::*;
use crate::lock::lock;
use crate::log::log_at;
use crate::process::{Access, access};
use crate::real::{call_driver, graph_mem_attribute, pool_attribute};
use crate::slice::{Charge, Holding, Key, PrimaryClaim, Slice, set_tracked};
use crate::table::id;

/// What one physical allocation costs at least: device memory comes in 2 MiB pages.
const PAGE: u64 = 2 << 20;

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to).saturating_mul(to)
}

/// Runs a hook body with the slice, or passes straight through / refuses.
macro_rules! with_slice {
    (|$s:ident| $body:expr, else $pass:expr) => {
        match access() {
            Access::PassThrough => $pass,
            Access::Refuse(code) => code,
            Access::Slice($s) => $body,
        }
    };
}

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

// ---------------------------------------------------------------------------------
// Plain allocations.

type AllocFn = unsafe extern "C" fn(*mut CUdeviceptr, usize) -> CUresult;
type FreeFn = unsafe extern "C" fn(CUdeviceptr) -> CUresult;
type PitchFn = unsafe extern "C" fn(*mut CUdeviceptr, *mut usize, usize, usize, c_uint) -> CUresult;
type ManagedFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, c_uint) -> CUresult;

/// Charges `bytes` on the current device, runs `call`, and records the result under
/// the key `key_of` gives; gives the charge back if the call fails.
fn charged_on_current(
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
fn adjust(s: &Slice, key: Key, actual: u64, what: &str) -> bool {
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
        // SAFETY: both pointers were written by the driver just now.
        unsafe {
            *total = (*total).min(limit as usize);
            *free = (*free).min(left as usize);
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
            // SAFETY: written by the driver just now.
            unsafe { *bytes = (*bytes).min(s.ledger.limit(d) as usize) };
            r
        }
        Ok(None) => r,
        Err(e) => e,
    }, else r)
}

// ---------------------------------------------------------------------------------
// Stream-ordered allocation. A pool's charge is the memory the pool reserves from the
// device (what nvidia-smi sees), not the sum of live allocations.

type AllocAsyncFn = unsafe extern "C" fn(*mut CUdeviceptr, usize, CUstream) -> CUresult;
type AllocPoolAsyncFn =
    unsafe extern "C" fn(*mut CUdeviceptr, usize, CUmemoryPool, CUstream) -> CUresult;
type FreeAsyncFn = unsafe extern "C" fn(CUdeviceptr, CUstream) -> CUresult;
type IsCapturingFn = unsafe extern "C" fn(CUstream, *mut c_int) -> CUresult;
type SyncFn = unsafe extern "C" fn(CUstream) -> CUresult;
type GetMemPoolFn = unsafe extern "C" fn(*mut CUmemoryPool, CUdevice) -> CUresult;
type TrimFn = unsafe extern "C" fn(CUmemoryPool, usize) -> CUresult;
type PoolCreateFn = unsafe extern "C" fn(*mut CUmemoryPool, *const CUmemPoolProps) -> CUresult;
type PoolDestroyFn = unsafe extern "C" fn(CUmemoryPool) -> CUresult;

/// The per-thread default stream handle (`CU_STREAM_PER_THREAD`).
const CU_STREAM_PER_THREAD: CUstream = 2 as CUstream;

fn is_capturing(stream: CUstream, per_thread: bool) -> bool {
    let stream = if stream.is_null() && per_thread {
        CU_STREAM_PER_THREAD
    } else {
        stream
    };
    let mut status: c_int = CU_STREAM_CAPTURE_STATUS_NONE;
    let r = call_driver!(id::cuStreamIsCapturing, IsCapturingFn, stream, &mut status);
    r == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE
}

/// The stream-ordered allocation hooks' common path.
///
/// # Safety
/// `dptr` is null or valid for writing one `CUdeviceptr` (the driver writes the new
/// address there when `call` succeeds, and this function reads it back).
unsafe fn alloc_async(
    dptr: *mut CUdeviceptr,
    size: usize,
    given_pool: Option<CUmemoryPool>,
    stream: CUstream,
    per_thread: bool,
    call: impl FnOnce() -> CUresult,
) -> CUresult {
    if dptr.is_null() || size == 0 {
        return call();
    }
    let s = match access() {
        Access::PassThrough => return call(),
        Access::Refuse(code) => return code,
        Access::Slice(s) => s,
    };
    // During stream capture nothing is allocated: the graph's memory nodes are charged
    // when the graph is launched.
    if is_capturing(stream, per_thread) {
        return call();
    }
    let known_device =
        given_pool.and_then(|p| lock(&s.pools).device_of.get(&(p as usize)).copied());
    let dev = match known_device
        .map(Ok)
        .unwrap_or_else(crate::real::current_cuda_device)
    {
        Ok(d) => d,
        Err(e) => return e,
    };
    let device = match s.device_entry(dev) {
        Ok(Some(d)) => d,
        Ok(None) => return call(),
        Err(e) => return e,
    };
    let pool = match given_pool {
        Some(p) => p,
        None => {
            let mut p: CUmemoryPool = std::ptr::null_mut();
            let r = call_driver!(id::cuDeviceGetMemPool, GetMemPoolFn, &mut p, dev);
            if r != CUDA_SUCCESS {
                return r;
            }
            p
        }
    };
    let mut guard = lock(&s.pools);
    let book = &mut *guard;
    book.device_of.entry(pool as usize).or_insert(dev);
    let reserved = pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT).unwrap_or(0);
    let used = pool_attribute(pool, CU_MEMPOOL_ATTR_USED_MEM_CURRENT).unwrap_or(0);
    let tracked = book.charged.entry(pool as usize).or_insert((device, 0));
    set_tracked(&s.ledger, s.entry, Some(tracked), reserved, true);
    let need = used.saturating_add(round_up(size as u64, 512));
    let step = book
        .growth_step
        .get(&(pool as usize))
        .copied()
        .unwrap_or(PAGE);
    let growth = if need > reserved {
        round_up(need - reserved, PAGE).max(step)
    } else {
        0
    };
    if growth > 0 {
        if let Err(code) =
            s.reserve_holding(device, growth, "stream-ordered allocation", Holding::Pools)
        {
            return code;
        }
        tracked.1 += growth;
    }
    let r = call();
    let after = pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT).unwrap_or(reserved);
    if after > reserved {
        let seen = after - reserved;
        let step = book.growth_step.entry(pool as usize).or_insert(PAGE);
        *step = (*step).max(seen);
    }
    let tracked = book.charged.entry(pool as usize).or_insert((device, 0));
    if r != CUDA_SUCCESS {
        set_tracked(&s.ledger, s.entry, Some(tracked), after, true);
        return r;
    }
    if !set_tracked(&s.ledger, s.entry, Some(tracked), after, false) {
        // The pool grew by more than the slice has left: give the allocation back, let
        // the pool shrink again, and refuse (counted in the ledger by the refused
        // charge of `set_tracked`).
        // SAFETY: written by the driver on success.
        let ptr = unsafe { *dptr };
        call_driver!(id::cuMemFreeAsync, FreeAsyncFn, ptr, stream);
        call_driver!(id::cuStreamSynchronize, SyncFn, stream);
        call_driver!(id::cuMemPoolTrimTo, TrimFn, pool, used as usize);
        let now = pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT).unwrap_or(after);
        set_tracked(&s.ledger, s.entry, Some(tracked), now, true);
        crate::log::refusal(format_args!(
            "slice '{}' on {}: stream-ordered allocation of {} refused: the pool would grow past the slice's limit of {}",
            s.name,
            s.ledger.uuid(device),
            gpuslice_config::human_size(size as u64),
            gpuslice_config::human_size(s.ledger.limit(device)),
        ));
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    r
}

/// `cuMemAllocAsync`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `dptr` is null or valid for
/// writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
) -> CUresult {
    let call = || call_driver!(id::cuMemAllocAsync, AllocAsyncFn, dptr, size, stream);
    // SAFETY: `dptr` is null or writable, by this function's own contract.
    unsafe { alloc_async(dptr, size, None, stream, false, call) }
}

/// `cuMemAllocAsync_ptsz`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `dptr` is null or valid for
/// writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    stream: CUstream,
) -> CUresult {
    let call = || call_driver!(id::cuMemAllocAsync_ptsz, AllocAsyncFn, dptr, size, stream);
    // SAFETY: `dptr` is null or writable, by this function's own contract.
    unsafe { alloc_async(dptr, size, None, stream, true, call) }
}

/// `cuMemAllocFromPoolAsync`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `dptr` is null or valid for
/// writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let call = || {
        call_driver!(
            id::cuMemAllocFromPoolAsync,
            AllocPoolAsyncFn,
            dptr,
            size,
            pool,
            stream
        )
    };
    // SAFETY: `dptr` is null or writable, by this function's own contract.
    unsafe { alloc_async(dptr, size, Some(pool), stream, false, call) }
}

/// `cuMemAllocFromPoolAsync_ptsz`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `dptr` is null or valid for
/// writing one `CUdeviceptr`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: CUmemoryPool,
    stream: CUstream,
) -> CUresult {
    let call = || {
        call_driver!(
            id::cuMemAllocFromPoolAsync_ptsz,
            AllocPoolAsyncFn,
            dptr,
            size,
            pool,
            stream
        )
    };
    // SAFETY: `dptr` is null or writable, by this function's own contract.
    unsafe { alloc_async(dptr, size, Some(pool), stream, true, call) }
}

fn free_async(dptr: CUdeviceptr, r: CUresult) -> CUresult {
    // Pool memory stays reserved after a free (it is re-read later); a plain allocation
    // freed on a stream gives its charge back.
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.forget(Key::Pointer(dptr));
    }
    r
}

/// `cuMemFreeAsync`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    free_async(
        dptr,
        call_driver!(id::cuMemFreeAsync, FreeAsyncFn, dptr, stream),
    )
}

/// `cuMemFreeAsync_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: CUstream) -> CUresult {
    free_async(
        dptr,
        call_driver!(id::cuMemFreeAsync_ptsz, FreeAsyncFn, dptr, stream),
    )
}

/// `cuMemPoolCreate`: remembers which device the pool lives on.
///
/// # Safety
/// The caller keeps the driver\'s contract for this call: `pool` is null or valid for writing one `CUmemoryPool`; `props` is null
/// or points to a readable, initialised `CUmemPoolProps`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolCreate(
    pool: *mut CUmemoryPool,
    props: *const CUmemPoolProps,
) -> CUresult {
    let r = call_driver!(id::cuMemPoolCreate, PoolCreateFn, pool, props);
    if r == CUDA_SUCCESS
        && !props.is_null()
        && let Access::Slice(s) = access()
    {
        // SAFETY: the caller's valid props; the driver wrote *pool.
        let (location, created) = unsafe { ((*props).location, *pool) };
        if location.type_ == CU_MEM_LOCATION_TYPE_DEVICE {
            lock(&s.pools)
                .device_of
                .insert(created as usize, location.id);
        }
    }
    r
}

/// `cuMemPoolDestroy`: the pool's reserved memory goes back to the device.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemPoolDestroy(pool: CUmemoryPool) -> CUresult {
    let r = call_driver!(id::cuMemPoolDestroy, PoolDestroyFn, pool);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        let mut book = lock(&s.pools);
        book.device_of.remove(&(pool as usize));
        if let Some((device, bytes)) = book.charged.remove(&(pool as usize)) {
            s.unreserve(device, bytes);
        }
    }
    r
}

/// `cuMemPoolTrimTo`: the pool shrinks, and so does its charge.
#[unsafe(no_mangle)]
pub extern "C" fn cuMemPoolTrimTo(pool: CUmemoryPool, keep: usize) -> CUresult {
    let r = call_driver!(id::cuMemPoolTrimTo, TrimFn, pool, keep);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        let mut book = lock(&s.pools);
        if let Some(reserved) = pool_attribute(pool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT) {
            set_tracked(
                &s.ledger,
                s.entry,
                book.charged.get_mut(&(pool as usize)),
                reserved,
                true,
            );
        }
    }
    r
}

// ---------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------
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

// ---------------------------------------------------------------------------------
// CUDA graphs with memory nodes: what an executable graph's allocation nodes need is
// read at instantiation; at launch, the growth of the device's graph memory pool is
// charged first, and the charge is then set to what the pool really reserves.

type InstFlagsFn = unsafe extern "C" fn(*mut CUgraphExec, CUgraph, c_ulonglong) -> CUresult;
type InstParamsFn = unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut c_void) -> CUresult;
type InstV2Fn =
    unsafe extern "C" fn(*mut CUgraphExec, CUgraph, *mut CUgraphNode, *mut i8, usize) -> CUresult;
type LaunchFn = unsafe extern "C" fn(CUgraphExec, CUstream) -> CUresult;
type ExecDestroyFn = unsafe extern "C" fn(CUgraphExec) -> CUresult;
type GraphTrimFn = unsafe extern "C" fn(CUdevice) -> CUresult;
type GetNodesFn = unsafe extern "C" fn(CUgraph, *mut CUgraphNode, *mut usize) -> CUresult;
type NodeTypeFn = unsafe extern "C" fn(CUgraphNode, *mut c_int) -> CUresult;
type AllocParamsFn = unsafe extern "C" fn(CUgraphNode, *mut CudaMemAllocNodeParams) -> CUresult;
type ChildGraphFn = unsafe extern "C" fn(CUgraphNode, *mut CUgraph) -> CUresult;

/// Executable graphs that have allocation nodes; zero means launches need no lookup.
static GRAPHS_WITH_MEMORY: AtomicUsize = AtomicUsize::new(0);

/// Sums a graph's allocation nodes per device, child graphs included.
fn graph_memory_needs(graph: CUgraph, depth: u32, out: &mut Vec<(CUdevice, u64)>) {
    if depth > 8 {
        return;
    }
    let mut count: usize = 0;
    if call_driver!(
        id::cuGraphGetNodes,
        GetNodesFn,
        graph,
        std::ptr::null_mut(),
        &mut count
    ) != CUDA_SUCCESS
        || count == 0
    {
        return;
    }
    let mut nodes: Vec<CUgraphNode> = vec![std::ptr::null_mut(); count];
    if call_driver!(
        id::cuGraphGetNodes,
        GetNodesFn,
        graph,
        nodes.as_mut_ptr(),
        &mut count
    ) != CUDA_SUCCESS
    {
        return;
    }
    for &node in nodes.iter().take(count) {
        let mut kind: c_int = -1;
        if call_driver!(id::cuGraphNodeGetType, NodeTypeFn, node, &mut kind) != CUDA_SUCCESS {
            continue;
        }
        if kind == CU_GRAPH_NODE_TYPE_MEM_ALLOC {
            // SAFETY: a plain C struct; all-zero is a valid bit pattern for it.
            let mut params: CudaMemAllocNodeParams = unsafe { std::mem::zeroed() };
            if call_driver!(
                id::cuGraphMemAllocNodeGetParams,
                AllocParamsFn,
                node,
                &mut params
            ) == CUDA_SUCCESS
            {
                let dev = params.pool_props.location.id;
                let bytes = params.bytesize as u64;
                match out.iter_mut().find(|(d, _)| *d == dev) {
                    Some(e) => e.1 = e.1.saturating_add(bytes),
                    None => out.push((dev, bytes)),
                }
            }
        } else if kind == CU_GRAPH_NODE_TYPE_GRAPH {
            let mut child: CUgraph = std::ptr::null_mut();
            if call_driver!(
                id::cuGraphChildGraphNodeGetGraph,
                ChildGraphFn,
                node,
                &mut child
            ) == CUDA_SUCCESS
            {
                graph_memory_needs(child, depth + 1, out);
            }
        }
    }
}

/// Records the memory nodes of a graph just instantiated into `*exec`.
///
/// # Safety
/// `exec` is null or, when `r` is `CUDA_SUCCESS`, points to the `CUgraphExec` the driver
/// has just written.
unsafe fn after_instantiate(r: CUresult, exec: *mut CUgraphExec, graph: CUgraph) -> CUresult {
    if r != CUDA_SUCCESS || exec.is_null() {
        return r;
    }
    if let Access::Slice(s) = access() {
        let mut needs = Vec::new();
        graph_memory_needs(graph, 0, &mut needs);
        if !needs.is_empty() {
            // SAFETY: written by the driver on success.
            let exec = unsafe { *exec } as usize;
            log_at!(Debug, "graph {exec:#x} has memory nodes: {needs:?}");
            if lock(&s.graphs).needs.insert(exec, needs).is_none() {
                GRAPHS_WITH_MEMORY.fetch_add(1, Relaxed);
            }
        }
    }
    r
}

/// `cuGraphInstantiateWithFlags`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithFlags(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    flags: c_ulonglong,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithFlags,
        InstFlagsFn,
        exec,
        graph,
        flags
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiateWithParams`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`. `params` points to a
/// `CUDA_GRAPH_INSTANTIATE_PARAMS` the driver may read and write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithParams,
        InstParamsFn,
        exec,
        graph,
        params
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiateWithParams_ptsz`.
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`. `params` points to a
/// `CUDA_GRAPH_INSTANTIATE_PARAMS` the driver may read and write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiateWithParams_ptsz(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    params: *mut c_void,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiateWithParams_ptsz,
        InstParamsFn,
        exec,
        graph,
        params
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

/// `cuGraphInstantiate_v2` (the CUDA 11 signature with an error node and log).
///
/// # Safety
/// The caller keeps the driver's contract for this call: `exec` is null or valid for
/// writing one `CUgraphExec`; `error_node` is null or writable; `log` is null or valid
/// for writing `log_size` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuGraphInstantiate_v2(
    exec: *mut CUgraphExec,
    graph: CUgraph,
    error_node: *mut CUgraphNode,
    log: *mut i8,
    log_size: usize,
) -> CUresult {
    let r = call_driver!(
        id::cuGraphInstantiate_v2,
        InstV2Fn,
        exec,
        graph,
        error_node,
        log,
        log_size
    );
    // SAFETY: `exec` is null or writable, by this function's own contract; the driver
    // has written it when the call succeeded.
    unsafe { after_instantiate(r, exec, graph) }
}

fn launch_graph(exec: CUgraphExec, call: impl FnOnce() -> CUresult) -> CUresult {
    if GRAPHS_WITH_MEMORY.load(Relaxed) == 0 {
        return call();
    }
    let s = match access() {
        Access::Slice(s) => s,
        Access::Refuse(code) => return code,
        Access::PassThrough => return call(),
    };
    let mut book = lock(&s.graphs);
    let Some(needs) = book.needs.get(&(exec as usize)).cloned() else {
        drop(book);
        return call();
    };
    let mut charged_growth: Vec<(CUdevice, u64)> = Vec::new();
    for (dev, need) in &needs {
        let device = match s.device_entry(*dev) {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => return e,
        };
        let reserved =
            graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT).unwrap_or(0);
        let used = graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_USED_MEM_CURRENT).unwrap_or(0);
        let tracked = book.charged.entry(*dev).or_insert((device, 0));
        set_tracked(&s.ledger, s.entry, Some(tracked), reserved, true);
        let wanted = used.saturating_add(*need);
        let growth = if wanted > reserved {
            round_up(wanted - reserved, PAGE)
        } else {
            0
        };
        if growth > 0 {
            if let Err(code) =
                s.reserve_holding(device, growth, "CUDA graph memory", Holding::Graphs)
            {
                for (d, g) in charged_growth {
                    if let Some(t) = book.charged.get_mut(&d) {
                        s.unreserve(t.0, g);
                        t.1 -= g;
                    }
                }
                return code;
            }
            tracked.1 += growth;
            charged_growth.push((*dev, growth));
        }
    }
    let r = call();
    for (dev, _) in &needs {
        if let Some(reserved) = graph_mem_attribute(*dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT) {
            set_tracked(
                &s.ledger,
                s.entry,
                book.charged.get_mut(dev),
                reserved,
                true,
            );
        }
    }
    r
}

/// `cuGraphLaunch`: graph memory is charged, and the launch passes the compute gate.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphLaunch(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        crate::launch::gated(stream, false, crate::compute::graph_kind(exec), || {
            call_driver!(id::cuGraphLaunch, LaunchFn, exec, stream)
        })
    })
}

/// `cuGraphLaunch_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphLaunch_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        crate::launch::gated(stream, true, crate::compute::graph_kind(exec), || {
            call_driver!(id::cuGraphLaunch_ptsz, LaunchFn, exec, stream)
        })
    })
}

/// `cuGraphUpload`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphUpload(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        call_driver!(id::cuGraphUpload, LaunchFn, exec, stream)
    })
}

/// `cuGraphUpload_ptsz`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphUpload_ptsz(exec: CUgraphExec, stream: CUstream) -> CUresult {
    launch_graph(exec, || {
        call_driver!(id::cuGraphUpload_ptsz, LaunchFn, exec, stream)
    })
}

/// `cuGraphExecDestroy`.
#[unsafe(no_mangle)]
pub extern "C" fn cuGraphExecDestroy(exec: CUgraphExec) -> CUresult {
    let r = call_driver!(id::cuGraphExecDestroy, ExecDestroyFn, exec);
    if r == CUDA_SUCCESS
        && GRAPHS_WITH_MEMORY.load(Relaxed) > 0
        && let Access::Slice(s) = access()
        && lock(&s.graphs).needs.remove(&(exec as usize)).is_some()
    {
        GRAPHS_WITH_MEMORY.fetch_sub(1, Relaxed);
    }
    r
}

/// `cuDeviceGraphMemTrim`: the graph pool shrinks, and so does its charge.
#[unsafe(no_mangle)]
pub extern "C" fn cuDeviceGraphMemTrim(dev: CUdevice) -> CUresult {
    let r = call_driver!(id::cuDeviceGraphMemTrim, GraphTrimFn, dev);
    if r == CUDA_SUCCESS
        && let Access::Slice(s) = access()
    {
        s.reconcile_graph_memory();
    }
    r
}
