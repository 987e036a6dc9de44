//! Accounting and encoder/FBC sessions inside a slice: from the agent's host-side view,
//! else the driver's own answer cut down to the slice's members where the driver's PIDs
//! can be trusted (the initial PID namespace), else nothing.

// The hooks carry NVML's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_uint;

use crate::ffi::*;
use crate::real::call_nvml;
use crate::table::id;

use super::protocol::{ListFn, read_list, real_sessions, write_list, write_sessions};
use super::source::{ViewSource, driver_host_data_usable, members, view_hook};

type PidsFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut c_uint) -> NvmlReturn;

type StatsFn = unsafe extern "C" fn(NvmlDevice, c_uint, *mut NvmlAccountingStats) -> NvmlReturn;

/// Hook of `nvmlDeviceGetAccountingPids`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingPids(
    device: NvmlDevice,
    count: *mut c_uint,
    pids: *mut c_uint,
) -> NvmlReturn {
    view_hook(
        || call_nvml!(id::nvmlView_GetAccountingPids, PidsFn, device, count, pids),
        |slice| {
            let list: Vec<u32> = match ViewSource::of(slice, device)? {
                ViewSource::Agent(gpu) => gpu.accounting.iter().map(|a| a.pid).collect(),
                ViewSource::Driver { slice, uuid } if driver_host_data_usable() => {
                    let raw = read_list::<c_uint>(|c, out| {
                        call_nvml!(id::nvmlView_GetAccountingPids, PidsFn, device, c, out)
                    })?;
                    let own = members(slice, &uuid);
                    raw.into_iter()
                        .filter(|p| own.iter().any(|(m, _)| m == p))
                        .collect()
                }
                ViewSource::Driver { .. } => Vec::new(),
            };
            // SAFETY: the caller's arguments, by NVML's contract.
            Ok(unsafe { write_list(&list, count, pids, |&p| p) })
        },
    )
}

/// Hook of `nvmlDeviceGetAccountingStats`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingStats(
    device: NvmlDevice,
    pid: c_uint,
    stats: *mut NvmlAccountingStats,
) -> NvmlReturn {
    view_hook(
        || call_nvml!(id::nvmlView_GetAccountingStats, StatsFn, device, pid, stats),
        |slice| {
            if stats.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            match ViewSource::of(slice, device)? {
                ViewSource::Agent(gpu) => {
                    let Some(a) = gpu.accounting.iter().find(|a| a.pid == pid) else {
                        return Err(NVML_ERROR_NOT_FOUND);
                    };
                    let v = NvmlAccountingStats {
                        gpu_utilization: a.gpu_util,
                        memory_utilization: a.mem_util,
                        max_memory_usage: a.max_memory,
                        time: a.time,
                        start_time: a.start_time,
                        is_running: c_uint::from(a.is_running),
                        reserved: [0; 5],
                    };
                    // SAFETY: non-null, the caller's struct.
                    unsafe { stats.write_unaligned(v) };
                    Ok(NVML_SUCCESS)
                }
                ViewSource::Driver { slice, uuid }
                    if driver_host_data_usable()
                        && members(slice, &uuid).iter().any(|&(m, _)| m == pid) =>
                {
                    Ok(call_nvml!(
                        id::nvmlView_GetAccountingStats,
                        StatsFn,
                        device,
                        pid,
                        stats
                    ))
                }
                ViewSource::Driver { .. } => Err(NVML_ERROR_NOT_FOUND),
            }
        },
    )
}

/// A session list (encoder or FBC) for a slice: from the agent's host-side view, else
/// the driver's own list cut down to the slice's processes where the driver's PIDs can be
/// trusted, else nothing. `pid_of` reads a session's PID.
///
/// # Safety
/// NVML's contract for `count` and `infos`.
unsafe fn session_hook<T: Default + Clone + Copy>(
    real_id: usize,
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut T,
    from_agent: impl Fn(&gpuslice_agent_protocol::GpuView) -> Vec<T>,
    pid_of: impl Fn(&T) -> u32,
) -> NvmlReturn {
    view_hook(
        || call_nvml!(real_id, ListFn<T>, device, count, infos),
        |slice| {
            let list: Vec<T> = match ViewSource::of(slice, device)? {
                ViewSource::Agent(gpu) => from_agent(&gpu),
                ViewSource::Driver { slice, uuid } if driver_host_data_usable() => {
                    let raw = real_sessions::<T>(real_id, device)?;
                    let own = members(slice, &uuid);
                    raw.into_iter()
                        .filter(|s| own.iter().any(|&(m, _)| m == pid_of(s)))
                        .collect()
                }
                ViewSource::Driver { .. } => Vec::new(),
            };
            // SAFETY: the caller's arguments, by NVML's contract.
            Ok(unsafe { write_sessions(&list, count, infos, |s| *s) })
        },
    )
}

/// Hook of `nvmlDeviceGetEncoderSessions`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderSessions(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlEncoderSessionInfo,
) -> NvmlReturn {
    let from_agent = |gpu: &gpuslice_agent_protocol::GpuView| {
        gpu.encoder_sessions
            .iter()
            .map(|e| NvmlEncoderSessionInfo {
                session_id: e.session_id,
                pid: e.pid,
                vgpu_instance: 0,
                codec_type: e.codec,
                h_resolution: e.h_res,
                v_resolution: e.v_res,
                average_fps: e.average_fps,
                average_latency: e.average_latency,
            })
            .collect()
    };
    // SAFETY: the caller's arguments, by NVML's contract.
    unsafe {
        session_hook(
            id::nvmlView_GetEncoderSessions,
            device,
            count,
            infos,
            from_agent,
            |s| s.pid,
        )
    }
}

/// Hook of `nvmlDeviceGetFBCSessions`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFBCSessions(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlFbcSessionInfo,
) -> NvmlReturn {
    let from_agent = |gpu: &gpuslice_agent_protocol::GpuView| {
        gpu.fbc_sessions
            .iter()
            .map(|f| NvmlFbcSessionInfo {
                session_id: f.session_id,
                pid: f.pid,
                vgpu_instance: 0,
                display_ordinal: f.display_ordinal,
                session_type: f.session_type,
                session_flags: f.flags,
                h_max_resolution: f.h_max,
                v_max_resolution: f.v_max,
                h_resolution: f.h_res,
                v_resolution: f.v_res,
                average_fps: f.average_fps,
                average_latency: f.average_latency,
            })
            .collect()
    };
    // SAFETY: the caller's arguments, by NVML's contract.
    unsafe {
        session_hook(
            id::nvmlView_GetFBCSessions,
            device,
            count,
            infos,
            from_agent,
            |s| s.pid,
        )
    }
}
