//! Who a process is, in a way that survives PID reuse: PID, start time (clock ticks
//! since boot, from `/proc/<pid>/stat`) and PID namespace.

use std::os::unix::fs::MetadataExt;

/// A process's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// PID in its own namespace.
    pub pid: u32,
    /// Start time in clock ticks since boot.
    pub start_time: u64,
    /// Inode of its PID namespace.
    pub pid_ns: u64,
}

/// The calling process's identity.
pub fn current_identity() -> ProcessIdentity {
    let pid = std::process::id();
    ProcessIdentity {
        pid,
        start_time: stat_of(pid).map(|s| s.start_time).unwrap_or(0),
        pid_ns: std::fs::metadata("/proc/self/ns/pid")
            .map(|m| m.ino())
            .unwrap_or(0),
    }
}

struct Stat {
    state: u8,
    start_time: u64,
}

fn stat_of(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: parse after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    let state = fields.next()?.bytes().next()?;
    // Field 3 is the state; the start time is field 22, i.e. 19 fields after the state.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_time })
}

/// Whether `pid` exists at all (any process, zombies included).
pub fn pid_exists(pid: u32) -> bool {
    if pid == 0 || pid > i32::MAX as u32 {
        return false;
    }
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether the process that registered as `pid` with `start_time` still runs. A zombie
/// counts as gone: the driver has already freed its memory.
pub fn process_is_alive(pid: u32, start_time: u64) -> bool {
    if !pid_exists(pid) {
        return false;
    }
    match stat_of(pid) {
        Some(stat) => {
            stat.state != b'Z'
                && stat.state != b'X'
                && (start_time == 0 || stat.start_time == start_time)
        }
        // /proc unreadable for this PID (e.g. hidepid): trust kill().
        None => true,
    }
}
