//! CUDA arrays and mipmapped arrays: their size model (width x height x depth x element size
//! x channels, summed over mip levels, rounded to the granularity), creation, destruction and
//! memory requirements.

use std::ffi::{c_int, c_uint};

use crate::driver::{Array, Driver, Out, api, handle, key, read_in, size_t};
use crate::types::*;

/// Raw bytes of one level of `width x height x depth` elements (0 extents count as 1).
pub fn level_bytes(
    width: u64,
    height: u64,
    depth: u64,
    format: c_int,
    channels: c_uint,
) -> Result<u64, CUresult> {
    let bpe = array_format_bytes(format).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    if width == 0 || !matches!(channels, 1 | 2 | 4) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    width
        .checked_mul(height.max(1))
        .and_then(|v| v.checked_mul(depth.max(1)))
        .and_then(|v| v.checked_mul(bpe))
        .and_then(|v| v.checked_mul(u64::from(channels)))
        .ok_or(CUDA_ERROR_OUT_OF_MEMORY)
}

/// Raw bytes of `levels` mip levels, halving each extent per level (never below 1).
pub fn mipmap_bytes(desc: &CudaArray3dDescriptor, levels: u32) -> Result<u64, CUresult> {
    if levels == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (mut w, mut h, mut dpt) = (desc.width as u64, desc.height as u64, desc.depth as u64);
    let mut total: u64 = 0;
    for _ in 0..levels {
        let b = level_bytes(w, h, dpt, desc.format, desc.num_channels)?;
        total = total.checked_add(b).ok_or(CUDA_ERROR_OUT_OF_MEMORY)?;
        w = (w / 2).max(1);
        h = if h == 0 { 0 } else { (h / 2).max(1) };
        dpt = if dpt == 0 { 0 } else { (dpt / 2).max(1) };
    }
    Ok(total)
}

impl Driver {
    fn create_array(&mut self, raw: u64, deferred: bool, mipmapped: bool) -> Result<u64, CUresult> {
        let (ctx, dev) = self.current()?;
        let size = self.granular(raw);
        let charged = if deferred { 0 } else { size };
        self.charge(dev, charged, 0)?;
        let k = self.new_handle();
        self.arrays.insert(
            k,
            Array {
                ctx,
                dev,
                size,
                charged,
                mipmapped,
            },
        );
        Ok(k)
    }

    fn destroy_array(&mut self, h: Handle, mipmapped: bool) -> Result<(), CUresult> {
        let k = key(h);
        match self.arrays.get(&k) {
            Some(a) if a.mipmapped == mipmapped => {}
            _ => return Err(CUDA_ERROR_INVALID_HANDLE),
        }
        if let Some(a) = self.arrays.remove(&k) {
            self.uncharge(a.dev, a.charged, 0);
        }
        Ok(())
    }

    fn requirements(
        &self,
        h: Handle,
        dev: CUdevice,
        mipmapped: bool,
    ) -> Result<CudaArrayMemoryRequirements, CUresult> {
        let dev = self.device(dev)?;
        let a = self.arrays.get(&key(h)).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        if a.mipmapped != mipmapped || a.dev != dev {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        Ok(CudaArrayMemoryRequirements {
            size: size_t(a.size)?,
            alignment: size_t(self.settings.granularity)?,
            reserved: [0; 4],
        })
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayCreate_v2(
    array: *mut Handle,
    desc: *const CudaArrayDescriptor,
) -> CUresult {
    api("cuArrayCreate_v2", |d| {
        // SAFETY: `array` is null or writable, `desc` null or readable (API contract).
        let (out, desc) = unsafe { (Out::new(array)?, read_in(desc)?) };
        let raw = level_bytes(
            desc.width as u64,
            desc.height as u64,
            1,
            desc.format,
            desc.num_channels,
        )?;
        out.set(handle(d.create_array(raw, false, false)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArray3DCreate_v2(
    array: *mut Handle,
    desc: *const CudaArray3dDescriptor,
) -> CUresult {
    api("cuArray3DCreate_v2", |d| {
        // SAFETY: `array` is null or writable, `desc` null or readable (API contract).
        let (out, desc) = unsafe { (Out::new(array)?, read_in(desc)?) };
        let raw = level_bytes(
            desc.width as u64,
            desc.height as u64,
            desc.depth as u64,
            desc.format,
            desc.num_channels,
        )?;
        let deferred = desc.flags & CUDA_ARRAY3D_DEFERRED_MAPPING != 0;
        out.set(handle(d.create_array(raw, deferred, false)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayCreate(
    array: *mut Handle,
    desc: *const CudaArray3dDescriptor,
    num_levels: c_uint,
) -> CUresult {
    api("cuMipmappedArrayCreate", |d| {
        // SAFETY: `array` is null or writable, `desc` null or readable (API contract).
        let (out, desc) = unsafe { (Out::new(array)?, read_in(desc)?) };
        let raw = mipmap_bytes(&desc, num_levels)?;
        let deferred = desc.flags & CUDA_ARRAY3D_DEFERRED_MAPPING != 0;
        out.set(handle(d.create_array(raw, deferred, true)?));
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayDestroy(array: Handle) -> CUresult {
    api("cuArrayDestroy", |d| d.destroy_array(array, false))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayDestroy(array: Handle) -> CUresult {
    api("cuMipmappedArrayDestroy", |d| d.destroy_array(array, true))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuArrayGetMemoryRequirements(
    reqs: *mut CudaArrayMemoryRequirements,
    array: Handle,
    device: CUdevice,
) -> CUresult {
    api("cuArrayGetMemoryRequirements", |d| {
        // SAFETY: `reqs` is null or writable by the API contract.
        let out = unsafe { Out::new(reqs) }?;
        out.set(d.requirements(array, device, false)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMipmappedArrayGetMemoryRequirements(
    reqs: *mut CudaArrayMemoryRequirements,
    array: Handle,
    device: CUdevice,
) -> CUresult {
    api("cuMipmappedArrayGetMemoryRequirements", |d| {
        // SAFETY: `reqs` is null or writable by the API contract.
        let out = unsafe { Out::new(reqs) }?;
        out.set(d.requirements(array, device, true)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(level_bytes(1024, 0, 0, 0x20, 4), Ok(16384));
        assert_eq!(level_bytes(1024, 768, 0, 0x01, 1), Ok(1024 * 768));
        assert_eq!(level_bytes(16, 16, 16, 0x10, 2), Ok(16 * 16 * 16 * 4));
        assert_eq!(
            level_bytes(16, 16, 16, 0x99, 2),
            Err(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(
            level_bytes(16, 16, 16, 0x01, 3),
            Err(CUDA_ERROR_INVALID_VALUE)
        );
        assert_eq!(level_bytes(0, 1, 1, 0x01, 1), Err(CUDA_ERROR_INVALID_VALUE));
        let desc = CudaArray3dDescriptor {
            width: 8,
            height: 4,
            depth: 0,
            format: 0x01,
            num_channels: 1,
            flags: 0,
        };
        // 8x4 + 4x2 + 2x1 + 1x1
        assert_eq!(mipmap_bytes(&desc, 4), Ok(32 + 8 + 2 + 1));
        assert_eq!(mipmap_bytes(&desc, 0), Err(CUDA_ERROR_INVALID_VALUE));
    }
}
