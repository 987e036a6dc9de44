//! What a process that can write its slice's ledger can and cannot do, end to end on
//! the fake driver (docs/design.md, "What a slice member can do"):
//!
//! * it may cut its ledger short again and again: the host agent survives and goes on
//!   answering and sweeping; `gpuslice status` survives and goes on showing the other
//!   slices; another slice's process runs on;
//! * it may write any bytes: a damaged device state word (the field report's) makes CUDA
//!   initialisation fail closed at once, naming the file, instead of spinning for ever.
//!
//! Every wait is bounded: a process that hangs is killed and the test fails.

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use system_tests::{Bench, Report, pid_file, run, wait_for};

const CUDA_ERROR_NOT_PERMITTED: u64 = 800;
/// How long a slice member rewrites its ledger.
const CUTTING: Duration = Duration::from_secs(4);

/// Waits up to `limit` for `child`; `None` if it still runs (it is then killed).
fn wait_bounded(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return Some(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process of the slice whose ledger is `path` that cuts it to nothing, restores its
/// length and rewrites its first bytes, in a loop, for `CUTTING` (the field report's
/// loop). Returns how many rounds it made.
fn cut_in_a_loop(path: &Path) -> std::thread::JoinHandle<u64> {
    let image = std::fs::read(path).expect("the ledger");
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open the ledger for writing");
    std::thread::spawn(move || {
        let start = Instant::now();
        let mut rounds = 0;
        while start.elapsed() < CUTTING {
            file.set_len(0).unwrap();
            file.set_len(image.len() as u64).unwrap();
            file.write_all_at(&image[..2240], 0).unwrap();
            rounds += 1;
        }
        // Leave the ledger whole.
        file.write_all_at(&image, 0).unwrap();
        rounds
    })
}

/// Runs `cuda-probe` in slice `path` (1 GiB): it joins, creates a context and exits.
fn a_slice_process_ran(bench: &Bench, path: &Path) {
    let ledger = path.display().to_string();
    let r = run(&mut bench.probe(
        &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_LEDGER", &ledger)],
        &["init", "ctx"],
    ));
    assert_eq!(r.rc("ctx"), 0, "{}", r.text());
}

struct Agent {
    child: Child,
    log: PathBuf,
    socket: PathBuf,
}

impl Agent {
    /// `gpuslice agent` on `state`, looking every 50 ms (sweeping every 200 ms).
    fn start(bench: &Bench, state: &Path) -> Self {
        let log = bench.dir.path().join("agent.log");
        let socket = bench.dir.path().join("agent/agent.sock");
        let child = bench
            .plain(&bench.build.join("gpuslice"))
            .args(["agent", "--no-probe", "--enforce-interval-ms", "50"])
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(state)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start gpuslice agent");
        wait_for(&socket, "the agent's socket");
        Self { child, log, socket }
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics unless the agent still runs and answers a request.
    fn answers(&mut self) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!(
                "the agent died ({status}, signal {:?}):\n{}",
                status.signal(),
                self.text()
            );
        }
        let answer = gpuslice_agent_protocol::query(
            &self.socket,
            gpuslice_agent_protocol::Request::View,
            Duration::from_secs(10),
        );
        assert!(answer.is_ok(), "{answer:?}\n{}", self.text());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_agent_survives_a_slice_that_cuts_its_ledger_short_and_still_sweeps() {
    let bench = Bench::new();
    let state = bench.dir.path().join("state");
    let ledger = state.join("slices/x/ledger");
    std::fs::create_dir_all(ledger.parent().unwrap()).unwrap();
    a_slice_process_ran(&bench, &ledger);
    let mut agent = Agent::start(&bench, &state);

    let rounds = cut_in_a_loop(&ledger).join().unwrap();
    agent.answers();

    // The agent still sweeps that ledger: a process of the slice killed with its charge
    // is freed.
    let done = bench.dir.path().join("done");
    let (pid_path, ready) = (
        bench.dir.path().join("victim.pid"),
        bench.dir.path().join("victim.ready"),
    );
    let mut victim = bench
        .probe(
            &[
                ("GPUSLICE_MEMORY", "1GiB"),
                ("GPUSLICE_LEDGER", &ledger.display().to_string()),
            ],
            &[
                "init",
                "ctx",
                "alloc:64M",
                &format!("pid:{}", pid_path.display()),
                &format!("ready:{}", ready.display()),
                &format!("wait:{}", done.display()),
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&ready, "the victim");
    let pid = pid_file(&pid_path).1;
    victim.kill().unwrap();
    victim.wait().unwrap();
    let wanted = format!("slice 'x': freed 1 ledger entry of processes that are gone (PID {pid} ");
    let start = Instant::now();
    while !agent.text().contains(&wanted) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the agent did not sweep PID {pid} after {rounds} truncations:\n{}",
            agent.text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.answers();
}

#[test]
fn gpuslice_status_survives_a_ledger_cut_short_and_other_slices_run_on() {
    let bench = Bench::new();
    let cut = bench.ledger("cut");
    a_slice_process_ran(&bench, &cut);
    // A process of another slice, running through it all.
    let done = bench.dir.path().join("done");
    let (pid_path, ready) = (
        bench.dir.path().join("other.pid"),
        bench.dir.path().join("other.ready"),
    );
    let mut other = bench
        .probe(
            &[
                ("GPUSLICE_MEMORY", "1GiB"),
                (
                    "GPUSLICE_LEDGER",
                    &bench.ledger("other").display().to_string(),
                ),
            ],
            &[
                "init",
                "ctx",
                "alloc:64M",
                &format!("pid:{}", pid_path.display()),
                &format!("ready:{}", ready.display()),
                &format!("wait:{}", done.display()),
                "alloc:64M",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&ready, "the other slice's process");
    let other_pid = pid_file(&pid_path).1.to_string();

    let runs = Arc::new(AtomicU64::new(0));
    let cutter = cut_in_a_loop(&cut);
    // `gpuslice status` again and again while the ledger is being cut.
    let status = || {
        bench
            .plain(&bench.build.join("gpuslice"))
            .arg("status")
            .output()
            .expect("run gpuslice status")
    };
    let start = Instant::now();
    while start.elapsed() < CUTTING {
        let out = status();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "gpuslice status failed during run {} ({}, signal {:?}):\n{text}\n{}",
            runs.load(Relaxed),
            out.status,
            out.status.signal(),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("other.ledger") && text.contains(&other_pid),
            "the other slice is missing:\n{text}"
        );
        runs.fetch_add(1, Relaxed);
    }
    let rounds = cutter.join().unwrap();

    // The ledger is whole again and reads as before.
    let out = status();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("error"), "{text}");
    // The other slice's process finishes its work.
    std::fs::write(&done, b"done").unwrap();
    let finished = wait_bounded(&mut other, Duration::from_secs(30));
    let out = other.wait_with_output().unwrap();
    let report = Report::from(&out);
    assert!(
        finished.is_some_and(|s| s.success()),
        "the other slice's process: {finished:?}\n{}",
        report.text()
    );
    assert!(
        report
            .lines
            .iter()
            .all(|l| l.contains("rc=0") || !l.contains("rc=")),
        "{}",
        report.text()
    );
    eprintln!(
        "{} status runs during {rounds} truncations",
        runs.load(Relaxed)
    );
}

#[test]
fn a_damaged_device_state_word_fails_cuda_init_closed_naming_the_ledger() {
    let bench = Bench::new();
    let path = bench.ledger("h");
    a_slice_process_ran(&bench, &path);
    // The field report's corruption: the first device entry's state word.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(&0x8012_0000_0000_0000u64.to_le_bytes(), 192)
        .unwrap();
    let ledger = path.display().to_string();
    let mut child = bench
        .probe(
            &[("GPUSLICE_MEMORY", "1GiB"), ("GPUSLICE_LEDGER", &ledger)],
            &["init", "ctx"],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Fails closed at once; a generous bound for a loaded machine, then it is a hang.
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let out = child.wait_with_output().unwrap();
    let report = Report::from(&out);
    assert!(
        status.is_some(),
        "CUDA init hung on the damaged ledger:\n{}",
        report.text()
    );
    assert_eq!(
        report.rc("ctx"),
        CUDA_ERROR_NOT_PERMITTED,
        "{}",
        report.text()
    );
    assert!(
        report.stderr.contains(&ledger) && report.stderr.contains("device entry 0"),
        "{}",
        report.text()
    );
}
