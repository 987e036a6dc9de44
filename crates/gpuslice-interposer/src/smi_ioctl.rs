//! `nvidia-smi`'s own process table on drivers that do not translate PIDs for
//! containers. `nvidia-smi` does not list processes through NVML's public functions
//! (which `nvml_view` hooks) but through NVML's internal export table; underneath, every
//! NVML client asks the kernel driver with two `NV_ESC_RM_CONTROL` ioctls on
//! `/dev/nvidiactl`: `NV2080_CTRL_CMD_GPU_GET_PIDS` (which processes use a GPU) and
//! `NV2080_CTRL_CMD_GPU_GET_PID_INFO` (what each uses). This module interposes libc's
//! `ioctl` and rewrites those two, and nothing else, where the driver needs it:
//!
//! * drivers before 535.113 (the agent's mode `host-pids`) answer `GET_PIDS` with the
//!   host PIDs of every process on the host: the list is cut down to the container's own
//!   processes and translated into its PIDs;
//! * those and 535.113–560, every 535.x/550.x (mode `translated-broken-memory`), look the
//!   PIDs given to `GET_PID_INFO` up as host PIDs: each is translated to its host PID
//!   before the call and back after it (a PID not of the container becomes 0, which the
//!   driver answers with "not found", so nothing of another process can leak).
//!
//! The translation comes from the host agent (the `pid` lines of its view). The mode is
//! the agent's probe of the driver's behaviour, never the version string, and a driver
//! that translates by itself is left alone: never translated twice.
//! `GPUSLICE_SMI_IOCTL=off` turns it off, `=host-pids` or `=translated-broken-memory`
//! forces a mode (for checking the rewriting on a driver of another branch).
//!
//! Every other ioctl goes straight to the kernel (`syscall(SYS_ioctl)`), after one
//! comparison of the request number.

use std::ffi::{c_int, c_ulong, c_void};
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use gpuslice_agent_protocol::{DriverMode, View};
use gpuslice_config::SmiIoctl;

/// `_IOWR('F', NV_ESC_RM_CONTROL, NVOS54_PARAMETERS)`: type `F`, number 0x2a, 32 bytes.
pub const NV_RM_CONTROL_REQUEST: c_ulong = 0xc020_462a;
/// `NV2080_CTRL_CMD_GPU_GET_PIDS`.
pub const CMD_GET_PIDS: u32 = 0x2080_018d;
/// `NV2080_CTRL_CMD_GPU_GET_PID_INFO`.
pub const CMD_GET_PID_INFO: u32 = 0x2080_018e;
/// Size of `NV2080_CTRL_GPU_GET_PIDS_PARAMS`: idType, id, pidTblCount, pidTbl[950].
pub const GET_PIDS_SIZE: usize = 12 + 4 * GET_PIDS_MAX;
/// Entries of `pidTbl`.
pub const GET_PIDS_MAX: usize = 950;
/// Entries of `NV2080_CTRL_GPU_GET_PID_INFO_PARAMS.pidInfoList`, after an 8-byte head
/// (the count, padded). An entry starts with the PID; its size has grown across driver
/// branches (40, 48, 72 bytes), so it is worked out from the parameters' size.
pub const PID_INFO_MAX: usize = 200;

/// The head of every `NV_ESC_RM_CONTROL` ioctl (`NVOS54_PARAMETERS`).
#[repr(C)]
pub struct RmControl {
    pub h_client: u32,
    pub h_object: u32,
    pub cmd: u32,
    pub flags: u32,
    pub params: u64,
    pub params_size: u32,
    pub status: u32,
}

/// What the rewriting does, decided once per process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    /// Nothing: the driver translates, or nobody can tell us how.
    Off,
    /// Cut and translate `GET_PIDS`; translate `GET_PID_INFO`.
    HostPids,
    /// Translate `GET_PID_INFO` only.
    InfoOnly,
}

