//! The NVML view: inside a slice, NVML tells the truth about the slice on every driver
//! branch (see `docs/nvml-view.md`).
//!
//! * **Memory** (`nvmlDeviceGetMemoryInfo`, `_v2`): total = the slice's limit on that GPU,
//!   used = the slice's usage from its ledger (contexts included), free = what is left
//!   (never more than the GPU really has free); `reserved` is 0.
//! * **Processes, utilization samples, accounting, encoder/FBC sessions**: only the
//!   container's own processes, under the PIDs the container sees. With the host agent
//!   (`GPUSLICE_AGENT_SOCKET`) every answer comes from the agent, which read it on the
//!   host. Without it, the driver's own in-namespace answer is used, cut down to processes
//!   that are live members of this slice per its ledger; where the driver shows host PIDs
//!   (drivers before 535.113) nothing is shown rather than something wrong; per-process
//!   memory the driver reports as 0 or not available (535.x/550.x) is the ledger's charge.
//!   The two sources are never mixed in one answer, so nothing is translated twice.
//! * **GPU utilization** (`nvmlDeviceGetUtilizationRates`): the slice's own share: the sum
//!   of its processes' latest SM (and memory) utilization samples, at most 100.
//!
//! A process outside any slice gets the real functions (the exported hooks forward to
//! them); a process whose slice configuration is broken gets `NVML_ERROR_NO_PERMISSION`.

#![allow(non_snake_case)]

use std::ffi::{c_char, c_uint};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use gpuslice_agent_protocol::{DriverMode, ProcessKind, Sample, SampleNumbering, View};
use gpuslice_ledger::Liveness;

use crate::agent_client;
use crate::ffi::*;
use crate::log::log_at;
use crate::process::Access;
use crate::real::call_nvml;
use crate::slice::Slice;
use crate::table::id;

type UuidFn = unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> NvmlReturn;
type IndexFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn;
type MemFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemory) -> NvmlReturn;
type MemV2Fn = unsafe extern "C" fn(NvmlDevice, *mut NvmlMemoryV2) -> NvmlReturn;
type UtilFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlUtilization) -> NvmlReturn;
type ListFn<T> = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut T) -> NvmlReturn;
type DetailFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessDetailList) -> NvmlReturn;
type SamplesFn = unsafe extern "C" fn(
    NvmlDevice,
    *mut NvmlProcessUtilizationSample,
    *mut c_uint,
    u64,
) -> NvmlReturn;
type InfoFn = unsafe extern "C" fn(NvmlDevice, *mut NvmlProcessesUtilizationInfo) -> NvmlReturn;
type PidsFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint, *mut c_uint) -> NvmlReturn;
type StatsFn = unsafe extern "C" fn(NvmlDevice, c_uint, *mut NvmlAccountingStats) -> NvmlReturn;

