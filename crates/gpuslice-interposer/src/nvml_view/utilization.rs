//! Utilization inside a slice: the per-process samples (`nvmlDeviceGetProcessUtilization`,
//! `nvmlDeviceGetProcessesUtilizationInfo`) of the container's own processes, and the GPU
//! utilization (`nvmlDeviceGetUtilizationRates`) as the slice's own share: the sum of its
//! processes' latest SM (and memory) samples, at most 100.

// The hooks carry NVML's own symbol names, which are camelCase.
#![allow(non_snake_case)]

use std::ffi::c_uint;

use crate::agent_client;
use crate::ffi::*;
use crate::real::call_nvml;
use crate::slice::Slice;
use crate::table::id;
use gpuslice_agent_protocol::{Sample, SampleNumbering};

use super::processes::driver_own_pids;
use super::protocol::{read_list, write_list};
use super::source::{ViewSource, in_root_pid_ns, versioned, view_hook};

type UtilFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlUtilization) -> NvmlReturn;

type SamplesFn = unsafe extern "C" fn(
    NvmlDevice,
    *mut NvmlProcessUtilizationSample,
    *mut c_uint,
    u64,
) -> NvmlReturn;

type InfoFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessesUtilizationInfo) -> NvmlReturn;

/// Samples older than this (by their own timestamps) do not count for utilization.
const SAMPLE_MAX_AGE_US: u64 = 3_000_000;

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// This container's utilization samples on `device` newer than `last_seen`.
fn own_samples(
    slice: &'static Slice,
    device: NvmlDevice,
    last_seen: u64,
) -> Result<Vec<Sample>, NvmlReturn> {
    let (slice, uuid) = match ViewSource::of(slice, device)? {
        ViewSource::Agent(gpu) => {
            return Ok(gpu
                .samples
                .into_iter()
                .filter(|s| s.timestamp > last_seen)
                .collect());
        }
        ViewSource::Driver { slice, uuid } => (slice, uuid),
    };
    let raw = read_list::<NvmlProcessUtilizationSample>(|count, out| {
        call_nvml!(
            id::nvmlView_GetProcessUtilization,
            SamplesFn,
            device,
            out,
            count,
            last_seen
        )
    })?;
    if !in_root_pid_ns() && agent_client::last_sample_numbering() == Some(SampleNumbering::HostPids)
    {
        return Ok(Vec::new());
    }
    let own = driver_own_pids(slice, device, &uuid);
    Ok(raw
        .into_iter()
        .filter(|s| own.contains(&s.pid))
        .map(|s| Sample {
            pid: s.pid,
            timestamp: s.time_stamp,
            sm: s.sm_util,
            mem: s.mem_util,
            enc: s.enc_util,
            dec: s.dec_util,
        })
        .collect())
}

/// The slice's share of the GPU: per process its newest sample (of the last 3 seconds),
/// summed, at most 100. Returns (SM, memory) utilization in percent.
pub fn slice_utilization(samples: &[Sample], now_us: u64) -> (u32, u32) {
    let mut newest: Vec<Sample> = Vec::new();
    for s in samples {
        if now_us > s.timestamp && now_us - s.timestamp > SAMPLE_MAX_AGE_US {
            continue;
        }
        match newest.iter_mut().find(|n| n.pid == s.pid) {
            Some(n) if n.timestamp < s.timestamp => *n = *s,
            Some(_) => {}
            None => newest.push(*s),
        }
    }
    let sm: u64 = newest.iter().map(|s| u64::from(s.sm)).sum();
    let mem: u64 = newest.iter().map(|s| u64::from(s.mem)).sum();
    (sm.min(100) as u32, mem.min(100) as u32)
}

