//! Liveness of the processes that own device memory: the real driver frees a process's memory
//! when it dies, so the simulation drops the entries of dead (or zombie) processes.

/// The calling process's id.
pub fn current_pid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() };
    pid as u32
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
    // SAFETY: signal 0 only checks whether the process exists; nothing is delivered.
    let rc = unsafe { libc::kill(raw, 0) };
    if rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH) {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !matches!(stat_state(&stat), Some('Z' | 'X' | 'x')),
        Err(e) => e.kind() != std::io::ErrorKind::NotFound || rc == 0,
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
