//! The driver-behaviour probe: how does this driver show a process inside a PID namespace?
//! (docs/driver-facts.md §1: by host PID everywhere, translated with broken memory, or translated.)
//! It is decided by looking, never by the version string.
//!
//! As root, the agent forks a child that enters a new PID namespace (`unshare(CLONE_NEWPID)`
//! then `fork`: the grandchild is PID 1 there). The real driver's `cuInit` fails with
//! `CUDA_ERROR_OPERATING_SYSTEM` (304) when `/proc` is not the namespace's own (measured on
//! 580.159.04), while the fake driver needs the host's `/proc` to learn host PIDs; so the
//! probe first keeps the host's `/proc`, and on error 304 tries again in a private mount
//! namespace with a `/proc` of the new PID namespace (as `unshare --mount-proc` does). The
//! grandchild creates a CUDA context
//! (`dlopen("libcuda.so.1")`, `cuInit`, `cuDevicePrimaryCtxRetain`, `cuCtxSetCurrent`,
//! `cuMemAlloc` of 64 MiB, and `cuMemsetD8` for a second, where the driver has it, so that
//! it shows up in utilization samples), then asks NVML *inside* the namespace which
//! processes use the GPUs and which utilization samples exist. The child reports the
//! grandchild's host PID; the parent also asks NVML on the host. Then:
//!
//! * the grandchild listed under its **host** PID inside: [`DriverMode::HostPids`];
//! * listed under its **namespace** PID with memory: [`DriverMode::Translated`];
//! * listed under its namespace PID with memory 0 or not available:
//!   [`DriverMode::TranslatedBrokenMemory`];
//! * not listed: [`DriverMode::Unknown`].
//!
//! Its own utilization sample under the namespace PID means [`SampleNumbering::Translated`],
//! under the host PID [`SampleNumbering::HostPids`], none [`SampleNumbering::Unknown`].
//!
//! Call [`probe`] before the agent starts threads or loads NVML: the children are forks.

use std::ffi::{CStr, c_int, c_void};

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use gpuslice_agent_protocol::{DriverMode, SampleNumbering};
use gpuslice_cuda_abi::cuda::{
    CUDA_ERROR_OPERATING_SYSTEM, CuCtxSetCurrentFn, CuCtxSynchronizeFn, CuDeviceGetFn,
    CuDevicePrimaryCtxRetainFn, CuInitFn, CuMemAllocFn, CuMemsetD8Fn,
};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, fork, pipe};

use crate::host::NVML_LIBRARY;

/// How long the probe may take before it is abandoned.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes the probe process allocates.
const PROBE_BYTES: usize = 64 << 20;

/// What the probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeReport {
    /// The verdict for process lists and memory.
    pub mode: DriverMode,
    /// The verdict for the caller's own utilization samples.
    pub own_samples: SampleNumbering,
    /// The probe process's host PID.
    pub host_pid: u32,
    /// Its PID in its namespace.
    pub ns_pid: u32,
    /// What NVML listed inside the namespace: (pid, memory; `None` = not available).
    pub listed_inside: Vec<(u32, Option<u64>)>,
    /// The PIDs of the utilization samples NVML gave inside.
    pub sampled_inside: Vec<u32>,
    /// What NVML on the host said the probe process uses (`None`: not listed).
    pub host_memory: Option<Option<u64>>,
    /// Whether the probe process needed a `/proc` of its own namespace.
    pub private_proc: bool,
}

