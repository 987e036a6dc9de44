//! Stream-ordered memory pools: the per-device default and current pools, `cuMemPoolCreate`
//! and friends, and `cuMemAllocAsync` / `cuMemAllocFromPoolAsync` / `cuMemFreeAsync` (with
//! their `_ptsz` variants). A pool grows its reservation in `FAKE_CUDA_POOL_CHUNK` steps,
//! charging the growth to the process, and gives memory back at synchronisation points
//! (above its release threshold) or on `cuMemPoolTrimTo`.

use std::ffi::{c_int, c_void};

use crate::driver::{Alloc, AllocKind, Driver, Out, api, handle, key, read_in};
use crate::types::*;
use fake_gpu::size::round_up;

/// Allocation granularity inside a pool.
pub const POOL_ALIGN: u64 = 512;

/// A memory pool.
#[derive(Debug, Clone)]
pub struct Pool {
    pub dev: usize,
    pub is_default: bool,
    pub used: u64,
    pub reserved: u64,
    pub used_high: u64,
    pub reserved_high: u64,
    pub threshold: u64,
    /// Largest reservation (0: unlimited).
    pub max_size: u64,
    pub destroyed: bool,
    /// `CU_MEMPOOL_ATTR_REUSE_*` flags (attributes 1..=3).
    pub reuse: [c_int; 3],
}

impl Pool {
    /// An empty pool on visible device `dev`.
    pub fn new(dev: usize, is_default: bool, max_size: u64) -> Self {
        Self {
            dev,
            is_default,
            used: 0,
            reserved: 0,
            used_high: 0,
            reserved_high: 0,
            threshold: 0,
            max_size,
            destroyed: false,
            reuse: [1; 3],
        }
    }

    /// Bytes by which the reservation must grow to hold `bytes` more: (growth).
    pub fn growth_for(&self, bytes: u64, chunk: u64) -> u64 {
        let need = self.used.saturating_add(bytes);
        if need <= self.reserved {
            0
        } else {
            round_up(need - self.reserved, chunk)
        }
    }

    /// Reservation to keep when trimming down to `keep` bytes.
    pub fn keep_for(&self, keep: u64, chunk: u64) -> u64 {
        round_up(self.used.max(keep), chunk).min(self.reserved)
    }
}

