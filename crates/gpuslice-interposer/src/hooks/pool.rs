//! Stream-ordered allocation (`cuMemAllocAsync`, from pools, and their free) and the
//! pools themselves: a pool's charge is the memory it reserves from the device.

// The hooks carry the driver's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_int;

use super::common::{PAGE, round_up};
use crate::books::{Key, set_tracked};
use crate::ffi::*;
use crate::lock::lock;
use crate::process::{Access, access};
use crate::real::{call_driver, pool_attribute};
use crate::slice::Holding;
use crate::table::id;

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
        let keep = usize::try_from(used).unwrap_or(usize::MAX);
        call_driver!(id::cuMemPoolTrimTo, TrimFn, pool, keep);
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
