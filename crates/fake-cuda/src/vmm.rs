//! Virtual memory management: physical allocations (`cuMemCreate` / `cuMemRelease`), address
//! reservations, mappings, access, and POSIX-fd shareable handles. Physical memory is charged
//! to the creating process and freed once it is released and no longer mapped; an imported
//! handle refers to the exporter's memory and is not charged again.

use std::ffi::{c_int, c_void};

use crate::driver::{Driver, Out, api, ordinal, read_in, size_t};
use crate::types::*;
use fake_gpu::process::current_pid;

/// The fields of a `CUmemAllocationProp` the fake keeps.
#[derive(Debug, Clone, Copy)]
pub struct PropFields {
    pub type_: c_int,
    pub requested_handle_types: c_int,
    pub location: CUmemLocation,
    pub alloc_flags: [u8; 8],
}

impl PropFields {
    fn to_c(self) -> CUmemAllocationProp {
        CUmemAllocationProp {
            type_: self.type_,
            requested_handle_types: self.requested_handle_types,
            location: self.location,
            win32_handle_meta_data: std::ptr::null_mut(),
            alloc_flags: self.alloc_flags,
        }
    }
}

/// A physical allocation behind a `CUmemGenericAllocationHandle`.
#[derive(Debug, Clone)]
pub struct PhysAlloc {
    pub dev: usize,
    pub size: u64,
    pub prop: PropFields,
    /// Outstanding handle references (create/import/retain minus release).
    pub refs: u32,
    /// Live mappings.
    pub maps: u32,
    /// Whether this process was charged for it (false for imports).
    pub charged: bool,
    /// Global id in the shared state once exported (0: never exported).
    pub share_id: u64,
}

/// A mapping of (part of) a physical allocation.
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    pub size: u64,
    pub handle: u64,
}

/// What an exported fd carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareInfo {
    pub id: u64,
    pub pid: u32,
    pub dev: usize,
    pub size: u64,
}

/// Text written into an exported fd.
pub fn encode_share(s: &ShareInfo) -> String {
    format!(
        "fake-cuda-vmm id={} pid={} dev={} size={}\n",
        s.id, s.pid, s.dev, s.size
    )
}

/// Parses [`encode_share`]'s text.
pub fn decode_share(text: &str) -> Option<ShareInfo> {
    let rest = text.trim().strip_prefix("fake-cuda-vmm ")?;
    let mut info = ShareInfo {
        id: 0,
        pid: 0,
        dev: 0,
        size: 0,
    };
    for kv in rest.split_whitespace() {
        let (k, v) = kv.split_once('=')?;
        match k {
            "id" => info.id = v.parse().ok()?,
            "pid" => info.pid = v.parse().ok()?,
            "dev" => info.dev = v.parse().ok()?,
            "size" => info.size = v.parse().ok()?,
            _ => {}
        }
    }
    (info.id != 0).then_some(info)
}

impl Driver {
    /// The VMM mapping containing `ptr`: (va, size).
    pub fn mapping_containing(&self, ptr: u64) -> Option<(u64, u64)> {
        let (&va, m) = self.mappings.range(..=ptr).next_back()?;
        (ptr < va + m.size).then_some((va, m.size))
    }

    /// Frees a physical allocation once it has no handle references and no mappings.
    fn phys_maybe_free(&mut self, h: u64) {
        let Some(p) = self.phys.get(&h) else {
            return;
        };
        if p.refs > 0 || p.maps > 0 {
            return;
        }
        let p = p.clone();
        self.phys.remove(&h);
        if p.charged {
            self.uncharge(p.dev, p.size, 0);
            if p.share_id != 0 {
                self.state.lock().remove_share(p.share_id);
            }
        }
    }

