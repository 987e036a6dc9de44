//! Where an NVML view answer comes from, chosen once per call: the opening every view
//! hook shares ([`view_hook`]: the real function outside a slice, a refusal with a broken
//! configuration, the slice otherwise), and the [`ViewSource`] of one GPU: the host
//! agent's view when the agent answers, else the driver's own answer cut down to the
//! slice's live members by its ledger. The two are never mixed in one answer.

use std::ffi::{c_char, c_uint};
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use gpuslice_agent_protocol::{DriverMode, GpuView};
use gpuslice_ledger::Liveness;

use crate::agent_client;
use crate::ffi::*;
use crate::log::log_at;
use crate::process::Access;
use crate::real::call_nvml;
use crate::slice::Slice;
use crate::table::id;

pub(super) type UuidFn = unsafe extern "C" fn(NvmlDevice, *mut c_char, c_uint) -> NvmlReturn;

pub(super) type IndexFn = unsafe extern "C" fn(NvmlDevice, *mut c_uint) -> NvmlReturn;

/// Inode of the initial PID namespace (`PROC_PID_INIT_INO`).
const INIT_PID_NS: u64 = 0xEFFF_FFFC;

/// Runs an NVML view hook: outside a slice `real` (the real function's answer); with a
/// broken configuration `NVML_ERROR_NO_PERMISSION`; in a slice `in_slice`, whose error
/// is the answer too.
#[inline]
pub fn view_hook(
    real: impl FnOnce() -> NvmlReturn,
    in_slice: impl FnOnce(&'static Slice) -> Result<NvmlReturn, NvmlReturn>,
) -> NvmlReturn {
    match crate::process::access() {
        Access::PassThrough => real(),
        Access::Refuse(_) => NVML_ERROR_NO_PERMISSION,
        Access::Slice(slice) => in_slice(slice).unwrap_or_else(|e| e),
    }
}

/// The caller's versioned NVML struct: `NVML_ERROR_INVALID_ARGUMENT` when the pointer is
/// null, `NVML_ERROR_ARGUMENT_VERSION_MISMATCH` when its version is not `version`.
///
/// # Safety
/// `p` is null or points to a valid `T` that nothing else uses while the reference
/// lives.
pub unsafe fn versioned<'a, T>(
    p: *mut T,
    version: c_uint,
    version_of: impl Fn(&T) -> c_uint,
) -> Result<&'a mut T, NvmlReturn> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: non-null, and valid and unaliased by the caller's contract.
    let head = unsafe { &mut *p };
    if version_of(head) != version {
        return Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    }
    Ok(head)
}

/// Where a slice's answer about one GPU comes from.
pub enum ViewSource {
    /// The host agent's view of the GPU, read on the host (PIDs already the
    /// container's).
    Agent(GpuView),
    /// The driver's own answer, to be cut down to the slice's live members.
    Driver {
        /// The slice.
        slice: &'static Slice,
        /// The GPU's UUID.
        uuid: String,
    },
}

impl ViewSource {
    /// The source for NVML device `device` (whose handle is validated here): the agent
    /// when it answers and knows the GPU, else the driver.
    pub fn of(slice: &'static Slice, device: NvmlDevice) -> Result<ViewSource, NvmlReturn> {
        let uuid = handle_uuid(device)?;
        Ok(
            match agent_client::view().and_then(|v| v.gpu(&uuid).cloned()) {
                Some(gpu) => ViewSource::Agent(gpu),
                None => ViewSource::Driver { slice, uuid },
            },
        )
    }
}

/// The UUID of an NVML device handle (validates the handle).
pub(super) fn handle_uuid(device: NvmlDevice) -> Result<String, NvmlReturn> {
    let mut buf = [0 as c_char; 96];
    let r = call_nvml!(
        id::nvmlView_GetUUID,
        UuidFn,
        device,
        buf.as_mut_ptr(),
        c_uint::try_from(buf.len()).unwrap_or(c_uint::MAX)
    );
    if r != NVML_SUCCESS {
        return Err(r);
    }
    let bytes: Vec<u8> = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

pub(super) fn handle_index(device: NvmlDevice) -> Option<u32> {
    let mut index: c_uint = 0;
    let r = call_nvml!(id::nvmlDeviceGetIndex, IndexFn, device, &mut index);
    (r == NVML_SUCCESS).then_some(index)
}

pub(super) fn in_root_pid_ns() -> bool {
    std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == INIT_PID_NS)
}

/// Whether a process with this PID exists in this process's PID namespace.
pub(super) fn exists_here(pid: u32) -> bool {
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
pub(super) fn members(slice: &Slice, uuid: &str) -> Vec<(u32, u64)> {
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
pub(super) fn filter_driver_list(
    slice: &Slice,
    uuid: &str,
    list: &[(u32, u64)],
) -> Vec<(u32, u64)> {
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

/// The driver's host-PID data (accounting, sessions) is usable without the agent only in
/// the initial PID namespace, where host PIDs are this process's PIDs.
pub(super) fn driver_host_data_usable() -> bool {
    in_root_pid_ns()
}
