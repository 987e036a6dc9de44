//! Test support: runs one of this test binary's ignored worker tests in a child process
//! under a watchdog, so that a hang or a crash in the worker becomes a failure of the
//! test that started it, naming where the worker got to, rather than a stuck or killed
//! test run.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus};
use std::sync::mpsc::{RecvTimeoutError, channel};
use std::time::Duration;

/// How a worker ended.
pub struct Finished {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed (stdout and stderr), line by line.
    pub lines: Vec<String>,
}

impl Finished {
    /// The last lines printed, for failure messages.
    pub fn tail(&self) -> String {
        tail(&self.lines)
    }

    /// Whether it printed this (as a line or part of one: the harness prints the
    /// test's name first).
    pub fn said(&self, line: &str) -> bool {
        self.lines.iter().any(|l| l.contains(line))
    }
}

fn tail(lines: &[String]) -> String {
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Runs the ignored test `test` (its full path, e.g. `guard_tests::worker`) of this
/// binary in a child process with `env` set. The child is killed, and the calling test
/// fails, when it prints nothing for `quiet`.
pub fn run_worker(test: &str, env: &[(&str, &OsStr)], quiet: Duration) -> Finished {
    let (reader, writer) = std::io::pipe().expect("a pipe");
    let mut command = Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(writer.try_clone().expect("a pipe"))
        .stderr(writer);
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start the worker");
    // The command still holds the pipe's writing ends: drop it so that the reader sees
    // the end of the output when the child exits.
    drop(command);
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        match rx.recv_timeout(quiet) {
            Ok(line) => lines.push(line),
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "worker {test} printed nothing for {quiet:?} (a hang); killed it. Its last lines:\n{}",
                    tail(&lines)
                );
            }
        }
    }
    let status = child.wait().expect("wait for the worker");
    Finished { status, lines }
}