    fn check_prop(&self, prop: &CUmemAllocationProp) -> Result<usize, CUresult> {
        if prop.type_ != CU_MEM_ALLOCATION_TYPE_PINNED
            || prop.location.type_ != CU_MEM_LOCATION_TYPE_DEVICE
        {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.device(prop.location.id)
    }

    fn export(&mut self, h: u64, handle_type: c_int) -> Result<c_int, CUresult> {
        if handle_type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let p = self.phys.get(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if p.prop.requested_handle_types & CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (dev, size, charged, share_id) = (p.dev, p.size, p.charged, p.share_id);
        let phys_dev = self.phys_index(dev);
        let info = if !charged {
            // Re-exporting an import: hand out the original owner's record.
            let rec = self
                .state
                .lock()
                .share(share_id)
                .ok_or(CUDA_ERROR_INVALID_VALUE)?;
            ShareInfo {
                id: rec.id,
                pid: rec.owner_pid,
                dev: rec.dev as usize,
                size: rec.size,
            }
        } else {
            let id = if share_id != 0 {
                share_id
            } else {
                let id = self
                    .state
                    .lock()
                    .add_share(current_pid(), phys_dev, size)
                    .map_err(|_| CUDA_ERROR_OUT_OF_MEMORY)?;
                if let Some(p) = self.phys.get_mut(&h) {
                    p.share_id = id;
                }
                id
            };
            ShareInfo {
                id,
                pid: current_pid(),
                dev: phys_dev,
                size,
            }
        };
        let text = encode_share(&info);
        // SAFETY: the name is a valid C string; flags 0 keeps the fd inheritable.
        let fd = unsafe { libc::memfd_create(c"fake-cuda-vmm".as_ptr(), 0) };
        if fd < 0 {
            return Err(CUDA_ERROR_OPERATING_SYSTEM);
        }
        // SAFETY: `fd` is ours and `text` is valid for `text.len()` bytes.
        let n = unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
        if n != text.len() as isize {
            // SAFETY: closing the fd we just created.
            unsafe { libc::close(fd) };
            return Err(CUDA_ERROR_OPERATING_SYSTEM);
        }
        Ok(fd)
    }

    fn import(&mut self, fd: c_int, handle_type: c_int) -> Result<u64, CUresult> {
        if handle_type != CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR {
            return Err(CUDA_ERROR_NOT_SUPPORTED);
        }
        let mut buf = [0u8; 256];
        // SAFETY: `buf` is valid for its length; a bad fd just fails.
        let n = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        let n = usize::try_from(n).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let text = std::str::from_utf8(&buf[..n]).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        let info = decode_share(text).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if self.state.lock().share(info.id).is_none() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let dev = self
            .visible
            .iter()
            .position(|&p| p == info.dev)
            .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
        let h = self.new_handle();
        self.phys.insert(
            h,
            PhysAlloc {
                dev,
                size: info.size,
                prop: PropFields {
                    type_: CU_MEM_ALLOCATION_TYPE_PINNED,
                    requested_handle_types: CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR,
                    location: CUmemLocation {
                        type_: CU_MEM_LOCATION_TYPE_DEVICE,
                        id: ordinal(dev)?,
                    },
                    alloc_flags: [0; 8],
                },
                refs: 1,
                maps: 0,
                charged: false,
                share_id: info.id,
            },
        );
        Ok(h)
    }

    fn map(&mut self, ptr: u64, size: u64, offset: u64, h: u64) -> Result<(), CUresult> {
        let gran = self.settings.granularity;
        let p = self.phys.get(&h).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if size == 0 || !size.is_multiple_of(gran) || !offset.is_multiple_of(gran) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if offset.checked_add(size).is_none_or(|end| end > p.size) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let (&rbase, &rsize) = self
            .reservations
            .range(..=ptr)
            .next_back()
            .ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if end > rbase + rsize {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let overlaps = self
            .mappings
            .range(..end)
            .next_back()
            .is_some_and(|(&va, m)| va + m.size > ptr);
        if overlaps {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        self.mappings.insert(ptr, Mapping { size, handle: h });
        if let Some(p) = self.phys.get_mut(&h) {
            p.maps += 1;
        }
        Ok(())
    }

    fn unmap(&mut self, ptr: u64, size: u64) -> Result<(), CUresult> {
        let end = ptr.checked_add(size).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        if self.mapping_containing(ptr).is_some_and(|(va, _)| va < ptr) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let inside: Vec<(u64, Mapping)> = self
            .mappings
            .range(ptr..end)
            .map(|(&va, m)| (va, *m))
            .collect();
        if inside.is_empty() || inside.iter().any(|(va, m)| va + m.size > end) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        for (va, m) in inside {
            self.mappings.remove(&va);
            if let Some(p) = self.phys.get_mut(&m.handle) {
                p.maps = p.maps.saturating_sub(1);
            }
            self.phys_maybe_free(m.handle);
        }
        Ok(())
    }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationGranularity(
    granularity: *mut usize,
    prop: *const CUmemAllocationProp,
    _option: c_int,
) -> CUresult {
    api("cuMemGetAllocationGranularity", |d| {
        // SAFETY: `granularity` is null or writable, `prop` null or readable (API contract).
        let (out, prop) = unsafe { (Out::new(granularity)?, read_in(prop)?) };
        d.check_prop(&prop)?;
        out.set(size_t(d.settings.granularity)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemCreate(
    handle: *mut CUmemGenericAllocationHandle,
    size: usize,
    prop: *const CUmemAllocationProp,
    _flags: u64,
) -> CUresult {
    api("cuMemCreate", |d| {
        // SAFETY: `handle` is null or writable, `prop` null or readable (API contract).
        let (out, prop) = unsafe { (Out::new(handle)?, read_in(prop)?) };
        let dev = d.check_prop(&prop)?;
        let size = size as u64;
        if size == 0 || !size.is_multiple_of(d.settings.granularity) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.charge(dev, size, 0)?;
        let h = d.new_handle();
        d.phys.insert(
            h,
            PhysAlloc {
                dev,
                size,
                prop: PropFields {
                    type_: prop.type_,
                    requested_handle_types: prop.requested_handle_types,
                    location: prop.location,
                    alloc_flags: prop.alloc_flags,
                },
                refs: 1,
                maps: 0,
                charged: true,
                share_id: 0,
            },
        );
        out.set(h);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRelease(handle: CUmemGenericAllocationHandle) -> CUresult {
    api("cuMemRelease", |d| {
        let p = d.phys.get_mut(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        if p.refs == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        p.refs -= 1;
        d.phys_maybe_free(handle);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressReserve(
    ptr: *mut CUdeviceptr,
    size: usize,
    alignment: usize,
    _addr: CUdeviceptr,
    _flags: u64,
) -> CUresult {
    api("cuMemAddressReserve", |d| {
        // SAFETY: `ptr` is null or writable by the API contract.
        let out = unsafe { Out::new(ptr) }?;
        let size = size as u64;
        if size == 0 || !size.is_multiple_of(d.settings.granularity) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let base = d.alloc_vmm_va(size, alignment as u64);
        d.reservations.insert(base, size);
        out.set(base);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemAddressFree(ptr: CUdeviceptr, size: usize) -> CUresult {
    api("cuMemAddressFree", |d| match d.reservations.get(&ptr) {
        Some(&s) if s == size as u64 => {
            d.reservations.remove(&ptr);
            Ok(())
        }
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemMap(
    ptr: CUdeviceptr,
    size: usize,
    offset: usize,
    handle: CUmemGenericAllocationHandle,
    flags: u64,
) -> CUresult {
    api("cuMemMap", |d| {
        if flags != 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.map(ptr, size as u64, offset as u64, handle)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemUnmap(ptr: CUdeviceptr, size: usize) -> CUresult {
    api("cuMemUnmap", |d| d.unmap(ptr, size as u64))
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemSetAccess(
    ptr: CUdeviceptr,
    size: usize,
    desc: *const c_void,
    count: usize,
) -> CUresult {
    api("cuMemSetAccess", |d| {
        if desc.is_null() || count == 0 || size == 0 {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        d.mapping_containing(ptr)
            .map(|_| ())
            .ok_or(CUDA_ERROR_INVALID_VALUE)
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemGetAllocationPropertiesFromHandle(
    prop: *mut CUmemAllocationProp,
    handle: CUmemGenericAllocationHandle,
) -> CUresult {
    api("cuMemGetAllocationPropertiesFromHandle", |d| {
        // SAFETY: `prop` is null or writable by the API contract.
        let out = unsafe { Out::new(prop) }?;
        let p = d.phys.get(&handle).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        out.set(p.prop.to_c());
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemRetainAllocationHandle(
    handle: *mut CUmemGenericAllocationHandle,
    addr: *mut c_void,
) -> CUresult {
    api("cuMemRetainAllocationHandle", |d| {
        // SAFETY: `handle` is null or writable by the API contract.
        let out = unsafe { Out::new(handle) }?;
        let a = addr.addr() as u64;
        let (va, _) = d.mapping_containing(a).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        let h = d.mappings[&va].handle;
        if let Some(p) = d.phys.get_mut(&h) {
            p.refs += 1;
        }
        out.set(h);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemExportToShareableHandle(
    shareable_handle: *mut c_void,
    handle: CUmemGenericAllocationHandle,
    handle_type: c_int,
    _flags: u64,
) -> CUresult {
    api("cuMemExportToShareableHandle", |d| {
        // SAFETY: for POSIX fds `shareable_handle` points to an int (API contract).
        let out = unsafe { Out::new(shareable_handle.cast::<c_int>()) }?;
        out.set(d.export(handle, handle_type)?);
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuMemImportFromShareableHandle(
    handle: *mut CUmemGenericAllocationHandle,
    os_handle: *mut c_void,
    handle_type: c_int,
) -> CUresult {
    api("cuMemImportFromShareableHandle", |d| {
        // SAFETY: `handle` is null or writable by the API contract.
        let out = unsafe { Out::new(handle) }?;
        let fd = c_int::try_from(os_handle.addr()).map_err(|_| CUDA_ERROR_INVALID_VALUE)?;
        out.set(d.import(fd, handle_type)?);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_text_round_trips() {
        let s = ShareInfo {
            id: 7,
            pid: 1234,
            dev: 1,
            size: 4 << 20,
        };
        assert_eq!(decode_share(&encode_share(&s)), Some(s));
        assert_eq!(decode_share("nonsense"), None);
        assert_eq!(decode_share("fake-cuda-vmm id=0"), None);
    }
}
