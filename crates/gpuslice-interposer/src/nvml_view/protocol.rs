//! The list protocols of NVML, both ways: reading a whole real list (`infoCount`: grow
//! the buffer until it fits; sessions: a count of 0 asks for the count), and writing the
//! view's list into the caller's buffer the same way; the process record layouts.

use std::ffi::c_uint;

use crate::ffi::*;
use crate::real::call_nvml;

pub(super) type ListFn<T> = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut T) -> NvmlReturn;

/// A process-list record layout.
pub(super) trait Record: Copy + Default {
    fn pid(&self) -> u32;
    fn mem(&self) -> u64;
    fn make(pid: u32, mem: u64) -> Self;
}

impl Record for NvmlProcessInfoV1 {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn mem(&self) -> u64 {
        self.used_gpu_memory
    }
    fn make(pid: u32, mem: u64) -> Self {
        Self {
            pid,
            used_gpu_memory: mem,
        }
    }
}

impl Record for NvmlProcessInfo {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn mem(&self) -> u64 {
        self.used_gpu_memory
    }
    fn make(pid: u32, mem: u64) -> Self {
        Self {
            pid,
            used_gpu_memory: mem,
            gpu_instance_id: NVML_VALUE_NOT_AVAILABLE,
            compute_instance_id: NVML_VALUE_NOT_AVAILABLE,
        }
    }
}

impl Record for NvmlProcessDetail {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn mem(&self) -> u64 {
        self.used_gpu_memory
    }
    fn make(pid: u32, mem: u64) -> Self {
        Self {
            pid,
            used_gpu_memory: mem,
            gpu_instance_id: NVML_VALUE_NOT_AVAILABLE,
            compute_instance_id: NVML_VALUE_NOT_AVAILABLE,
            used_gpu_cc_protected_memory: 0,
        }
    }
}

/// Reads a whole real list with the `infoCount` protocol, growing the buffer as needed.
pub(super) fn read_list<T: Default + Clone>(
    mut call: impl FnMut(*mut c_uint, *mut T) -> NvmlReturn,
) -> Result<Vec<T>, NvmlReturn> {
    let mut buf = vec![T::default(); 32];
    for _ in 0..6 {
        // Saturating only ever tells NVML less room than there is.
        let mut count = c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX);
        let r = call(&mut count, buf.as_mut_ptr());
        match r {
            NVML_SUCCESS => {
                buf.truncate((count as usize).min(buf.len()));
                return Ok(buf);
            }
            NVML_ERROR_INSUFFICIENT_SIZE => {
                buf = vec![T::default(); (count as usize).max(buf.len()) * 2];
            }
            NVML_ERROR_NOT_FOUND => return Ok(Vec::new()),
            other => return Err(other),
        }
    }
    Err(NVML_ERROR_INSUFFICIENT_SIZE)
}

/// The real process list of table entry `id` as (pid, memory).
pub(super) fn real_list<T: Record>(
    real_id: usize,
    device: NvmlDevice,
) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    let list = read_list::<T>(|count, out| call_nvml!(real_id, ListFn<T>, device, count, out))?;
    Ok(list.iter().map(|r| (r.pid(), r.mem())).collect())
}

/// Writes a list by the `infoCount` protocol.
///
/// # Safety
/// `count` null or valid for reads and writes; `out` null or valid for `*count` elements.
pub(super) unsafe fn write_list<T, S>(
    items: &[S],
    count: *mut c_uint,
    out: *mut T,
    make: impl Fn(&S) -> T,
) -> NvmlReturn {
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null and valid by the caller's contract.
    let room = unsafe { count.read_unaligned() } as usize;
    // SAFETY: `count` is non-null (checked above) and writable by the caller's contract
    // for this NVML call; written without assuming alignment.
    unsafe { count.write_unaligned(c_uint::try_from(items.len()).unwrap_or(c_uint::MAX)) };
    if items.is_empty() {
        return NVML_SUCCESS;
    }
    if out.is_null() || room < items.len() {
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (k, item) in items.iter().enumerate() {
        // SAFETY: k < items.len() <= room, the caller's array length.
        unsafe { out.add(k).write_unaligned(make(item)) };
    }
    NVML_SUCCESS
}

/// Reads a whole real session list (a count of 0 asks for the count).
pub(super) fn real_sessions<T: Default + Clone>(
    real_id: usize,
    device: NvmlDevice,
) -> Result<Vec<T>, NvmlReturn> {
    let mut n: c_uint = 0;
    let r = call_nvml!(real_id, ListFn<T>, device, &mut n, std::ptr::null_mut());
    if r != NVML_SUCCESS {
        return Err(r);
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    read_list::<T>(|count, out| call_nvml!(real_id, ListFn<T>, device, count, out))
}

/// Writes a session list: a count of 0 on input asks for the count.
///
/// # Safety
/// As [`write_list`].
pub(super) unsafe fn write_sessions<T, S>(
    items: &[S],
    count: *mut c_uint,
    out: *mut T,
    make: impl Fn(&S) -> T,
) -> NvmlReturn {
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null, by the caller's contract.
    if unsafe { count.read_unaligned() } == 0 {
        // SAFETY: `count` is non-null (checked above) and writable by the caller's
        // contract for this NVML call; written without assuming alignment.
        unsafe { count.write_unaligned(c_uint::try_from(items.len()).unwrap_or(c_uint::MAX)) };
        return NVML_SUCCESS;
    }
    // SAFETY: by the caller's contract.
    unsafe { write_list(items, count, out, make) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_follow_the_info_count_protocol() {
        let items = [(1u32, 10u64), (2, 20)];
        let mut out = [NvmlProcessInfoV1::default(); 2];
        let mut count: c_uint = 1;
        // SAFETY: valid pointers of the stated sizes.
        let r = unsafe {
            write_list(&items, &mut count, out.as_mut_ptr(), |&(p, m)| {
                NvmlProcessInfoV1::make(p, m)
            })
        };
        assert_eq!((r, count), (NVML_ERROR_INSUFFICIENT_SIZE, 2));
        // SAFETY: `count` is a live local and `out` holds two records, as many as
        // `count` says.
        let r = unsafe {
            write_list(&items, &mut count, out.as_mut_ptr(), |&(p, m)| {
                NvmlProcessInfoV1::make(p, m)
            })
        };
        assert_eq!(
            (r, count, out[1].pid, out[1].used_gpu_memory),
            (NVML_SUCCESS, 2, 2, 20)
        );
        let mut zero: c_uint = 0;
        // SAFETY: `zero` is a live local; with a count of 0 nothing is written to `out`.
        let r = unsafe {
            write_sessions(&items, &mut zero, out.as_mut_ptr(), |&(p, m)| {
                NvmlProcessInfoV1::make(p, m)
            })
        };
        assert_eq!((r, zero), (NVML_SUCCESS, 2));
        let empty: [(u32, u64); 0] = [];
        let mut count: c_uint = 0;
        // SAFETY: `count` is a live local; with no items the null array is never
        // written.
        let r = unsafe {
            write_list(
                &empty,
                &mut count,
                std::ptr::null_mut::<NvmlProcessInfoV1>(),
                |&(p, m)| NvmlProcessInfoV1::make(p, m),
            )
        };
        assert_eq!((r, count), (NVML_SUCCESS, 0));
        // SAFETY: a null counter is refused before use.
        let r = unsafe {
            write_list(&items, std::ptr::null_mut(), out.as_mut_ptr(), |&(p, m)| {
                NvmlProcessInfoV1::make(p, m)
            })
        };
        assert_eq!(r, NVML_ERROR_INVALID_ARGUMENT);
    }
}