impl Driver {
    /// Allocates `size` bytes from `pool` for context `ctx`.
    pub fn pool_alloc(&mut self, pool: u64, size: u64, ctx: u64) -> Result<u64, CUresult> {
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let chunk = self.settings.pool_chunk;
        let bytes = round_up(size, POOL_ALIGN);
        let p = self.pools.get(&pool).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if p.destroyed {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = p.dev;
        let grow = p.growth_for(bytes, chunk);
        if p.max_size != 0 && p.reserved.saturating_add(grow) > p.max_size {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        self.charge(dev, grow, 0)?;
        if let Some(p) = self.pools.get_mut(&pool) {
            p.reserved += grow;
            p.used += bytes;
            p.reserved_high = p.reserved_high.max(p.reserved);
            p.used_high = p.used_high.max(p.used);
        }
        let base = self.alloc_va(dev, bytes, POOL_ALIGN);
        self.allocs.insert(
            base,
            Alloc {
                size,
                charged: 0,
                dev,
                ctx,
                kind: AllocKind::Pool { pool, bytes },
            },
        );
        Ok(base)
    }

    /// Gives `bytes` back to `pool`'s free space (not to the device).
    pub fn pool_return(&mut self, pool: u64, bytes: u64) {
        let done = match self.pools.get_mut(&pool) {
            Some(p) => {
                p.used = p.used.saturating_sub(bytes);
                p.destroyed && p.used == 0
            }
            None => false,
        };
        if done {
            self.pool_trim(pool, 0);
            self.pools.remove(&pool);
        }
    }

    /// Releases reserved memory of `pool` above max(used, keep), in whole chunks.
    pub fn pool_trim(&mut self, pool: u64, keep: u64) {
        let chunk = self.settings.pool_chunk;
        let Some(p) = self.pools.get_mut(&pool) else {
            return;
        };
        let new_reserved = p.keep_for(keep, chunk);
        let released = p.reserved - new_reserved;
        p.reserved = new_reserved;
        let dev = p.dev;
        self.uncharge(dev, released, 0);
    }

    /// What a synchronisation point does to `pool`.
    pub fn pool_release_above_threshold(&mut self, pool: u64) {
        if let Some(t) = self.pools.get(&pool).map(|p| p.threshold) {
            self.pool_trim(pool, t);
        }
    }

    fn live_pool(&self, pool: Handle) -> Result<u64, CUresult> {
        let k = key(pool);
        match self.pools.get(&k) {
            Some(p) if !p.destroyed => Ok(k),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        }
    }

    fn alloc_async(
        &mut self,
        size: usize,
        pool: Option<Handle>,
        stream: Handle,
    ) -> Result<u64, CUresult> {
        let (sk, ctx, dev) = self.stream(stream)?;
        let pool = match pool {
            Some(p) => self.live_pool(p)?,
            None => self.current_pool[dev],
        };
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if let Some(graph) = self.capturing(sk) {
            let pdev = self.pools.get(&pool).map_or(dev, |p| p.dev);
            return self.capture_alloc(graph, pdev, size as u64);
        }
        self.pool_alloc(pool, size as u64, ctx)
    }

    fn free_async(&mut self, dptr: CUdeviceptr, stream: Handle) -> Result<(), CUresult> {
        let (sk, _, _) = self.stream(stream)?;
        if let Some(graph) = self.capturing(sk) {
            return self.capture_free(graph, dptr);
        }
        self.free_alloc(dptr)
    }
}

fn alloc_async(
    symbol: &str,
    dptr: *mut CUdeviceptr,
    size: usize,
    pool: Option<Handle>,
    stream: Handle,
) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `dptr` is null or writable by the API contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(d.alloc_async(size, pool, stream)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: Handle,
) -> CUresult {
    alloc_async("cuMemAllocAsync", dptr, bytesize, None, stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    stream: Handle,
) -> CUresult {
    alloc_async("cuMemAllocAsync_ptsz", dptr, bytesize, None, stream)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: Handle,
    stream: Handle,
) -> CUresult {
    alloc_async(
        "cuMemAllocFromPoolAsync",
        dptr,
        bytesize,
        Some(pool),
        stream,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocFromPoolAsync_ptsz(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    pool: Handle,
    stream: Handle,
) -> CUresult {
    alloc_async(
        "cuMemAllocFromPoolAsync_ptsz",
        dptr,
        bytesize,
        Some(pool),
        stream,
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    api("cuMemFreeAsync", |d| d.free_async(dptr, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeAsync_ptsz(dptr: CUdeviceptr, stream: Handle) -> CUresult {
    api("cuMemFreeAsync_ptsz", |d| d.free_async(dptr, stream))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolCreate(
    pool: *mut Handle,
    props: *const CUmemPoolProps,
) -> CUresult {
    api("cuMemPoolCreate", |d| {
        // SAFETY: `pool` is null or writable and `props` null or readable (API contract).
        let (out, props) = unsafe { (Out::new(pool)?, read_in(props)?) };
        if props.alloc_type != CU_MEM_ALLOCATION_TYPE_PINNED
            || props.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if props.handle_types & !CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR != 0 {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let dev = d.device(props.location.id)?;
        let k = d.new_handle();
        d.pools
            .insert(k, Pool::new(dev, false, props.max_size as u64));
        out.set(handle(k));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolDestroy(pool: Handle) -> CUresult {
    api("cuMemPoolDestroy", |d| {
        let k = d.live_pool(pool)?;
        let p = &d.pools[&k];
        if p.is_default {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = p.dev;
        if d.current_pool[dev] == k {
            d.current_pool[dev] = d.default_pool[dev];
        }
        if let Some(p) = d.pools.get_mut(&k) {
            p.destroyed = true;
        }
        d.pool_trim(k, 0);
        if d.pools.get(&k).is_some_and(|p| p.used == 0) {
            d.pools.remove(&k);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolTrimTo(pool: Handle, min_bytes_to_keep: usize) -> CUresult {
    api("cuMemPoolTrimTo", |d| {
        let k = d.live_pool(pool)?;
        d.pool_trim(k, min_bytes_to_keep as u64);
        Ok(())
    })
}

/// The place in `reuse` of a reuse attribute (1 to 3).
fn reuse_index(attr: c_int) -> Result<usize, CUresult> {
    usize::try_from(attr - 1).map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolGetAttribute(
    pool: Handle,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    api("cuMemPoolGetAttribute", |d| {
        let k = d.live_pool(pool)?;
        let p = &d.pools[&k];
        let v = match attr {
            1..=3 => {
                // SAFETY: these attributes are `int`; `value` is null or writable.
                let out = unsafe { Out::new(value.cast::<c_int>()) }?;
                out.set(p.reuse[reuse_index(attr)?]);
                return Ok(());
            }
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.threshold,
            CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT => p.reserved,
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH => p.reserved_high,
            CU_MEMPOOL_ATTR_USED_MEM_CURRENT => p.used,
            CU_MEMPOOL_ATTR_USED_MEM_HIGH => p.used_high,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        };
        // SAFETY: these attributes are `cuuint64_t`; `value` is null or writable.
        unsafe { Out::new(value.cast::<u64>()) }?.set(v);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemPoolSetAttribute(
    pool: Handle,
    attr: c_int,
    value: *mut c_void,
) -> CUresult {
    api("cuMemPoolSetAttribute", |d| {
        let k = d.live_pool(pool)?;
        if (CU_MEMPOOL_ATTR_REUSE_FOLLOW_EVENT_DEPENDENCIES
            ..=CU_MEMPOOL_ATTR_REUSE_ALLOW_INTERNAL_DEPENDENCIES)
            .contains(&attr)
        {
            // SAFETY: these attributes are `int`; `value` is null or readable.
            let v = unsafe { read_in(value.cast::<c_int>().cast_const()) }?;
            if let Some(p) = d.pools.get_mut(&k) {
                p.reuse[reuse_index(attr)?] = v;
            }
            return Ok(());
        }
        // SAFETY: the remaining attributes are `cuuint64_t`; `value` is null or readable.
        let v = unsafe { read_in(value.cast::<u64>().cast_const()) }?;
        let Some(p) = d.pools.get_mut(&k) else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        match attr {
            CU_MEMPOOL_ATTR_RELEASE_THRESHOLD => p.threshold = v,
            CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH if v == 0 => p.reserved_high = p.reserved,
            CU_MEMPOOL_ATTR_USED_MEM_HIGH if v == 0 => p.used_high = p.used,
            _ => return Err(CUDA_ERROR_INVALID_VALUE),
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetDefaultMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    api("cuDeviceGetDefaultMemPool", |d| {
        // SAFETY: `pool` is null or writable by the API contract.
        let out = unsafe { Out::new(pool) }?;
        let dev = d.device(dev)?;
        out.set(handle(d.default_pool[dev]));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetMemPool(pool: *mut Handle, dev: CUdevice) -> CUresult {
    api("cuDeviceGetMemPool", |d| {
        // SAFETY: `pool` is null or writable by the API contract.
        let out = unsafe { Out::new(pool) }?;
        let dev = d.device(dev)?;
        out.set(handle(d.current_pool[dev]));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceSetMemPool(dev: CUdevice, pool: Handle) -> CUresult {
    api("cuDeviceSetMemPool", |d| {
        let dev = d.device(dev)?;
        let k = d.live_pool(pool)?;
        if d.pools[&k].dev != dev {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.current_pool[dev] = k;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    const MIB: u64 = 1 << 20;

    #[test]
    fn growth_and_trim() {
        let mut p = Pool::new(0, true, 0);
        assert_eq!(p.growth_for(512, 2 * MIB), 2 * MIB);
        p.reserved = 2 * MIB;
        p.used = 512;
        assert_eq!(p.growth_for(MIB, 2 * MIB), 0);
        assert_eq!(p.growth_for(2 * MIB, 2 * MIB), 2 * MIB);
        p.reserved = 6 * MIB;
        assert_eq!(p.keep_for(0, 2 * MIB), 2 * MIB);
        assert_eq!(p.keep_for(3 * MIB, 2 * MIB), 4 * MIB);
        assert_eq!(p.keep_for(u64::MAX, 2 * MIB), 6 * MIB);
        p.used = 0;
        assert_eq!(p.keep_for(0, 2 * MIB), 0);
    }
}
