//! The kernel driver's two process-list RM controls, for testing the interposer's ioctl
//! rewriting without a GPU. A real NVML (and nvidia-smi's process table) asks the kernel
//! driver with `NV_ESC_RM_CONTROL` ioctls on `/dev/nvidiactl`:
//! `NV2080_CTRL_CMD_GPU_GET_PIDS`, then `NV2080_CTRL_CMD_GPU_GET_PID_INFO` with those PIDs.
//! The fake has no kernel driver, so the test hook [`fakeNvmlSmiTable`] installs, in the
//! calling process only, a seccomp filter that traps exactly that ioctl request, answers
//! it from a `SIGSYS` handler the way each driver branch does (`FAKE_NVML_PID_MODE`), and
//! then issues the two ioctls through libc's `ioctl`, where an `LD_PRELOAD`ed interposer
//! sits, and builds the table nvidia-smi would show.
//!
//! | mode | `GET_PIDS` answers | `GET_PID_INFO` looks PIDs up as |
//! |---|---|---|
//! | `native`, `host-pids` | every process, host PIDs | host PIDs |
//! | `translated-broken-memory` | the caller's namespace, its PIDs | host PIDs (so the memory of a translated PID is "not found") |
//! | `translated` | the caller's namespace, its PIDs | the caller's PIDs |
//!
//! x86-64 only (the trap reads the system call's registers).

use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

use crate::nvml::{PidMode, machine};
use crate::view::{Caller, listed_pid, own_pid};

/// `_IOWR('F', NV_ESC_RM_CONTROL, NVOS54_PARAMETERS)`.
const RM_CONTROL: u64 = 0xc020_462a;
const GET_PIDS: u32 = 0x2080_018d;
const GET_PID_INFO: u32 = 0x2080_018e;
const GET_PIDS_MAX: usize = 950;
const PID_INFO_MAX: usize = 200;
/// What the driver puts in an entry it cannot find (`NV_ERR_OBJECT_NOT_FOUND`).
const NOT_FOUND: u32 = 0x57;
/// The size of a `GET_PID_INFO` entry this fake sends (the 580 layout).
const PID_INFO_ENTRY: usize = 72;

const SLOTS: usize = 64;
/// `GET_PIDS`'s answer.
static LISTED: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static LISTED_COUNT: AtomicUsize = AtomicUsize::new(0);
/// `GET_PID_INFO`'s: the PID it is looked up by, and the memory.
static INFO_KEY: [AtomicU32; SLOTS] = [const { AtomicU32::new(0) }; SLOTS];
static INFO_BYTES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static INFO_COUNT: AtomicUsize = AtomicUsize::new(0);
/// How many trapped controls were answered.
static ANSWERED: AtomicUsize = AtomicUsize::new(0);

#[repr(C)]
struct RmControl {
    h_client: u32,
    h_object: u32,
    cmd: u32,
    flags: u32,
    params: u64,
    params_size: u32,
    status: u32,
}

/// Works out the driver's answers for device `index` and the calling process.
fn prepare(index: usize) -> Result<(), String> {
    let m = machine().map_err(|rc| format!("NVML not initialised ({rc})"))?;
    let caller = Caller::current();
    let processes = m.state.lock().processes(index);
    let (mut listed, mut info) = (Vec::new(), Vec::new());
    for p in &processes {
        if let Some(pid) = listed_pid(m.pid_mode, &caller, p.pid) {
            listed.push(pid);
        }
        let key = match m.pid_mode {
            PidMode::Translated => own_pid(&caller, p.pid),
            _ => Some(p.pid),
        };
        if let Some(key) = key {
            info.push((key, p.total()));
        }
    }
    if listed.len() > SLOTS || info.len() > SLOTS {
        return Err("too many processes for the fake driver".into());
    }
    for (slot, pid) in LISTED.iter().zip(&listed) {
        slot.store(*pid, Relaxed);
    }
    LISTED_COUNT.store(listed.len(), Relaxed);
    for ((k, b), (pid, bytes)) in INFO_KEY.iter().zip(&INFO_BYTES).zip(&info) {
        k.store(*pid, Relaxed);
        b.store(*bytes, Relaxed);
    }
    INFO_COUNT.store(info.len(), Relaxed);
    Ok(())
}

