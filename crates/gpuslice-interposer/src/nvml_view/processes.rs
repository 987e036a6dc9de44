//! The process lists NVML shows inside a slice (compute, graphics and MPS processes in
//! every version, and the detail list): only the container's own processes, under the
//! PIDs the container sees.

// The hooks carry NVML's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_uint;

use crate::ffi::*;
use crate::real::call_nvml;
use crate::slice::Slice;
use crate::table::id;
use gpuslice_agent_protocol::{GpuView, ProcessKind};

use super::protocol::{ListFn, Record, read_list, real_list, write_list};
use super::source::{ViewSource, filter_driver_list, versioned, view_hook};

type DetailFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessDetailList) -> NvmlReturn;

/// The agent's list of processes of `kind` on a GPU as (pid, memory).
fn agent_processes(gpu: &GpuView, kind: ProcessKind) -> Vec<(u32, u64)> {
    gpu.processes
        .iter()
        .filter(|p| p.kind == kind)
        .map(|p| (p.pid, p.used_memory.unwrap_or(NVML_VALUE_NOT_AVAILABLE_U64)))
        .collect()
}

/// This container's processes of `kind` on `device`: from the agent, or from the driver's
/// own list (read through `real_id` with layout `T`), cut down to the slice.
fn own_processes<T: Record>(
    slice: &'static Slice,
    device: NvmlDevice,
    real_id: usize,
    kind: ProcessKind,
) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    match ViewSource::of(slice, device)? {
        ViewSource::Agent(gpu) => Ok(agent_processes(&gpu, kind)),
        ViewSource::Driver { slice, uuid } => {
            let list = real_list::<T>(real_id, device)?;
            Ok(filter_driver_list(slice, &uuid, &list))
        }
    }
}

/// The PIDs of this container's compute processes per the driver's own list (fallback
/// only): other per-process data of the driver is accepted only for these.
pub(super) fn driver_own_pids(slice: &Slice, device: NvmlDevice, uuid: &str) -> Vec<u32> {
    let list = real_list::<NvmlProcessInfo>(id::nvmlView_ComputeRunningProcesses_v3, device)
        .or_else(|_| real_list::<NvmlProcessInfo>(id::nvmlView_ComputeRunningProcesses_v2, device))
        .unwrap_or_default();
    filter_driver_list(slice, uuid, &list)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// A process-list hook.
///
/// # Safety
/// NVML's contract for the list function of entry `real_id`.
unsafe fn list_hook<T: Record>(
    real_id: usize,
    kind: ProcessKind,
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut T,
) -> NvmlReturn {
    view_hook(
        || call_nvml!(real_id, ListFn<T>, device, count, infos),
        |slice| {
            let list = own_processes::<T>(slice, device, real_id, kind)?;
            // SAFETY: the caller's arguments, by NVML's contract.
            Ok(unsafe { write_list(&list, count, infos, |&(p, m)| T::make(p, m)) })
        },
    )
}

macro_rules! process_list_hooks {
    ($( $name:ident, $real:ident, $ty:ty, $kind:ident; )*) => {$(
        /// Hook of the NVML function of this name: only this container's processes.
        ///
        /// # Safety
        /// NVML's contract.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: NvmlDevice,
            count: *mut c_uint,
            infos: *mut $ty,
        ) -> NvmlReturn {
            // SAFETY: forwarded NVML contract.
            unsafe { list_hook::<$ty>(id::$real, ProcessKind::$kind, device, count, infos) }
        }
    )*};
}

process_list_hooks! {
    nvmlDeviceGetComputeRunningProcesses, nvmlView_ComputeRunningProcesses, NvmlProcessInfoV1, Compute;
    nvmlDeviceGetComputeRunningProcesses_v2, nvmlView_ComputeRunningProcesses_v2, NvmlProcessInfo, Compute;
    nvmlDeviceGetComputeRunningProcesses_v3, nvmlView_ComputeRunningProcesses_v3, NvmlProcessInfo, Compute;
    nvmlDeviceGetGraphicsRunningProcesses, nvmlView_GraphicsRunningProcesses, NvmlProcessInfoV1, Graphics;
    nvmlDeviceGetGraphicsRunningProcesses_v2, nvmlView_GraphicsRunningProcesses_v2, NvmlProcessInfo, Graphics;
    nvmlDeviceGetGraphicsRunningProcesses_v3, nvmlView_GraphicsRunningProcesses_v3, NvmlProcessInfo, Graphics;
    nvmlDeviceGetMPSComputeRunningProcesses, nvmlView_MPSComputeRunningProcesses, NvmlProcessInfoV1, Mps;
    nvmlDeviceGetMPSComputeRunningProcesses_v2, nvmlView_MPSComputeRunningProcesses_v2, NvmlProcessInfo, Mps;
    nvmlDeviceGetMPSComputeRunningProcesses_v3, nvmlView_MPSComputeRunningProcesses_v3, NvmlProcessInfo, Mps;
}

/// Hook of `nvmlDeviceGetRunningProcessDetailList`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRunningProcessDetailList(
    device: NvmlDevice,
    plist: *mut NvmlProcessDetailList,
) -> NvmlReturn {
    view_hook(
        || {
            call_nvml!(
                id::nvmlView_GetRunningProcessDetailList,
                DetailFn,
                device,
                plist
            )
        },
        |slice| {
            // SAFETY: null or the caller's struct, by NVML's contract.
            let head = unsafe { versioned(plist, NVML_PROCESS_DETAIL_LIST_V1, |h| h.version) }?;
            let kind = match head.mode {
                NVML_PROCESS_MODE_COMPUTE => ProcessKind::Compute,
                NVML_PROCESS_MODE_GRAPHICS => ProcessKind::Graphics,
                NVML_PROCESS_MODE_MPS => ProcessKind::Mps,
                _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
            };
            let list = match ViewSource::of(slice, device)? {
                ViewSource::Agent(gpu) => agent_processes(&gpu, kind),
                ViewSource::Driver { slice, uuid } => {
                    let mode = head.mode;
                    let raw = read_list::<NvmlProcessDetail>(|count, out| {
                        let mut mine = NvmlProcessDetailList {
                            version: NVML_PROCESS_DETAIL_LIST_V1,
                            mode,
                            // SAFETY: `count` points to read_list's counter.
                            num_proc_array_entries: unsafe { *count },
                            proc_array: out,
                        };
                        let r = call_nvml!(
                            id::nvmlView_GetRunningProcessDetailList,
                            DetailFn,
                            device,
                            &mut mine
                        );
                        // SAFETY: `count` points to read_list's own counter, a live local
                        // there.
                        unsafe { *count = mine.num_proc_array_entries };
                        r
                    })?;
                    let raw: Vec<(u32, u64)> =
                        raw.iter().map(|r| (r.pid, r.used_gpu_memory)).collect();
                    filter_driver_list(slice, &uuid, &raw)
                }
            };
            let count: *mut c_uint = &mut head.num_proc_array_entries;
            // SAFETY: the caller's array holds `num_proc_array_entries` elements.
            Ok(unsafe {
                write_list(&list, count, head.proc_array, |&(p, m)| {
                    NvmlProcessDetail::make(p, m)
                })
            })
        },
    )
}