impl ProbeReport {
    /// One line for logs and `gpuslice agent --probe-only`.
    pub fn summary(&self) -> String {
        let listed: Vec<String> = self
            .listed_inside
            .iter()
            .map(|(p, m)| match m {
                Some(m) => format!("{p}:{m}"),
                None => format!("{p}:n/a"),
            })
            .collect();
        let host = match self.host_memory {
            Some(Some(m)) => format!("{m} bytes"),
            Some(None) => "n/a".into(),
            None => "not listed".into(),
        };
        format!(
            "driver mode {} (own utilization samples: {}); probe process host PID {} = namespace PID {} ({} /proc); listed inside: [{}]; samples inside: {:?}; host sees it using {}",
            self.mode,
            self.own_samples.as_str(),
            self.host_pid,
            self.ns_pid,
            if self.private_proc { "private" } else { "host" },
            listed.join(", "),
            self.sampled_inside,
            host
        )
    }
}

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A system call in the agent failed.
    #[error("driver probe: {what}: {source}")]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// The probe process reported a failure.
    #[error("driver probe: {0}")]
    Child(String),
    /// It took too long.
    #[error("driver probe: no answer within {0:?}")]
    Timeout(Duration),
    /// `cuInit` failed with `CUDA_ERROR_OPERATING_SYSTEM` under the host's `/proc`.
    #[error("driver probe: cuInit needs the namespace's own /proc")]
    NeedsPrivateProc,
}

/// Decides the driver's behaviour from what NVML showed inside the namespace.
pub fn classify(
    host_pid: u32,
    ns_pid: u32,
    listed_inside: &[(u32, Option<u64>)],
    sampled_inside: &[u32],
) -> (DriverMode, SampleNumbering) {
    let mode = if listed_inside.iter().any(|&(p, _)| p == host_pid) && host_pid != ns_pid {
        DriverMode::HostPids
    } else if let Some(&(_, mem)) = listed_inside.iter().find(|&&(p, _)| p == ns_pid) {
        match mem {
            Some(m) if m > 0 => DriverMode::Translated,
            _ => DriverMode::TranslatedBrokenMemory,
        }
    } else {
        DriverMode::Unknown
    };
    let samples = if sampled_inside.contains(&ns_pid) && host_pid != ns_pid {
        SampleNumbering::Translated
    } else if sampled_inside.contains(&host_pid) {
        SampleNumbering::HostPids
    } else {
        SampleNumbering::Unknown
    };
    (mode, samples)
}

/// Runs the probe (needs root: `unshare(CLONE_NEWPID)`): with the host's `/proc` first,
/// then with the namespace's own when the driver needs it.
pub fn probe() -> Result<ProbeReport, ProbeError> {
    let once = || match probe_once(false) {
        Err(ProbeError::NeedsPrivateProc) => probe_once(true),
        other => other,
    };
    // A probe process can die of something passing (a signal, a driver hiccup): the
    // agent would then run without knowing the driver's behaviour, so it tries again.
    match once() {
        Err(ProbeError::Child(first)) => once().map_err(|again| match again {
            ProbeError::Child(second) => {
                ProbeError::Child(format!("{second} (and before: {first})"))
            }
            other => other,
        }),
        other => other,
    }
}

fn probe_once(private_proc: bool) -> Result<ProbeReport, ProbeError> {
    let sys = |what| move |source| ProbeError::Sys { what, source };
    let (report_r, report_w) = pipe().map_err(sys("pipe"))?;
    let (control_r, control_w) = pipe().map_err(sys("pipe"))?;
    // SAFETY: called before the agent starts threads (see the module documentation);
    // the child only runs `namespace_child`, which forks again and exits.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(report_r);
            drop(control_w);
            namespace_child(report_w, control_r, private_proc)
        }
        ForkResult::Parent { child } => {
            drop(report_w);
            drop(control_r);
            let result = supervise(report_r, control_w, private_proc);
            if result.is_err() {
                let _ = kill(child, Signal::SIGKILL);
            }
            let _ = waitpid(child, None);
            result
        }
    }
}

