//! How the simulated driver shows a process to its caller, per driver branch
//! (`FAKE_NVML_PID_MODE`, see docs/driver-facts.md §1):
//!
//! | mode | process lists | per-process memory | utilization samples |
//! |---|---|---|---|
//! | `native`, `host-pids` | every process, host PIDs | right | host PIDs |
//! | `translated-broken-memory` | the caller's namespace only, its PIDs | not available (or 0) | host PIDs |
//! | `translated` | the caller's namespace only, its PIDs | right | the caller's own translated, foreign ones host PIDs |
//!
//! Accounting PIDs and encoder/FBC sessions are host PIDs, unfiltered, in every mode. A
//! caller in the initial PID namespace sees every process under its host PID with its
//! memory in every mode, as on a real host.
//!
//! The fake reads the host's `/proc`: the caller's namespace from `/proc/self/ns/pid`, its
//! depth from the `NSpid:` line of `/proc/self/status`, and each process's namespace and
//! `NSpid:` from `/proc/<host pid>`. This is why tests must not use `--mount-proc`.
//! Processes in namespaces nested below the caller's are not modelled (they are hidden).

use std::os::unix::fs::MetadataExt;

use crate::nvml::PidMode;

/// The calling process's place among PID namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Inode of its PID namespace (`None`: unknown).
    pub ns: Option<u64>,
    /// Depth of its namespace: 0 for the initial one.
    pub level: usize,
}

impl Caller {
    /// The calling process.
    pub fn current() -> Self {
        let ns = std::fs::metadata("/proc/self/ns/pid").ok().map(|m| m.ino());
        let level = ns_pids("self").map_or(0, |p| p.len().saturating_sub(1));
        Self { ns, level }
    }

    /// Whether it is in the initial PID namespace (it sees every process).
    pub fn is_root(&self) -> bool {
        self.level == 0
    }
}

/// The `NSpid:` line of `/proc/<pid>/status`: the PID in each namespace from the `/proc`
/// mount's down to the process's own.
pub fn ns_pids(pid: &str) -> Option<Vec<u32>> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    gpuslice_config::proc_status::parse_ns_pids(&status)
}

/// Inode of the PID namespace of host PID `pid`.
pub fn ns_of(pid: u32) -> Option<u64> {
    std::fs::metadata(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(|m| m.ino())
}

/// The PID of host process `host_pid` in the caller's namespace, if it lives there.
pub fn own_pid(caller: &Caller, host_pid: u32) -> Option<u32> {
    if caller.is_root() {
        return Some(host_pid);
    }
    if caller.ns.is_none() || ns_of(host_pid) != caller.ns {
        return None;
    }
    ns_pids(&host_pid.to_string())?.get(caller.level).copied()
}

/// The PID under which a process list shows host process `host_pid`, or `None` when the
/// driver hides it from the caller.
pub fn listed_pid(mode: PidMode, caller: &Caller, host_pid: u32) -> Option<u32> {
    match mode {
        PidMode::Native | PidMode::HostPids => Some(host_pid),
        PidMode::TranslatedBrokenMemory | PidMode::Translated => own_pid(caller, host_pid),
    }
}

/// The `usedGpuMemory` a process list shows for a process that really uses `bytes`.
pub fn listed_memory(mode: PidMode, caller: &Caller, bytes: u64, broken_zero: bool) -> u64 {
    match mode {
        PidMode::TranslatedBrokenMemory if !caller.is_root() => {
            if broken_zero {
                0
            } else {
                u64::MAX
            }
        }
        _ => bytes,
    }
}

/// The PID under which a utilization sample of host process `host_pid` is reported.
pub fn sample_pid(mode: PidMode, caller: &Caller, host_pid: u32) -> u32 {
    match mode {
        PidMode::Translated => own_pid(caller, host_pid).unwrap_or(host_pid),
        _ => host_pid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outside_namespaces_everything_is_the_host_pid() {
        let me = Caller::current();
        let pid = std::process::id();
        // The test harness may itself run in a container; its /proc is then its own.
        if me.is_root() {
            for mode in [
                PidMode::Native,
                PidMode::HostPids,
                PidMode::TranslatedBrokenMemory,
                PidMode::Translated,
            ] {
                assert_eq!(listed_pid(mode, &me, pid), Some(pid));
                assert_eq!(listed_memory(mode, &me, 7, false), 7);
                assert_eq!(sample_pid(mode, &me, pid), pid);
            }
        }
        let nested = Caller {
            ns: Some(1),
            level: 1,
        };
        assert_eq!(listed_pid(PidMode::Translated, &nested, pid), None);
        assert_eq!(
            listed_memory(PidMode::TranslatedBrokenMemory, &nested, 7, false),
            u64::MAX
        );
        assert_eq!(
            listed_memory(PidMode::TranslatedBrokenMemory, &nested, 7, true),
            0
        );
        assert_eq!(listed_memory(PidMode::Translated, &nested, 7, true), 7);
        assert_eq!(sample_pid(PidMode::Translated, &nested, pid), pid);
        assert_eq!(listed_pid(PidMode::HostPids, &nested, pid), Some(pid));
        assert!(ns_pids("self").is_some_and(|p| !p.is_empty()));
        assert!(PidMode::parse("sideways").is_none());
        assert_eq!(PidMode::parse(""), Some(PidMode::Native));
    }
}
