//! What processes do, as the fake driver reports it: per-process utilization samples,
//! accounting, encoder and frame-buffer-capture sessions (from the activity each process
//! recorded in the shared state, see `FAKE_CUDA_SM_UTIL` and friends), the detailed
//! process list, and the graphics (v1) and MPS process lists, which are always empty.
//!
//! Samples are numbered per `FAKE_NVML_PID_MODE` (see `view.rs`); accounting and
//! sessions always use host PIDs and are never filtered, like every real driver branch.

use std::ffi::c_uint;

use fake_gpu::ProcessUsage;
use fake_gpu::state::now_us;

use crate::api::{NvmlDevice, call, compute_processes, device_index, list_processes, put};
use crate::nvml::Machine;
use crate::types::*;
use crate::view::{Caller, sample_pid};

fn processes(m: &Machine, i: usize) -> Vec<ProcessUsage> {
    m.state.lock().processes(i)
}

/// The utilization samples of device `i`, as (pid as reported, sample time, usage).
fn samples(m: &Machine, i: usize, since: u64) -> Vec<(c_uint, u64, ProcessUsage)> {
    let caller = Caller::current();
    let now = now_us();
    if now <= since {
        return Vec::new();
    }
    processes(m, i)
        .into_iter()
        .filter(|p| p.context > 0)
        .map(|p| (sample_pid(m.pid_mode, &caller, p.pid), now, p))
        .collect()
}