const UNDECIDED: u8 = 0;
static DECIDED: AtomicU8 = AtomicU8::new(UNDECIDED);

fn encode(r: Rewrite) -> u8 {
    match r {
        Rewrite::Off => 1,
        Rewrite::HostPids => 2,
        Rewrite::InfoOnly => 3,
    }
}

fn decode(v: u8) -> Option<Rewrite> {
    match v {
        1 => Some(Rewrite::Off),
        2 => Some(Rewrite::HostPids),
        3 => Some(Rewrite::InfoOnly),
        _ => None,
    }
}

/// The rewriting a driver mode needs.
pub fn rewrite_for(mode: DriverMode) -> Rewrite {
    match mode {
        DriverMode::HostPids => Rewrite::HostPids,
        DriverMode::TranslatedBrokenMemory => Rewrite::InfoOnly,
        DriverMode::Translated | DriverMode::Unknown => Rewrite::Off,
    }
}

/// `GPUSLICE_SMI_IOCTL` as the process's configuration read it: `None` for automatic
/// (unset). A value it does not know makes the whole configuration fail closed (named
/// on stderr); the rewriting is then left off.
fn forced() -> Option<Rewrite> {
    match crate::process::configured_smi_ioctl() {
        Ok(None) => None,
        Ok(Some(SmiIoctl::Off)) | Err(_) => Some(Rewrite::Off),
        Ok(Some(SmiIoctl::HostPids)) => Some(Rewrite::HostPids),
        Ok(Some(SmiIoctl::TranslatedBrokenMemory)) => Some(Rewrite::InfoOnly),
    }
}

/// The rewriting for this process and the agent's current view, if there is one to do.
fn current() -> Option<(Rewrite, std::sync::Arc<View>)> {
    let decided = decode(DECIDED.load(Relaxed));
    if decided == Some(Rewrite::Off) {
        return None;
    }
    crate::agent_client::socket()?;
    let view = crate::agent_client::view()?;
    let rewrite = match decided {
        Some(r) => r,
        None => {
            let r = forced().unwrap_or_else(|| rewrite_for(view.mode));
            // The agent's mode is known only once it answered: remember it for good.
            DECIDED.store(encode(r), Relaxed);
            r
        }
    };
    (rewrite != Rewrite::Off).then_some((rewrite, view))
}

/// Cuts a `GET_PIDS` answer (`params`, host PIDs) down to the processes `view` maps and
/// puts their PIDs in the caller's namespace in their place. Returns the new count.
pub fn rewrite_pids(params: &mut [u8], view: &View) -> Option<usize> {
    if params.len() < GET_PIDS_SIZE {
        return None;
    }
    let count = (read_u32(params, 8)? as usize).min(GET_PIDS_MAX);
    let mut kept = 0usize;
    for i in 0..count {
        let host = read_u32(params, 12 + 4 * i)?;
        if let Some(own) = view.pid_from_host(host) {
            write_u32(params, 12 + 4 * kept, own)?;
            kept += 1;
        }
    }
    for i in kept..count {
        write_u32(params, 12 + 4 * i, 0)?;
    }
    write_u32(params, 8, u32::try_from(kept).ok()?)?;
    Some(kept)
}

/// The entry size of a `GET_PID_INFO` parameter block of `size` bytes, if it is one.
pub fn pid_info_entry_size(size: usize) -> Option<usize> {
    let list = size.checked_sub(8)?;
    (list % PID_INFO_MAX == 0 && list / PID_INFO_MAX >= 16).then_some(list / PID_INFO_MAX)
}