/// Answers one trapped control in place. Only atomics and the caller's buffer: it runs
/// in a signal handler.
///
/// # Safety
/// `control` points to an `NVOS54_PARAMETERS` whose `params` holds `params_size` bytes.
unsafe fn answer(control: *mut RmControl) -> i64 {
    // SAFETY: by the contract.
    let c = unsafe { &mut *control };
    // An address beyond usize (none on a 64-bit host) reads as null: EFAULT.
    let params = usize::try_from(c.params).unwrap_or(0) as *mut u8;
    if params.is_null() {
        return -i64::from(libc::EFAULT);
    }
    let put = |at: usize, v: u32| {
        // SAFETY: `at + 4` is within `params_size`, checked by each caller below.
        unsafe { params.add(at).cast::<u32>().write_unaligned(v) }
    };
    let get = |at: usize| {
        // SAFETY: `at + 4` is within `params_size`, checked by each caller below; read
        // without assuming alignment.
        unsafe { params.add(at).cast::<u32>().read_unaligned() }
    };
    match c.cmd {
        GET_PIDS if c.params_size as usize >= 12 + 4 * GET_PIDS_MAX => {
            let n = LISTED_COUNT.load(Relaxed);
            // n <= GET_PIDS_MAX, so this never saturates.
            put(8, u32::try_from(n).unwrap_or(u32::MAX));
            for (i, slot) in LISTED.iter().take(n).enumerate() {
                put(12 + 4 * i, slot.load(Relaxed));
            }
        }
        GET_PID_INFO if c.params_size as usize == 8 + PID_INFO_MAX * PID_INFO_ENTRY => {
            let n = (get(0) as usize).min(PID_INFO_MAX);
            let known = INFO_COUNT.load(Relaxed);
            for i in 0..n {
                let at = 8 + i * PID_INFO_ENTRY;
                let pid = get(at);
                let found = (0..known).find(|&k| INFO_KEY[k].load(Relaxed) == pid);
                let bytes = found.map_or(0, |k| INFO_BYTES[k].load(Relaxed));
                put(at + 8, if found.is_some() { 0 } else { NOT_FOUND });
                // SAFETY: the entry's memPrivate field, within the entry.
                unsafe { params.add(at + 16).cast::<u64>().write_unaligned(bytes) };
            }
        }
        _ => return -i64::from(libc::EINVAL),
    }
    c.status = 0;
    ANSWERED.fetch_add(1, Relaxed);
    0
}

#[cfg(target_arch = "x86_64")]
extern "C" fn on_sigsys(_sig: c_int, _info: *mut libc::siginfo_t, context: *mut c_void) {
    let context = context.cast::<libc::ucontext_t>();
    // SAFETY: the kernel passes the interrupted context; the trapped system call's third
    // argument (rdx) is the ioctl's argument, and rax takes its result.
    unsafe {
        let regs = &mut (*context).uc_mcontext.gregs;
        // The register holds the pointer's bits.
        let arg = regs[libc::REG_RDX as usize] as *mut RmControl;
        regs[libc::REG_RAX as usize] = if arg.is_null() {
            -i64::from(libc::EFAULT)
        } else {
            answer(arg)
        };
    }
}

/// A BPF instruction's code, as `sock_filter` holds it. Only called in `const` blocks,
/// so the assert is checked when the crate compiles.
#[cfg(target_arch = "x86_64")]
#[expect(
    clippy::cast_possible_truncation,
    reason = "the assert fails the compile unless the code fits 16 bits"
)]
const fn bpf_code(code: u32) -> u16 {
    assert!(code <= u16::MAX as u32, "a BPF code fits 16 bits");
    code as u16
}