/// Samples older than this (by their own timestamps) do not count for utilization.
const SAMPLE_MAX_AGE_US: u64 = 3_000_000;
/// Inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// What a hook should do for this process.
enum Who {
    /// Not in a slice: the real function.
    Real,
    /// In this slice.
    Slice(&'static Slice),
    /// The slice's configuration is broken.
    Refuse,
}

fn who() -> Who {
    match crate::process::access() {
        Access::PassThrough => Who::Real,
        Access::Slice(s) => Who::Slice(s),
        Access::Refuse(_) => Who::Refuse,
    }
}

// ------------------------------------------------------------------------------ helpers

/// The UUID of an NVML device handle (validates the handle).
fn handle_uuid(device: NvmlDevice) -> Result<String, NvmlReturn> {
    let mut buf = [0 as c_char; 96];
    let r = call_nvml!(
        id::nvmlView_GetUUID,
        UuidFn,
        device,
        buf.as_mut_ptr(),
        buf.len() as c_uint
    );
    if r != NVML_SUCCESS {
        return Err(r);
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn handle_index(device: NvmlDevice) -> Option<u32> {
    let mut index: c_uint = 0;
    let r = call_nvml!(id::nvmlDeviceGetIndex, IndexFn, device, &mut index);
    (r == NVML_SUCCESS).then_some(index)
}

/// The slice's (limit, usage) on a device, `None` when the slice does not limit it.
fn slice_memory(slice: &Slice, device: NvmlDevice) -> Result<Option<(u64, u64)>, NvmlReturn> {
    let uuid = handle_uuid(device)?;
    if let Some(d) = slice
        .ledger
        .devices()
        .into_iter()
        .find(|d| d.uuid.eq_ignore_ascii_case(&uuid))
    {
        return Ok(Some((d.limit, d.used)));
    }
    // No process of the slice has used this GPU yet: the configuration's limit, nothing
    // used.
    let index = if slice.config.memory.has_index_selectors() {
        handle_index(device)
    } else {
        None
    };
    Ok(slice
        .config
        .memory
        .limit_for(index, &uuid)
        .map(|limit| (limit, 0)))
}

/// (total, used, free) of a slice whose limit is `limit` and usage `used`, on a GPU with
/// `real_free` bytes really free.
fn slice_numbers(limit: u64, used: u64, real_free: u64) -> (u64, u64, u64) {
    let used = used.min(limit);
    (limit, used, (limit - used).min(real_free))
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn in_root_pid_ns() -> bool {
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS)
}

/// Whether a process with this PID exists in this process's PID namespace.
fn exists_here(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence; nothing is delivered.
    let rc = unsafe { libc::kill(raw, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Live members of the slice in this PID namespace, with their charge on GPU `uuid`.
fn members(slice: &Slice, uuid: &str) -> Vec<(u32, u64)> {
    let slot = slice
        .ledger
        .devices()
        .into_iter()
        .find(|d| d.uuid.eq_ignore_ascii_case(uuid))
        .map(|d| d.slot);
    slice
        .ledger
        .processes()
        .into_iter()
        .filter(|p| p.liveness == Liveness::Alive)
        .map(|p| {
            let charge = slot
                .and_then(|s| p.charges.get(s.index()).copied())
                .unwrap_or(0);
            (p.pid, charge)
        })
        .collect()
}

static UNTRANSLATED_LOGGED: AtomicU32 = AtomicU32::new(0);

/// The driver's own in-namespace process list cut down to this slice's live members.
/// Where the driver shows PIDs that do not exist in this namespace (host PIDs, drivers
/// before 535.113), nothing of its list can be trusted and nothing is shown. Memory the
/// driver reports as 0 or not available is the member's ledger charge.
fn filter_driver_list(slice: &Slice, uuid: &str, list: &[(u32, u64)]) -> Vec<(u32, u64)> {
    if !in_root_pid_ns() {
        let untranslated = agent_client::last_mode() == Some(DriverMode::HostPids)
            || list.iter().any(|&(pid, _)| !exists_here(pid));
        if untranslated {
            let me = std::process::id();
            if UNTRANSLATED_LOGGED.swap(me, Relaxed) != me {
                log_at!(
                    Info,
                    "NVML lists processes of other PID namespaces (host PIDs): without the gpuslice agent, no process is shown"
                );
            }
            return Vec::new();
        }
    }
    let members = members(slice, uuid);
    list.iter()
        .filter_map(|&(pid, mem)| {
            let &(_, charge) = members.iter().find(|(p, _)| *p == pid)?;
            let mem = if (mem == NVML_VALUE_NOT_AVAILABLE_U64 || mem == 0) && charge > 0 {
                charge
            } else {
                mem
            };
            Some((pid, mem))
        })
        .collect()
}

/// A process-list record layout.
trait Record: Copy + Default {
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
fn read_list<T: Default + Clone>(
    mut call: impl FnMut(*mut c_uint, *mut T) -> NvmlReturn,
) -> Result<Vec<T>, NvmlReturn> {
    let mut buf = vec![T::default(); 32];
    for _ in 0..6 {
        let mut count = buf.len() as c_uint;
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
fn real_list<T: Record>(real_id: usize, device: NvmlDevice) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    let list = read_list::<T>(|count, out| call_nvml!(real_id, ListFn<T>, device, count, out))?;
    Ok(list.iter().map(|r| (r.pid(), r.mem())).collect())
}

/// The agent's view of GPU `uuid`, if the agent answers and knows it.
fn agent_gpu(view: &View, uuid: &str) -> Option<gpuslice_agent_protocol::GpuView> {
    view.gpu(uuid).cloned()
}

/// This container's processes of `kind` on `device`: from the agent, or from the driver's
/// own list (read through `real_id` with layout `T`), cut down to the slice.
fn own_processes<T: Record>(
    slice: &Slice,
    device: NvmlDevice,
    real_id: usize,
    kind: ProcessKind,
) -> Result<Vec<(u32, u64)>, NvmlReturn> {
    let uuid = handle_uuid(device)?;
    if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid)) {
        return Ok(gpu
            .processes
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| (p.pid, p.used_memory.unwrap_or(NVML_VALUE_NOT_AVAILABLE_U64)))
            .collect());
    }
    let list = real_list::<T>(real_id, device)?;
    Ok(filter_driver_list(slice, &uuid, &list))
}

/// The PIDs of this container's compute processes per the driver's own list (fallback
/// only): other per-process data of the driver is accepted only for these.
fn driver_own_pids(slice: &Slice, device: NvmlDevice, uuid: &str) -> Vec<u32> {
    let list = real_list::<NvmlProcessInfo>(id::nvmlView_ComputeRunningProcesses_v3, device)
        .or_else(|_| real_list::<NvmlProcessInfo>(id::nvmlView_ComputeRunningProcesses_v2, device))
        .unwrap_or_default();
    filter_driver_list(slice, uuid, &list)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// Writes a list by the `infoCount` protocol.
///
/// # Safety
/// `count` null or valid for reads and writes; `out` null or valid for `*count` elements.
unsafe fn write_list<T, S>(
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
    unsafe { count.write_unaligned(items.len() as c_uint) };
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
    match who() {
        Who::Real => call_nvml!(real_id, ListFn<T>, device, count, infos),
        Who::Refuse => NVML_ERROR_NO_PERMISSION,
        Who::Slice(slice) => match own_processes::<T>(slice, device, real_id, kind) {
            // SAFETY: the caller's arguments, by NVML's contract.
            Ok(list) => unsafe { write_list(&list, count, infos, |&(p, m)| T::make(p, m)) },
            Err(e) => e,
        },
    }
}

/// This container's utilization samples on `device` newer than `last_seen`.
fn own_samples(
    slice: &Slice,
    device: NvmlDevice,
    last_seen: u64,
) -> Result<Vec<Sample>, NvmlReturn> {
    let uuid = handle_uuid(device)?;
    if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid)) {
        return Ok(gpu
            .samples
            .into_iter()
            .filter(|s| s.timestamp > last_seen)
            .collect());
    }
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

// ------------------------------------------------------------------------------ hooks

/// Hook of `nvmlDeviceGetMemoryInfo`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: NvmlDevice,
    memory: *mut NvmlMemory,
) -> NvmlReturn {
    let r = call_nvml!(id::nvmlView_GetMemoryInfo, MemFn, device, memory);
    let slice = match who() {
        Who::Real => return r,
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if r != NVML_SUCCESS || memory.is_null() {
        return r;
    }
    match slice_memory(slice, device) {
        Ok(Some((limit, used))) => {
            // SAFETY: the real call just filled this struct.
            let m = unsafe { &mut *memory };
            let (total, used, free) = slice_numbers(limit, used, m.free);
            *m = NvmlMemory { total, free, used };
            NVML_SUCCESS
        }
        Ok(None) => r,
        Err(e) => e,
    }
}

/// Hook of `nvmlDeviceGetMemoryInfo_v2`.
///
/// # Safety
/// NVML's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: NvmlDevice,
    memory: *mut NvmlMemoryV2,
) -> NvmlReturn {
    let r = call_nvml!(id::nvmlView_GetMemoryInfo_v2, MemV2Fn, device, memory);
    let slice = match who() {
        Who::Real => return r,
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if r != NVML_SUCCESS || memory.is_null() {
        return r;
    }
    match slice_memory(slice, device) {
        Ok(Some((limit, used))) => {
            // SAFETY: the real call just filled this struct (its version was checked).
            let m = unsafe { &mut *memory };
            let (total, used, free) = slice_numbers(limit, used, m.free);
            m.total = total;
            m.reserved = 0;
            m.free = free;
            m.used = used;
            NVML_SUCCESS
        }
        Ok(None) => r,
        Err(e) => e,
    }
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
    let slice = match who() {
        Who::Real => return r,
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if r != NVML_SUCCESS || utilization.is_null() {
        return r;
    }
    // Samples that cannot be had (not supported) mean no known share: 0.
    let samples = own_samples(slice, device, 0).unwrap_or_default();
    let (gpu, memory) = slice_utilization(&samples, now_us());
    // SAFETY: the real call just filled this struct.
    unsafe { utilization.write_unaligned(NvmlUtilization { gpu, memory }) };
    NVML_SUCCESS
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
    let slice = match who() {
        Who::Real => {
            return call_nvml!(
                id::nvmlView_GetRunningProcessDetailList,
                DetailFn,
                device,
                plist
            );
        }
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if plist.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null, pointing to the caller's struct.
    let head = unsafe { &mut *plist };
    if head.version != NVML_PROCESS_DETAIL_LIST_V1 {
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    let kind = match head.mode {
        NVML_PROCESS_MODE_COMPUTE => ProcessKind::Compute,
        NVML_PROCESS_MODE_GRAPHICS => ProcessKind::Graphics,
        NVML_PROCESS_MODE_MPS => ProcessKind::Mps,
        _ => return NVML_ERROR_INVALID_ARGUMENT,
    };
    let uuid = match handle_uuid(device) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let list = if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid)) {
        gpu.processes
            .iter()
            .filter(|p| p.kind == kind)
            .map(|p| (p.pid, p.used_memory.unwrap_or(NVML_VALUE_NOT_AVAILABLE_U64)))
            .collect()
    } else {
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
            // SAFETY: `count` points to read_list's own counter, a live local there.
            unsafe { *count = mine.num_proc_array_entries };
            r
        });
        match raw {
            Ok(raw) => {
                let raw: Vec<(u32, u64)> = raw.iter().map(|r| (r.pid, r.used_gpu_memory)).collect();
                filter_driver_list(slice, &uuid, &raw)
            }
            Err(e) => return e,
        }
    };
    let count: *mut c_uint = &mut head.num_proc_array_entries;
    // SAFETY: the caller's array holds `num_proc_array_entries` elements.
    unsafe {
        write_list(&list, count, head.proc_array, |&(p, m)| {
            NvmlProcessDetail::make(p, m)
        })
    }
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
    let slice = match who() {
        Who::Real => {
            return call_nvml!(
                id::nvmlView_GetProcessUtilization,
                SamplesFn,
                device,
                utilization,
                count,
                last_seen
            );
        }
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if count.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let samples = match own_samples(slice, device, last_seen) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if samples.is_empty() {
        // SAFETY: non-null, the caller's counter.
        unsafe { count.write_unaligned(0) };
        return NVML_ERROR_NOT_FOUND;
    }
    // SAFETY: the caller's arguments, by NVML's contract.
    unsafe {
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
    }
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
    let slice = match who() {
        Who::Real => {
            return call_nvml!(
                id::nvmlView_GetProcessesUtilizationInfo,
                InfoFn,
                device,
                info
            );
        }
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if info.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    // SAFETY: non-null, pointing to the caller's struct.
    let head = unsafe { &mut *info };
    if head.version != NVML_PROCESSES_UTILIZATION_INFO_V1 {
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    }
    let samples = match own_samples(slice, device, head.last_seen_time_stamp) {
        Ok(s) => s,
        Err(e) => return e,
    };
    if samples.is_empty() {
        head.process_samples_count = 0;
        return NVML_ERROR_NOT_FOUND;
    }
    let count: *mut c_uint = &mut head.process_samples_count;
    // SAFETY: the caller's array holds `processSamplesCount` elements.
    unsafe {
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
    }
}

/// The driver's host-PID data (accounting, sessions) is usable without the agent only in
/// the initial PID namespace, where host PIDs are this process's PIDs.
fn driver_host_data_usable() -> bool {
    in_root_pid_ns()
}

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
    let slice = match who() {
        Who::Real => {
            return call_nvml!(id::nvmlView_GetAccountingPids, PidsFn, device, count, pids);
        }
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    let uuid = match handle_uuid(device) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let list: Vec<u32> = if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid))
    {
        gpu.accounting.iter().map(|a| a.pid).collect()
    } else if driver_host_data_usable() {
        let raw = match read_list::<c_uint>(|c, out| {
            call_nvml!(id::nvmlView_GetAccountingPids, PidsFn, device, c, out)
        }) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let own = members(slice, &uuid);
        raw.into_iter()
            .filter(|p| own.iter().any(|(m, _)| m == p))
            .collect()
    } else {
        Vec::new()
    };
    // SAFETY: the caller's arguments, by NVML's contract.
    unsafe { write_list(&list, count, pids, |&p| p) }
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
    let slice = match who() {
        Who::Real => {
            return call_nvml!(id::nvmlView_GetAccountingStats, StatsFn, device, pid, stats);
        }
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    if stats.is_null() {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    let uuid = match handle_uuid(device) {
        Ok(u) => u,
        Err(e) => return e,
    };
    if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid)) {
        return match gpu.accounting.iter().find(|a| a.pid == pid) {
            Some(a) => {
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
                NVML_SUCCESS
            }
            None => NVML_ERROR_NOT_FOUND,
        };
    }
    if driver_host_data_usable() && members(slice, &uuid).iter().any(|&(m, _)| m == pid) {
        return call_nvml!(id::nvmlView_GetAccountingStats, StatsFn, device, pid, stats);
    }
    NVML_ERROR_NOT_FOUND
}

/// Reads a whole real session list (a count of 0 asks for the count).
fn real_sessions<T: Default + Clone>(
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
unsafe fn write_sessions<T, S>(
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
        unsafe { count.write_unaligned(items.len() as c_uint) };
        return NVML_SUCCESS;
    }
    // SAFETY: by the caller's contract.
    unsafe { write_list(items, count, out, make) }
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
    let slice = match who() {
        Who::Real => return call_nvml!(real_id, ListFn<T>, device, count, infos),
        Who::Refuse => return NVML_ERROR_NO_PERMISSION,
        Who::Slice(s) => s,
    };
    let uuid = match handle_uuid(device) {
        Ok(u) => u,
        Err(e) => return e,
    };
    let list: Vec<T> = if let Some(gpu) = agent_client::view().and_then(|v| agent_gpu(&v, &uuid)) {
        from_agent(&gpu)
    } else if driver_host_data_usable() {
        let raw = match real_sessions::<T>(real_id, device) {
            Ok(r) => r,
            Err(e) => return e,
        };
        let own = members(slice, &uuid);
        raw.into_iter()
            .filter(|s| own.iter().any(|&(m, _)| m == pid_of(s)))
            .collect()
    } else {
        Vec::new()
    };
    // SAFETY: the caller's arguments, by NVML's contract.
    unsafe { write_sessions(&list, count, infos, |s| *s) }
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

    #[test]
    fn memory_numbers_never_underflow_or_exceed_the_gpu() {
        let gib = 1u64 << 30;
        assert_eq!(
            slice_numbers(4 * gib, gib, 100 * gib),
            (4 * gib, gib, 3 * gib)
        );
        // Over the limit (forced charges): used is the limit, nothing is free.
        assert_eq!(
            slice_numbers(4 * gib, 5 * gib, 100 * gib),
            (4 * gib, 4 * gib, 0)
        );
        // The GPU itself is fuller than the slice thinks.
        assert_eq!(
            slice_numbers(4 * gib, gib, gib / 2),
            (4 * gib, gib, gib / 2)
        );
    }

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