/// In the parent: reads the children's report, checks the host's view while the probe
/// process still holds its context, then lets it go.
fn supervise(
    report: OwnedFd,
    control: OwnedFd,
    private_proc: bool,
) -> Result<ProbeReport, ProbeError> {
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(File::from(report)).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let mut host_pid = 0u32;
    let mut ns_pid = 0u32;
    let mut listed = Vec::new();
    let mut sampled = Vec::new();
    let mut ready = false;
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(l) => l,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Err(ProbeError::Timeout(PROBE_TIMEOUT));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(ProbeError::Child(
                    "the probe process exited without reporting".into(),
                ));
            }
        };
        let mut f = line.split(' ');
        let (kind, a, b) = (f.next(), f.next(), f.next());
        match (kind, a) {
            (Some("host"), Some(p)) => {
                host_pid = p.parse().unwrap_or(0);
                if ready {
                    break Ok(());
                }
            }
            (Some("own"), Some(p)) => ns_pid = p.parse().unwrap_or(0),
            (Some("proc"), Some(p)) => {
                if let Ok(p) = p.parse() {
                    listed.push((p, b.and_then(|m| m.parse().ok())));
                }
            }
            (Some("sample"), Some(p)) => {
                if let Ok(p) = p.parse() {
                    sampled.push(p);
                }
            }
            (Some("exit"), _) => {
                break Err(ProbeError::Child(format!(
                    "the probe process ended before it reported: {}",
                    line.trim_start_matches("exit ")
                )));
            }
            (Some("error-needs-proc"), _) => break Err(ProbeError::NeedsPrivateProc),
            (Some("error"), _) => {
                break Err(ProbeError::Child(
                    line.trim_start_matches("error ").to_string(),
                ));
            }
            (Some("ready"), _) => {
                ready = true;
                if host_pid != 0 {
                    break Ok(());
                }
            }
            _ => {}
        }
    };
    let host_memory = if result.is_ok() && host_pid != 0 {
        host_view(host_pid)
    } else {
        None
    };
    let mut control = File::from(control);
    let _ = control.write_all(b"done\n");
    drop(control);
    if result.is_err() && host_pid != 0 {
        let _ = kill(Pid::from_raw(host_pid as i32), Signal::SIGKILL);
    }
    result?;
    if host_pid == 0 || ns_pid == 0 {
        return Err(ProbeError::Child(
            "the probe process did not report its PIDs".into(),
        ));
    }
    let (mode, own_samples) = classify(host_pid, ns_pid, &listed, &sampled);
    Ok(ProbeReport {
        mode,
        own_samples,
        host_pid,
        ns_pid,
        listed_inside: listed,
        sampled_inside: sampled,
        host_memory,
        private_proc,
    })
}

/// What NVML on the host says process `pid` uses on any GPU.
fn host_view(pid: u32) -> Option<Option<u64>> {
    let nvml = nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new(NVML_LIBRARY))
        .init()
        .ok()?;
    for i in 0..nvml.device_count().ok()? {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        for p in dev.running_compute_processes().unwrap_or_default() {
            if p.pid == pid {
                return Some(match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(n) => Some(n),
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                });
            }
        }
    }
    None
}

/// In the forked child (host namespace): enter a new PID namespace for its children, start
/// the probe process there, report its host PID and wait for it. Never returns.
fn namespace_child(report: OwnedFd, control: OwnedFd, private_proc: bool) -> ! {
    let mut out = File::from(report);
    let flags = if private_proc {
        CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS
    } else {
        CloneFlags::CLONE_NEWPID
    };
    if let Err(e) = unshare(flags) {
        report_line(
            &mut out,
            format!("error unshare({flags:?}) failed: {e} (the probe needs root)"),
        );
        exit_now(1);
    }
    // SAFETY: this process is a single-threaded fork; the grandchild runs
    // `in_namespace` and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => in_namespace(out, control, private_proc),
        Ok(ForkResult::Parent { child }) => {
            drop(control);
            report_line(&mut out, format!("host {child}"));
            // How the probe process ended, for the report of a probe that died before
            // it said anything (the parent has stopped reading once it has its answer).
            let status = waitpid(child, None);
            report_line(&mut out, format!("exit {status:?}"));
            exit_now(0)
        }
        Err(e) => {
            report_line(&mut out, format!("error fork in the new namespace: {e}"));
            exit_now(1)
        }
    }
}