/// Traps `ioctl(.., RM_CONTROL, ..)` in this process (seccomp) and answers it from
/// [`on_sigsys`].
#[cfg(target_arch = "x86_64")]
fn install_trap() -> Result<(), String> {
    const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
    let load = |offset: u32| libc::sock_filter {
        code: const { bpf_code(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) },
        jt: 0,
        jf: 0,
        k: offset,
    };
    let jump_eq = |value: u32, jt: u8, jf: u8| libc::sock_filter {
        code: const { bpf_code(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) },
        jt,
        jf,
        k: value,
    };
    let ret = |value: u32| libc::sock_filter {
        code: const { bpf_code(libc::BPF_RET | libc::BPF_K) },
        jt: 0,
        jf: 0,
        k: value,
    };
    let ioctl_nr = u32::try_from(libc::SYS_ioctl).map_err(|e| format!("SYS_ioctl: {e}"))?;
    let request = u32::try_from(RM_CONTROL).map_err(|e| format!("RM_CONTROL: {e}"))?;
    // seccomp_data: nr @0, arch @4, instruction pointer @8, args @16 (8 bytes each; the
    // low half of args[1], the request, @24 on a little-endian machine).
    let program = [
        load(4),
        jump_eq(AUDIT_ARCH_X86_64, 0, 5),
        load(0),
        jump_eq(ioctl_nr, 0, 3),
        load(24),
        jump_eq(request, 0, 1),
        ret(libc::SECCOMP_RET_TRAP),
        ret(libc::SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|e| format!("seccomp program length: {e}"))?,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: a zeroed sigaction with our handler and SA_SIGINFO, then the documented
    // prctl calls with a filter program that lives through them.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(format!("seccomp: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

#[cfg(not(target_arch = "x86_64"))]
fn install_trap() -> Result<(), String> {
    Err("the fake driver's RM controls need x86-64".into())
}

/// What nvidia-smi's table would show for device `index`: `GET_PIDS`, then
/// `GET_PID_INFO` for those PIDs, both through libc's `ioctl`.
fn table(index: usize) -> Result<String, String> {
    prepare(index)?;
    static TRAPPED: std::sync::Once = std::sync::Once::new();
    let mut installed = Ok(());
    TRAPPED.call_once(|| installed = install_trap());
    installed?;
    let fd = std::fs::File::open("/dev/null").map_err(|e| e.to_string())?;
    use std::os::fd::AsRawFd;
    let mut pids = vec![0u8; 12 + 4 * GET_PIDS_MAX];
    let mut control = RmControl {
        h_client: 1,
        h_object: 2,
        cmd: GET_PIDS,
        flags: 0,
        params: pids.as_mut_ptr() as u64,
        params_size: u32::try_from(pids.len()).map_err(|e| e.to_string())?,
        status: u32::MAX,
    };
    // SAFETY: the request's argument is the control block, whose buffer lives on.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), RM_CONTROL as _, &mut control) };
    if rc != 0 || control.status != 0 {
        return Err(format!("GET_PIDS rc={rc} status={}", control.status));
    }
    let word = |buf: &[u8], at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
    let n = (word(&pids, 8) as usize).min(PID_INFO_MAX);
    let listed: Vec<u32> = (0..n).map(|i| word(&pids, 12 + 4 * i)).collect();
    let mut info = vec![0u8; 8 + PID_INFO_MAX * PID_INFO_ENTRY];
    info[0..4].copy_from_slice(&u32::try_from(n).map_err(|e| e.to_string())?.to_ne_bytes());
    for (i, pid) in listed.iter().enumerate() {
        let at = 8 + i * PID_INFO_ENTRY;
        info[at..at + 4].copy_from_slice(&pid.to_ne_bytes());
    }
    let mut control = RmControl {
        cmd: GET_PID_INFO,
        params: info.as_mut_ptr() as u64,
        params_size: u32::try_from(info.len()).map_err(|e| e.to_string())?,
        status: u32::MAX,
        ..control
    };
    // SAFETY: `control` is a live NVOS54_PARAMETERS whose `params` points to `info`,
    // `params_size` bytes long, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), RM_CONTROL as _, &mut control) };
    if rc != 0 || control.status != 0 {
        return Err(format!("GET_PID_INFO rc={rc} status={}", control.status));
    }
    let mut rows: Vec<(u32, String)> = (0..n)
        .map(|i| {
            let at = 8 + i * PID_INFO_ENTRY;
            let memory = if word(&info, at + 8) == 0 {
                u64::from_ne_bytes(info[at + 16..at + 24].try_into().unwrap()).to_string()
            } else {
                "na".to_string()
            };
            (word(&info, at), memory)
        })
        .collect();
    rows.sort();
    let list: Vec<String> = rows.iter().map(|(p, m)| format!("{p}:{m}")).collect();
    Ok(format!(
        "answered={} list={}",
        ANSWERED.load(Relaxed),
        list.join(",")
    ))
}

/// Test hook: writes what nvidia-smi's process table would show for device `index` into
/// `out` (NUL-terminated, at most `len` bytes), as `answered=N list=PID:BYTES,...`
/// (`na` where the driver did not find a PID). Returns 0, or -1 with the reason in `out`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn fakeNvmlSmiTable(index: c_int, out: *mut c_char, len: usize) -> c_int {
    let (rc, text) = match table(usize::try_from(index).unwrap_or(usize::MAX)) {
        Ok(t) => (0, t),
        Err(e) => (-1, e),
    };
    if !out.is_null() && len > 0 {
        let n = text.len().min(len - 1);
        // SAFETY: `out` holds `len` bytes by the contract; n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), out.cast::<u8>(), n);
            *out.add(n) = 0;
        }
    }
    rc
}
