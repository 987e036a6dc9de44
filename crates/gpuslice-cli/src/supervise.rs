//! Running the program: starting it, forwarding signals to it while it runs, waiting for
//! it, and turning how it ended into an exit code (its own code, or 128 + the signal
//! that killed it).
//!
//! The forwarded signals (SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2) are blocked
//! in gpuslice and read from a `signalfd` by a thread, which sends each to the program.
//! The program starts with an empty signal mask (the standard library resets it) and
//! default dispositions. The program is reaped only after the forwarder has been told it
//! exited, so a signal can never reach a process that reused its PID.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::{Arc, Mutex, PoisonError};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{Id, WaitPidFlag, waitid};
use nix::unistd::{Pid, getpgid, getpgrp};

/// The signals passed on to the program.
pub const FORWARDED: [Signal; 6] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

/// `si_code` of a signal the kernel generated itself (e.g. the terminal's Ctrl-C).
const SI_KERNEL: i32 = nix::libc::SI_KERNEL;

/// What can go wrong while running the program.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The program could not be started.
    #[error("cannot run {program:?}: {source}")]
    Spawn {
        /// The program as given.
        program: OsString,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handling could not be set up.
    #[error("cannot set up signal forwarding: {0}")]
    Signals(Errno),
    /// The signal forwarder could not be started.
    #[error("cannot start the signal forwarder: {0}")]
    Thread(std::io::Error),
    /// Waiting for the program failed.
    #[error("waiting for the program failed: {0}")]
    Wait(std::io::Error),
}

impl SuperviseError {
    /// The exit code for this error, as shells use them: 127 when the program does not
    /// exist, 126 when it cannot be executed, 125 for a failure of gpuslice itself.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Spawn { source, .. } if source.kind() == std::io::ErrorKind::NotFound => 127,
            Self::Spawn { .. } => 126,
            _ => 125,
        }
    }
}

/// The forwarded signals, blocked in this thread (and so in every thread it starts
/// later). Create it before any other thread exists, and as early as possible: a signal
/// that arrives before the program starts waits, and is passed on once it runs.
#[derive(Debug)]
pub struct SignalGuard {
    fd: SignalFd,
}

impl SignalGuard {
    /// Blocks the forwarded signals and opens a `signalfd` for them.
    pub fn block() -> Result<Self, SuperviseError> {
        let mut set = SigSet::empty();
        for signal in FORWARDED {
            set.add(signal);
        }
        set.thread_block().map_err(SuperviseError::Signals)?;
        let fd = SignalFd::new(&set).map_err(SuperviseError::Signals)?;
        Ok(Self { fd })
    }
}

/// Whether a signal that reached gpuslice should be passed on to the program.
///
/// The terminal sends SIGINT and SIGQUIT (Ctrl-C, Ctrl-\) to its whole foreground process
/// group; when the program is in gpuslice's group it has received them already, and a
/// second copy would, for example, cut short a Python program's clean-up after
/// `KeyboardInterrupt`. Everything else is passed on.
pub fn should_forward(signal: Signal, si_code: i32, child_in_our_group: bool) -> bool {
    let from_terminal = si_code == SI_KERNEL && matches!(signal, Signal::SIGINT | Signal::SIGQUIT);
    !(from_terminal && child_in_our_group)
}

/// The exit code that reports `status`: the program's own code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 125,
    }
}

/// Starts `command`, passes the forwarded signals on to it until it exits, and returns
/// how it ended. `guard` must have been created before `command` was built.
pub fn run(mut command: Command, guard: SignalGuard) -> Result<ExitStatus, SuperviseError> {
    let mut child = command.spawn().map_err(|source| SuperviseError::Spawn {
        program: command.get_program().to_os_string(),
        source,
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    let exited = Arc::new(Mutex::new(false));
    let forwarder_exited = Arc::clone(&exited);
    let spawned = std::thread::Builder::new()
        .name("gpuslice-signals".into())
        .spawn(move || forward(guard, pid, &forwarder_exited));
    if let Err(e) = spawned {
        // Without a forwarder the program would not get our signals: stop it.
        let _ = child.kill();
        let _ = child.wait();
        return Err(SuperviseError::Thread(e));
    }
    wait(&mut child, pid, &exited)
}

/// Waits for the program to exit, marks it exited for the forwarder, then reaps it.
fn wait(child: &mut Child, pid: Pid, exited: &Mutex<bool>) -> Result<ExitStatus, SuperviseError> {
    loop {
        match waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(SuperviseError::Wait(e.into())),
        }
    }
    *exited.lock().unwrap_or_else(PoisonError::into_inner) = true;
    child.wait().map_err(SuperviseError::Wait)
}

/// The forwarder thread: reads signals until the program has exited.
fn forward(guard: SignalGuard, pid: Pid, exited: &Mutex<bool>) {
    loop {
        let info = match guard.fd.read_signal() {
            Ok(Some(info)) => info,
            Ok(None) | Err(Errno::EINTR) => continue,
            Err(_) => return,
        };
        let Ok(signal) = Signal::try_from(info.ssi_signo as i32) else {
            continue;
        };
        let done = exited.lock().unwrap_or_else(PoisonError::into_inner);
        if *done {
            return;
        }
        let in_our_group = getpgid(Some(pid)).is_ok_and(|g| g == getpgrp());
        if should_forward(signal, info.ssi_code, in_our_group) {
            let _ = kill(pid, signal);
        }
        drop(done);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    const SI_USER: i32 = nix::libc::SI_USER;

    #[test]
    fn terminal_signals_are_not_doubled() {
        assert!(!should_forward(Signal::SIGINT, SI_KERNEL, true));
        assert!(!should_forward(Signal::SIGQUIT, SI_KERNEL, true));
        // The program left our process group: the terminal did not reach it.
        assert!(should_forward(Signal::SIGINT, SI_KERNEL, false));
        // Sent with kill(1) or by a container runtime: always passed on.
        assert!(should_forward(Signal::SIGINT, SI_USER, true));
        assert!(should_forward(Signal::SIGTERM, SI_USER, true));
        assert!(should_forward(Signal::SIGHUP, SI_KERNEL, true));
    }

    #[test]
    fn exit_codes_pass_through() {
        let status = |script: &str| {
            Command::new("sh")
                .args(["-c", script])
                .status()
                .expect("sh runs")
        };
        assert_eq!(exit_code(status("exit 0")), 0);
        assert_eq!(exit_code(status("exit 7")), 7);
        assert_eq!(exit_code(status("kill -9 $$")), 137);
        assert_eq!(exit_code(status("kill -TERM $$")), 143);
    }

    #[test]
    fn spawn_errors_map_to_shell_codes() {
        let not_found = SuperviseError::Spawn {
            program: "nope".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(not_found.exit_code(), 127);
        assert!(not_found.to_string().contains("nope"));
        let denied = SuperviseError::Spawn {
            program: "x".into(),
            source: std::io::ErrorKind::PermissionDenied.into(),
        };
        assert_eq!(denied.exit_code(), 126);
    }
}