/// Writes one line of the report in a single `write`: the probe process and its parent
/// write into the same pipe at the same time, and a line written piece by piece (as
/// `writeln!` on a `File` does) could interleave with the other's and garble both.
fn report_line(out: &mut File, mut line: String) {
    line.push('\n');
    let _ = out.write_all(line.as_bytes());
}

fn exit_now(code: c_int) -> ! {
    // SAFETY: _exit ends this forked process at once, without running the parent's exit
    // handlers a second time.
    unsafe { libc::_exit(code) }
}

fn symbol(lib: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    // SAFETY: `lib` is a dlopen handle and `name` a NUL-terminated string.
    let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// In the probe process's private mount namespace: stop mounts from propagating to the
/// host, and mount a `/proc` of the new PID namespace.
fn mount_private_proc() -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making mounts private failed: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc failed: {e}"))
}

/// Creates a CUDA context with some memory and activity. The error is the CUDA code (if
/// a call failed) and a line for the report.
fn hold_gpu() -> Result<(), (c_int, String)> {
    // SAFETY: dlopen with a valid name.
    let lib = unsafe { libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW) };
    if lib.is_null() {
        return Err((0, "cannot load libcuda.so.1".into()));
    }
    let need = |name: &CStr| {
        symbol(lib, name)
            .ok_or_else(|| (0, format!("libcuda.so.1 has no {}", name.to_string_lossy())))
    };
    // SAFETY: each symbol below is the driver's function of that name, whose C signature
    // is the one named.
    let init: CuInitFn = unsafe { std::mem::transmute::<*mut c_void, CuInitFn>(need(c"cuInit")?) };
    // SAFETY: the driver's symbol of this name has the C signature
    // `cuDeviceGet(CUdevice*, int)`, which is CuDeviceGetFn.
    let get: CuDeviceGetFn =
        unsafe { std::mem::transmute::<*mut c_void, CuDeviceGetFn>(need(c"cuDeviceGet")?) };
    // SAFETY: the driver's symbol of this name has the C signature
    // `cuDevicePrimaryCtxRetain(CUcontext*, CUdevice)`, which is CuDevicePrimaryCtxRetainFn.
    let retain: CuDevicePrimaryCtxRetainFn = unsafe {
        std::mem::transmute::<*mut c_void, CuDevicePrimaryCtxRetainFn>(need(
            c"cuDevicePrimaryCtxRetain",
        )?)
    };
    // SAFETY: the driver's symbol of this name has the C signature
    // `cuCtxSetCurrent(CUcontext)`, which is CuCtxSetCurrentFn.
    let set: CuCtxSetCurrentFn =
        unsafe { std::mem::transmute::<*mut c_void, CuCtxSetCurrentFn>(need(c"cuCtxSetCurrent")?) };
    // SAFETY: the driver's symbol of this name has the C signature
    // `cuMemAlloc_v2(CUdeviceptr*, size_t)`, which is CuMemAllocFn.
    let alloc: CuMemAllocFn =
        unsafe { std::mem::transmute::<*mut c_void, CuMemAllocFn>(need(c"cuMemAlloc_v2")?) };
    let check = |what: &str, rc: c_int| {
        if rc == 0 {
            Ok(())
        } else {
            Err((rc, format!("{what} failed with CUDA error {rc}")))
        }
    };
    let mut dev: c_int = 0;
    let mut ctx: *mut c_void = std::ptr::null_mut();
    let mut ptr: u64 = 0;
    // SAFETY: plain driver calls with valid out-pointers.
    unsafe {
        check("cuInit", init(0))?;
        check("cuDeviceGet", get(&mut dev, 0))?;
        check("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev))?;
        check("cuCtxSetCurrent", set(ctx))?;
        check("cuMemAlloc", alloc(&mut ptr, PROBE_BYTES))?;
    }
    if let (Some(memset), Some(sync)) = (
        symbol(lib, c"cuMemsetD8_v2"),
        symbol(lib, c"cuCtxSynchronize"),
    ) {
        // SAFETY: the driver's symbol of this name has the C signature
        // `cuMemsetD8_v2(CUdeviceptr, unsigned char, size_t)`, which is CuMemsetD8Fn.
        let memset: CuMemsetD8Fn =
            unsafe { std::mem::transmute::<*mut c_void, CuMemsetD8Fn>(memset) };
        // SAFETY: the driver's symbol of this name has the C signature
        // `cuCtxSynchronize(void)`, which is CuCtxSynchronizeFn.
        let sync: CuCtxSynchronizeFn =
            unsafe { std::mem::transmute::<*mut c_void, CuCtxSynchronizeFn>(sync) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(1200) {
            for v in 0..8u8 {
                // SAFETY: `ptr` holds PROBE_BYTES bytes.
                if unsafe { memset(ptr, v, PROBE_BYTES) } != 0 {
                    break;
                }
            }
            // SAFETY: a context is current.
            unsafe { sync() };
        }
    }
    Ok(())
}

/// The probe process (PID 1 of a new namespace): hold the GPU, look at NVML from inside,
/// report, and wait to be released. Never returns.
fn in_namespace(mut out: File, control: OwnedFd, private_proc: bool) -> ! {
    report_line(&mut out, format!("own {}", std::process::id()));
    if private_proc && let Err(e) = mount_private_proc() {
        report_line(&mut out, format!("error {e}"));
        exit_now(1);
    }
    if let Err((code, e)) = hold_gpu() {
        if code == CUDA_ERROR_OPERATING_SYSTEM && !private_proc {
            report_line(&mut out, format!("error-needs-proc {e}"));
        } else {
            report_line(&mut out, format!("error {e}"));
        }
        exit_now(1);
    }
    let nvml = match nvml_wrapper::Nvml::builder()
        .lib_path(std::ffi::OsStr::new(NVML_LIBRARY))
        .init()
    {
        Ok(n) => n,
        Err(e) => {
            report_line(
                &mut out,
                format!("error cannot load {NVML_LIBRARY} in the namespace: {e}"),
            );
            exit_now(1);
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    for i in 0..count {
        let Ok(dev) = nvml.device_by_index(i) else {
            continue;
        };
        for p in dev.running_compute_processes().unwrap_or_default() {
            let mem = match p.used_gpu_memory {
                nvml_wrapper::enums::device::UsedGpuMemory::Used(n) => n.to_string(),
                nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => "na".into(),
            };
            report_line(&mut out, format!("proc {} {mem}", p.pid));
        }
        for s in dev.process_utilization_stats(None).unwrap_or_default() {
            report_line(&mut out, format!("sample {}", s.pid));
        }
    }
    report_line(&mut out, "ready".to_string());
    drop(out);
    // Hold the context until the parent has looked from the host side.
    let mut line = String::new();
    let _ = BufReader::new(File::from(control)).read_line(&mut line);
    exit_now(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let host = 4242;
        let ns = 1;
        assert_eq!(
            classify(host, ns, &[(17, Some(5)), (host, Some(9))], &[host, 17]),
            (DriverMode::HostPids, SampleNumbering::HostPids)
        );
        assert_eq!(
            classify(host, ns, &[(ns, None)], &[host]),
            (
                DriverMode::TranslatedBrokenMemory,
                SampleNumbering::HostPids
            )
        );
        assert_eq!(
            classify(host, ns, &[(ns, Some(0))], &[]),
            (DriverMode::TranslatedBrokenMemory, SampleNumbering::Unknown)
        );
        assert_eq!(
            classify(host, ns, &[(ns, Some(1 << 20))], &[ns, 77]),
            (DriverMode::Translated, SampleNumbering::Translated)
        );
        assert_eq!(
            classify(host, ns, &[(99, Some(1))], &[]),
            (DriverMode::Unknown, SampleNumbering::Unknown)
        );
        assert_eq!(
            classify(host, ns, &[], &[]),
            (DriverMode::Unknown, SampleNumbering::Unknown)
        );
    }
}