/// Hook of `nvmlDeviceGetUtilizationRates`: the slice's own share.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetUtilizationRates(
    device: NvmlDevice,
    utilization: *mut NvmlUtilization,
) -> NvmlReturn {
    let r = call_nvml!(
        id::nvmlView_GetUtilizationRates,
        UtilFn,
        device,
        utilization
    );
    view_hook(
        || r,
        |slice| {
            if r != NVML_SUCCESS || utilization.is_null() {
                return Ok(r);
            }
            // Samples that cannot be had (not supported) mean no known share: 0.
            let samples = own_samples(slice, device, 0).unwrap_or_default();
            let (gpu, memory) = slice_utilization(&samples, now_us());
            // SAFETY: the real call just filled this struct.
            unsafe { utilization.write_unaligned(NvmlUtilization { gpu, memory }) };
            Ok(NVML_SUCCESS)
        },
    )
}

/// Hook of `nvmlDeviceGetProcessUtilization`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessUtilization(
    device: NvmlDevice,
    utilization: *mut NvmlProcessUtilizationSample,
    count: *mut c_uint,
    last_seen: u64,
) -> NvmlReturn {
    view_hook(
        || {
            call_nvml!(
                id::nvmlView_GetProcessUtilization,
                SamplesFn,
                device,
                utilization,
                count,
                last_seen
            )
        },
        |slice| {
            if count.is_null() {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            let samples = own_samples(slice, device, last_seen)?;
            if samples.is_empty() {
                // SAFETY: non-null, the caller's counter.
                unsafe { count.write_unaligned(0) };
                return Err(NVML_ERROR_NOT_FOUND);
            }
            // SAFETY: the caller's arguments, by NVML's contract.
            Ok(unsafe {
                write_list(&samples, count, utilization, |s| {
                    NvmlProcessUtilizationSample {
                        pid: s.pid,
                        time_stamp: s.timestamp,
                        sm_util: s.sm,
                        mem_util: s.mem,
                        enc_util: s.enc,
                        dec_util: s.dec,
                    }
                })
            })
        },
    )
}

/// Hook of `nvmlDeviceGetProcessesUtilizationInfo`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetProcessesUtilizationInfo(
    device: NvmlDevice,
    info: *mut NvmlProcessesUtilizationInfo,
) -> NvmlReturn {
    view_hook(
        || {
            call_nvml!(
                id::nvmlView_GetProcessesUtilizationInfo,
                InfoFn,
                device,
                info
            )
        },
        |slice| {
            // SAFETY: null or the caller's struct, by NVML's contract.
            let head =
                unsafe { versioned(info, NVML_PROCESSES_UTILIZATION_INFO_V1, |h| h.version) }?;
            let samples = own_samples(slice, device, head.last_seen_time_stamp)?;
            if samples.is_empty() {
                head.process_samples_count = 0;
                return Err(NVML_ERROR_NOT_FOUND);
            }
            let count: *mut c_uint = &mut head.process_samples_count;
            // SAFETY: the caller's array holds `processSamplesCount` elements.
            Ok(unsafe {
                write_list(&samples, count, head.proc_util_array, |s| {
                    NvmlProcessUtilizationInfo {
                        time_stamp: s.timestamp,
                        pid: s.pid,
                        sm_util: s.sm,
                        mem_util: s.mem,
                        enc_util: s.enc,
                        dec_util: s.dec,
                        jpg_util: 0,
                        ofa_util: 0,
                    }
                })
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, ts: u64, sm: u32) -> Sample {
        Sample {
            pid,
            timestamp: ts,
            sm,
            mem: sm / 10,
            enc: 0,
            dec: 0,
        }
    }

    #[test]
    fn utilization_is_the_sum_of_each_process_newest_sample_capped() {
        let now = 10_000_000_000;
        let samples = [
            sample(1, now - 100, 25),
            sample(1, now - 500_000, 90),
            sample(2, now - 200, 35),
            sample(3, now - 4_000_000, 50), // too old
        ];
        assert_eq!(slice_utilization(&samples, now), (60, 5));
        let busy = [sample(1, now, 70), sample(2, now, 70)];
        assert_eq!(slice_utilization(&busy, now), (100, 14));
        assert_eq!(slice_utilization(&[], now), (0, 0));
    }
}
