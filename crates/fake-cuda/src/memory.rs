//! Ordinary device allocations (`cuMemAlloc`, `cuMemAllocPitch`, `cuMemAllocManaged`),
//! `cuMemFree`, `cuMemGetAddressRange`, `cuMemGetInfo`, and page-locked host memory.
//! Physical consumption is rounded up to `FAKE_CUDA_GRANULARITY`.

use std::ffi::{c_uint, c_void};

use crate::driver::{Alloc, AllocKind, Driver, Out, api, size_t};
use crate::types::*;
use fake_gpu::size::round_up;

impl Driver {
    /// Allocates `size` bytes charged as `physical` bytes in the current context.
    pub fn alloc_direct(&mut self, size: u64, physical: u64) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let charged = self.granular(physical);
        self.charge(dev, charged, 0)?;
        let gran = self.settings.granularity;
        let base = self.alloc_va(dev, self.granular(size), gran);
        self.allocs.insert(
            base,
            Alloc {
                size,
                charged,
                dev,
                ctx,
                kind: AllocKind::Direct,
            },
        );
        Ok(base)
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut CUdeviceptr, bytesize: usize) -> CUresult {
    api("cuMemAlloc_v2", |d| {
        // SAFETY: `dptr` is null or writable by the API contract.
        let out = unsafe { Out::new(dptr) }?;
        out.set(d.alloc_direct(bytesize as u64, bytesize as u64)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocManaged(
    dptr: *mut CUdeviceptr,
    bytesize: usize,
    flags: c_uint,
) -> CUresult {
    api("cuMemAllocManaged", |d| {
        // SAFETY: `dptr` is null or writable by the API contract.
        let out = unsafe { Out::new(dptr) }?;
        if flags != CU_MEM_ATTACH_GLOBAL && flags != CU_MEM_ATTACH_HOST {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // Like the real driver, managed memory starts out resident on the host: it takes
        // no device memory, and NVML's per-process usage does not show it.
        out.set(d.alloc_direct(bytesize as u64, 0)?);
        Ok(())
    })
}

/// The pitch `cuMemAllocPitch` picks for a row of `width` bytes.
pub fn pitch_for(width: u64) -> u64 {
    round_up(width, 512)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocPitch_v2(
    dptr: *mut CUdeviceptr,
    pitch: *mut usize,
    width_bytes: usize,
    height: usize,
    element_size_bytes: c_uint,
) -> CUresult {
    api("cuMemAllocPitch_v2", |d| {
        // SAFETY: both are null or writable by the API contract.
        let (out, pitch_out) = unsafe { (Out::new(dptr)?, Out::new(pitch)?) };
        if !matches!(element_size_bytes, 4 | 8 | 16) || width_bytes == 0 || height == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let p = pitch_for(width_bytes as u64);
        let bytes = p
            .checked_mul(height as u64)
            .ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        out.set(d.alloc_direct(bytes, bytes)?);
        pitch_out.set(size_t(p)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFree_v2(dptr: CUdeviceptr) -> CUresult {
    api("cuMemFree_v2", |d| {
        d.current()?;
        d.free_alloc(dptr)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAddressRange_v2(
    pbase: *mut CUdeviceptr,
    psize: *mut usize,
    dptr: CUdeviceptr,
) -> CUresult {
    api("cuMemGetAddressRange_v2", |d| {
        d.current()?;
        // SAFETY: both are null (not wanted) or writable by the API contract.
        let (b, s) = unsafe { (Out::optional(pbase), Out::optional(psize)) };
        let (base, size) = match d.alloc_containing(dptr) {
            Some((base, a)) => (base, a.size),
            None => d.mapping_containing(dptr).ok_or(CUDA_ERROR_NOT_FOUND)?,
        };
        if let Some(b) = b {
            b.set(base);
        }
        if let Some(s) = s {
            s.set(size_t(size)?);
        }
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CUresult {
    api("cuMemGetInfo_v2", |d| {
        // SAFETY: both are null or writable by the API contract.
        let (f, t) = unsafe { (Out::new(free)?, Out::new(total)?) };
        let (_, dev) = d.current()?;
        f.set(size_t(d.free(dev))?);
        t.set(size_t(d.total(dev))?);
        Ok(())
    })
}

fn host_alloc(symbol: &str, pp: *mut *mut c_void, bytesize: usize) -> CUresult {
    api(symbol, |d| {
        // SAFETY: `pp` is null or writable by the API contract.
        let out = unsafe { Out::new(pp) }?;
        d.current()?;
        if bytesize == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: malloc has no preconditions; a null result is handled.
        let p = unsafe { libc::malloc(bytesize) };
        if p.is_null() {
            return Err(CUDA_ERROR_OUT_OF_MEMORY);
        }
        d.host_allocs.insert(p.addr());
        out.set(p);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost_v2(pp: *mut *mut c_void, bytesize: usize) -> CUresult {
    host_alloc("cuMemAllocHost_v2", pp, bytesize)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAllocHost(pp: *mut *mut c_void, bytesize: c_uint) -> CUresult {
    host_alloc("cuMemAllocHost", pp, bytesize as usize)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemHostAlloc(
    pp: *mut *mut c_void,
    bytesize: usize,
    _flags: c_uint,
) -> CUresult {
    host_alloc("cuMemHostAlloc", pp, bytesize)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemFreeHost(p: *mut c_void) -> CUresult {
    api("cuMemFreeHost", |d| {
        d.current()?;
        if !d.host_allocs.remove(&p.addr()) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        // SAFETY: `p` came from our malloc and has just been removed from the live set.
        unsafe { libc::free(p) };
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn pitch() {
        assert_eq!(super::pitch_for(1), 512);
        assert_eq!(super::pitch_for(512), 512);
        assert_eq!(super::pitch_for(1000), 1024);
    }
}