/// Puts the host PID of each requested PID of the caller's namespace into a
/// `GET_PID_INFO` request (0 for a PID that is not the container's). Returns the PIDs
/// it replaced, to be put back by [`restore_pid_info`].
pub fn translate_pid_info(params: &mut [u8], view: &View) -> Option<Vec<u32>> {
    let entry = pid_info_entry_size(params.len())?;
    let count = (read_u32(params, 0)? as usize).min(PID_INFO_MAX);
    let mut original = Vec::with_capacity(count);
    for i in 0..count {
        let at = 8 + i * entry;
        let own = read_u32(params, at)?;
        original.push(own);
        write_u32(params, at, view.host_pid_of(own).unwrap_or(0))?;
    }
    Some(original)
}

/// Puts the caller's PIDs back into a `GET_PID_INFO` answer.
pub fn restore_pid_info(params: &mut [u8], original: &[u32]) {
    let Some(entry) = pid_info_entry_size(params.len()) else {
        return;
    };
    for (i, &pid) in original.iter().enumerate() {
        let _ = write_u32(params, 8 + i * entry, pid);
    }
}

fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(bytes.try_into().ok()?))
}

fn write_u32(buf: &mut [u8], at: usize, value: u32) -> Option<()> {
    buf.get_mut(at..at.checked_add(4)?)?
        .copy_from_slice(&value.to_ne_bytes());
    Some(())
}

fn raw_ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    // SAFETY: the ioctl system call with the caller's own arguments, exactly as libc's
    // `ioctl` would make it; the kernel checks them.
    let rc = unsafe { libc::syscall(libc::SYS_ioctl, fd, request, arg) };
    ioctl_result(rc)
}

/// The system call's answer as `ioctl` gives it.
#[expect(
    clippy::cast_possible_truncation,
    reason = "ioctl answers an int: libc's own ioctl narrows the system call's long the same way"
)]
fn ioctl_result(rc: std::ffi::c_long) -> c_int {
    rc as c_int
}