/// Fills a caller's array of `room` elements by the usual NVML protocol: with too little
/// room (or none), the needed count goes to `count` and the call fails with
/// `NVML_ERROR_INSUFFICIENT_SIZE`.
///
/// # Safety
/// `count` must be valid for writes; `out` null or valid for `room` elements.
unsafe fn fill<T, S>(
    items: &[S],
    room: usize,
    count: *mut c_uint,
    out: *mut T,
    make: impl Fn(&S) -> T,
) -> Result<(), NvmlReturn> {
    // SAFETY: by the caller's contract.
    unsafe { count.write_unaligned(c_uint::try_from(items.len()).unwrap_or(c_uint::MAX)) };
    if items.is_empty() {
        return Ok(());
    }
    if out.is_null() || room < items.len() {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (k, item) in items.iter().enumerate() {
        // SAFETY: k < items.len() <= room.
        unsafe { out.add(k).write_unaligned(make(item)) };
    }
    Ok(())
}

/// Reads an in/out count argument.
///
/// # Safety
/// `count` must be null or valid for reads.
unsafe fn room(count: *const c_uint) -> Result<usize, NvmlReturn> {
    if count.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null and readable by the caller's contract.
    Ok(unsafe { count.read_unaligned() } as usize)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: NvmlDevice,
    utilization: *mut NvmlProcessUtilizationSample,
    count: *mut c_uint,
    last_seen: u64,
) -> NvmlReturn {
    call("nvmlDeviceGetProcessUtilization", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `count` is null or valid by the API contract.
        let room = unsafe { room(count) }?;
        let list = samples(m, i, last_seen);
        if list.is_empty() {
            // SAFETY: checked non-null above.
            unsafe { count.write_unaligned(0) };
            return Err(NVML_ERROR_NOT_FOUND);
        }
        // SAFETY: `utilization` is null or valid for `room` samples by the API contract.
        unsafe {
            fill(&list, room, count, utilization, |&(pid, ts, p)| {
                NvmlProcessUtilizationSample {
                    pid,
                    time_stamp: ts,
                    sm_util: p.activity.sm_util,
                    mem_util: p.activity.mem_util,
                    enc_util: 0,
                    dec_util: 0,
                }
            })
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: NvmlDevice,
    info: *mut NvmlProcessesUtilizationInfo,
) -> NvmlReturn {
    call("nvmlDeviceGetProcessesUtilizationInfo", |m| {
        let i = device_index(m, device)?;
        if info.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and pointing to the struct by the API contract.
        let head = unsafe { &mut *info };
        if head.version != NVML_PROCESSES_UTILIZATION_INFO_V1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let list = samples(m, i, head.last_seen_time_stamp);
        if list.is_empty() {
            head.process_samples_count = 0;
            return Err(NVML_ERROR_NOT_FOUND);
        }
        let room = head.process_samples_count as usize;
        let count: *mut c_uint = &mut head.process_samples_count;
        // SAFETY: the array holds `room` elements by the API contract.
        unsafe {
            fill(&list, room, count, head.proc_util_array, |&(pid, ts, p)| {
                NvmlProcessUtilizationInfo {
                    time_stamp: ts,
                    pid,
                    sm_util: p.activity.sm_util,
                    mem_util: p.activity.mem_util,
                    enc_util: 0,
                    dec_util: 0,
                    jpg_util: 0,
                    ofa_util: 0,
                }
            })
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingMode(
    device: NvmlDevice,
    mode: *mut c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetAccountingMode", |m| {
        device_index(m, device)?;
        // SAFETY: `mode` is null or writable by the API contract.
        unsafe { put(mode, 1) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingPids(
    device: NvmlDevice,
    count: *mut c_uint,
    pids: *mut c_uint,
) -> NvmlReturn {
    call("nvmlDeviceGetAccountingPids", |m| {
        let i = device_index(m, device)?;
        // SAFETY: `count` is null or valid by the API contract.
        let room = unsafe { room(count) }?;
        let list: Vec<c_uint> = processes(m, i).iter().map(|p| p.pid).collect();
        // SAFETY: `pids` is null or valid for `room` entries by the API contract.
        unsafe { fill(&list, room, count, pids, |&p| p) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetAccountingStats(
    device: NvmlDevice,
    pid: c_uint,
    stats: *mut NvmlAccountingStats,
) -> NvmlReturn {
    call("nvmlDeviceGetAccountingStats", |m| {
        let i = device_index(m, device)?;
        let p = processes(m, i)
            .into_iter()
            .find(|p| p.pid == pid)
            .ok_or(NVML_ERROR_NOT_FOUND)?;
        let v = NvmlAccountingStats {
            gpu_utilization: p.activity.sm_util,
            memory_utilization: p.activity.mem_util,
            max_memory_usage: p.total(),
            time: now_us().saturating_sub(p.since_us) / 1000,
            start_time: p.since_us,
            is_running: 1,
            reserved: [0; 5],
        };
        // SAFETY: `stats` is null or writable by the API contract.
        unsafe { put(stats, v) }
    })
}

/// One session per recorded session of each process: (session id, host pid).
fn sessions(m: &Machine, i: usize, of: impl Fn(&ProcessUsage) -> u32) -> Vec<(c_uint, c_uint)> {
    processes(m, i)
        .iter()
        .flat_map(|p| (0..of(p)).map(move |k| (p.pid.wrapping_mul(16).wrapping_add(k), p.pid)))
        .collect()
}

/// The session-list protocol: a count of 0 asks for the count.
///
/// # Safety
/// `count` null or valid for reads and writes; `out` null or valid for `*count` elements.
unsafe fn session_list<T>(
    items: &[(c_uint, c_uint)],
    count: *mut c_uint,
    out: *mut T,
    make: impl Fn(&(c_uint, c_uint)) -> T,
) -> Result<(), NvmlReturn> {
    // SAFETY: by the caller's contract.
    let room = unsafe { room(count) }?;
    if room == 0 {
        // SAFETY: checked non-null by `room`.
        unsafe { count.write_unaligned(c_uint::try_from(items.len()).unwrap_or(c_uint::MAX)) };
        return Ok(());
    }
    // SAFETY: by the caller's contract.
    unsafe { fill(items, room, count, out, make) }
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetEncoderSessions(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlEncoderSessionInfo,
) -> NvmlReturn {
    call("nvmlDeviceGetEncoderSessions", |m| {
        let i = device_index(m, device)?;
        let list = sessions(m, i, |p| p.activity.encoder_sessions);
        // SAFETY: forwarded API contract.
        unsafe {
            session_list(&list, count, infos, |&(id, pid)| NvmlEncoderSessionInfo {
                session_id: id,
                pid,
                vgpu_instance: 0,
                codec_type: 0,
                h_resolution: 1920,
                v_resolution: 1080,
                average_fps: 30,
                average_latency: 1000,
            })
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetFBCSessions(
    device: NvmlDevice,
    count: *mut c_uint,
    infos: *mut NvmlFbcSessionInfo,
) -> NvmlReturn {
    call("nvmlDeviceGetFBCSessions", |m| {
        let i = device_index(m, device)?;
        let list = sessions(m, i, |p| p.activity.fbc_sessions);
        // SAFETY: forwarded API contract.
        unsafe {
            session_list(&list, count, infos, |&(id, pid)| NvmlFbcSessionInfo {
                session_id: id,
                pid,
                vgpu_instance: 0,
                display_ordinal: 0,
                session_type: 1,
                session_flags: 0,
                h_max_resolution: 3840,
                v_max_resolution: 2160,
                h_resolution: 1920,
                v_resolution: 1080,
                average_fps: 60,
                average_latency: 500,
            })
        }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetRunningProcessDetailList(
    device: NvmlDevice,
    list: *mut NvmlProcessDetailList,
) -> NvmlReturn {
    call("nvmlDeviceGetRunningProcessDetailList", |m| {
        let i = device_index(m, device)?;
        if list.is_null() {
            return Err(NVML_ERROR_INVALID_ARGUMENT);
        }
        // SAFETY: non-null and pointing to the struct by the API contract.
        let head = unsafe { &mut *list };
        if head.version != NVML_PROCESS_DETAIL_LIST_V1 {
            return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
        }
        let procs = match head.mode {
            0 => compute_processes(m, i),
            1 | 2 => Vec::new(),
            _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
        };
        let room = head.num_proc_array_entries as usize;
        let count: *mut c_uint = &mut head.num_proc_array_entries;
        // SAFETY: the array holds `room` elements by the API contract.
        unsafe {
            fill(&procs, room, count, head.proc_array, |&(pid, used)| {
                NvmlProcessDetail {
                    pid,
                    used_gpu_memory: used,
                    gpu_instance_id: NVML_VALUE_NOT_AVAILABLE,
                    compute_instance_id: NVML_VALUE_NOT_AVAILABLE,
                    used_gpu_cc_protected_memory: 0,
                }
            })
        }
    })
}

macro_rules! empty_process_list {
    ($name:ident, $info:ty, $make:path) => {
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            device: NvmlDevice,
            count: *mut c_uint,
            infos: *mut $info,
        ) -> NvmlReturn {
            // SAFETY: forwarded API contract.
            unsafe { list_processes(stringify!($name), device, count, infos, true, $make) }
        }
    };
}

fn info_v1(pid: c_uint, used: u64) -> NvmlProcessInfoV1 {
    NvmlProcessInfoV1 {
        pid,
        used_gpu_memory: used,
    }
}

fn info_v2(pid: c_uint, used: u64) -> NvmlProcessInfo {
    NvmlProcessInfo {
        pid,
        used_gpu_memory: used,
        gpu_instance_id: NVML_VALUE_NOT_AVAILABLE,
        compute_instance_id: NVML_VALUE_NOT_AVAILABLE,
    }
}

empty_process_list!(
    nvmlDeviceGetGraphicsRunningProcesses,
    NvmlProcessInfoV1,
    info_v1
);
empty_process_list!(
    nvmlDeviceGetMPSComputeRunningProcesses,
    NvmlProcessInfoV1,
    info_v1
);
empty_process_list!(
    nvmlDeviceGetMPSComputeRunningProcesses_v2,
    NvmlProcessInfo,
    info_v2
);
empty_process_list!(
    nvmlDeviceGetMPSComputeRunningProcesses_v3,
    NvmlProcessInfo,
    info_v2
);
