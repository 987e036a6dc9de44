//! Who owns device memory, and whether it still lives. The real driver keys its process
//! table by the PID in the initial (host) PID namespace and frees a process's memory when
//! it dies, so the simulation records host PIDs and drops the entries of dead (or zombie)
//! processes.
//!
//! The host PID of a process in a PID namespace is read from `/proc/self`, which names it
//! as the `/proc` mount sees it: tests run their "containers" with `unshare --pid --fork`
//! *without* `--mount-proc`, so `/proc` stays the host's and `/proc/self` is the host PID.
//! Liveness is judged through the same `/proc`, never with `kill`, whose PIDs are those of
//! the caller's namespace.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// `getpid()` in the caller's own namespace.
pub fn own_namespace_pid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    // A PID is positive, so the bits read the same unsigned.
    pid.cast_unsigned()
}

/// (getpid, host pid) of the last lookup, so that a fork is noticed.
static HOST_PID_CACHE: AtomicU64 = AtomicU64::new(0);

/// The calling process's PID as the host (the `/proc` mount) sees it: the PID the driver
/// keys its tables by. Falls back to `getpid()` when `/proc` cannot tell.
pub fn current_pid() -> u32 {
    let own = own_namespace_pid();
    let cached = HOST_PID_CACHE.load(Relaxed);
    // The cache holds two u32s: the own-namespace PID in the high half, the host PID in
    // the low half.
    let [a, b, c, d, e, f, g, h] = cached.to_be_bytes();
    let (cached_own, cached_host) = (
        u32::from_be_bytes([a, b, c, d]),
        u32::from_be_bytes([e, f, g, h]),
    );
    if cached != 0 && cached_own == own {
        return cached_host;
    }
    let host = std::fs::read_link("/proc/self")
        .ok()
        .and_then(|p| p.to_str().and_then(|s| s.parse::<u32>().ok()))
        .unwrap_or(own);
    HOST_PID_CACHE.store((u64::from(own) << 32) | u64::from(host), Relaxed);
    host
}

/// Whether `pid` names a live, non-zombie process. Unknown states count as alive.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    if pid == current_pid() {
        return true;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z' | 'X' | 'x')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => {
            // /proc unreadable (hidepid, no /proc): ask the kernel in our own namespace.
            // SAFETY: signal 0 only checks whether the process exists; nothing is delivered.
            let rc = unsafe { libc::kill(raw, 0) };
            rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
        }
    }
}

/// The state letter of a `/proc/<pid>/stat` line (the field after the parenthesised name).
fn stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat() {
        assert_eq!(stat_state("12 (a) b) Z 1 2"), Some('Z'));
        assert_eq!(stat_state("12 (cat) S 1 2"), Some('S'));
        assert_eq!(stat_state("garbage"), None);
    }

    #[test]
    fn host_pid_outside_namespaces_is_getpid() {
        assert_eq!(current_pid(), std::process::id());
        assert_eq!(own_namespace_pid(), std::process::id());
    }

    #[test]
    fn liveness() {
        assert!(is_alive(current_pid()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        // Wait until it has exited but is not yet reaped: a zombie.
        for _ in 0..200 {
            if !is_alive(pid) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_alive(pid), "zombie counts as dead");
        child.wait().expect("reap");
        assert!(!is_alive(pid));
    }
}