/// libc's `ioctl`, interposed. Declared with one pointer argument after the request:
/// on the Linux ABIs this runs on, a variadic call passes it where a fixed one does, and
/// every ioctl takes at most one.
///
/// # Safety
///
/// As `ioctl(2)`: `arg` is what the request expects.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    // The kernel reads the request as 32 bits; a caller may leave the upper half unset.
    if request & 0xffff_ffff != NV_RM_CONTROL_REQUEST || arg.is_null() {
        return raw_ioctl(fd, request, arg);
    }
    // SAFETY: the request says `arg` is an NVOS54_PARAMETERS the caller owns; it is read
    // without assuming its alignment.
    let head = unsafe { std::ptr::read_unaligned(arg as *const RmControl) };
    let (cmd, size) = (head.cmd, head.params_size as usize);
    // The parameters' address as a pointer-sized number (0 where it does not fit one).
    let params = usize::try_from(head.params).unwrap_or(0);
    if (cmd != CMD_GET_PIDS && cmd != CMD_GET_PID_INFO) || params == 0 || size > 1 << 16 {
        return raw_ioctl(fd, request, arg);
    }
    let Some((rewrite, view)) = current() else {
        return raw_ioctl(fd, request, arg);
    };
    // SAFETY: the caller hands the driver `size` bytes at `params` for this control, to
    // read and write; this function touches no more and keeps no reference past the call.
    let buf = unsafe { std::slice::from_raw_parts_mut(params as *mut u8, size) };
    match cmd {
        CMD_GET_PIDS => {
            let rc = raw_ioctl(fd, request, arg);
            // SAFETY: `arg` is the caller's NVOS54_PARAMETERS (checked by the request
            // number above), still valid after the call; the driver has written its
            // status into it; read without assuming alignment.
            let status = unsafe { std::ptr::read_unaligned(arg as *const RmControl) }.status;
            if rc == 0 && status == 0 && rewrite == Rewrite::HostPids {
                let _ = rewrite_pids(buf, &view);
            }
            rc
        }
        _ => {
            let original = translate_pid_info(buf, &view);
            let rc = raw_ioctl(fd, request, arg);
            if let Some(original) = original {
                restore_pid_info(buf, &original);
            }
            rc
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_agent_protocol::SampleNumbering;

    fn view() -> View {
        View {
            mode: DriverMode::HostPids,
            own_samples: SampleNumbering::Unknown,
            gpus: vec![],
            pids: vec![(1, 4242), (7, 4300)],
        }
    }

    #[test]
    fn the_request_number_is_nv_esc_rm_control() {
        // _IOC(READ|WRITE, 'F', 0x2a, 32)
        let request = (3u64 << 30) | (32 << 16) | ((b'F' as u64) << 8) | 0x2a;
        assert_eq!(request as c_ulong, NV_RM_CONTROL_REQUEST);
        assert_eq!(std::mem::size_of::<RmControl>(), 32);
        assert_eq!(GET_PIDS_SIZE, 0xee4);
    }

    #[test]
    fn a_host_pid_list_is_cut_to_the_container_and_translated() {
        let mut p = vec![0u8; GET_PIDS_SIZE];
        let host = [100u32, 4300, 555, 4242];
        write_u32(&mut p, 8, u32::try_from(host.len()).unwrap()).unwrap();
        for (i, pid) in host.iter().enumerate() {
            write_u32(&mut p, 12 + 4 * i, *pid).unwrap();
        }
        assert_eq!(rewrite_pids(&mut p, &view()), Some(2));
        assert_eq!(read_u32(&p, 8), Some(2));
        assert_eq!((read_u32(&p, 12), read_u32(&p, 16)), (Some(7), Some(1)));
        // What was dropped is wiped.
        assert_eq!((read_u32(&p, 20), read_u32(&p, 24)), (Some(0), Some(0)));
        // A short or lying block is left alone or clamped.
        assert_eq!(rewrite_pids(&mut [0u8; 64], &view()), None);
        write_u32(&mut p, 8, u32::MAX).unwrap();
        assert!(rewrite_pids(&mut p, &view()).is_some());
    }

    #[test]
    fn pid_info_requests_carry_host_pids_to_the_driver_and_container_pids_back() {
        for entry in [40usize, 48, 72] {
            let size = 8 + PID_INFO_MAX * entry;
            assert_eq!(pid_info_entry_size(size), Some(entry));
            let mut p = vec![0u8; size];
            write_u32(&mut p, 0, 3).unwrap();
            for (i, pid) in [1u32, 99, 7].iter().enumerate() {
                write_u32(&mut p, 8 + i * entry, *pid).unwrap();
                write_u32(&mut p, 8 + i * entry + 4, 0).unwrap();
            }
            let original = translate_pid_info(&mut p, &view()).unwrap();
            assert_eq!(original, [1, 99, 7]);
            let sent: Vec<u32> = (0..3)
                .map(|i| read_u32(&p, 8 + i * entry).unwrap())
                .collect();
            assert_eq!(
                sent,
                [4242, 0, 4300],
                "entry {entry}: 99 is not the container's"
            );
            restore_pid_info(&mut p, &original);
            let back: Vec<u32> = (0..3)
                .map(|i| read_u32(&p, 8 + i * entry).unwrap())
                .collect();
            assert_eq!(back, [1, 99, 7]);
        }
        assert_eq!(pid_info_entry_size(0xee4), None);
        assert_eq!(pid_info_entry_size(4), None);
    }

    #[test]
    fn only_drivers_that_need_it_are_rewritten() {
        assert_eq!(rewrite_for(DriverMode::HostPids), Rewrite::HostPids);
        assert_eq!(
            rewrite_for(DriverMode::TranslatedBrokenMemory),
            Rewrite::InfoOnly
        );
        assert_eq!(rewrite_for(DriverMode::Translated), Rewrite::Off);
        assert_eq!(rewrite_for(DriverMode::Unknown), Rewrite::Off);
        for r in [Rewrite::Off, Rewrite::HostPids, Rewrite::InfoOnly] {
            assert_eq!(decode(encode(r)), Some(r));
        }
    }
}
