//! A soak of compute slices on the fake GPU's virtual clock: thousands of process
//! lifetimes in three slices that share one GPU, several at a time, with every way a
//! process of a compute slice can end — its program's end, exit with work still queued,
//! the CUDA runtime's teardown of the primary context before or after the first launch,
//! a context of its own destroyed, a fork, SIGTERM and SIGKILL at random instants.
//!
//! What must hold: every process ends (a process still there 30 s after it started is a
//! hang, and fails the test with its steps and output), none touches a handle of a
//! destroyed context (the fake driver aborts on that), none dies of anything but the
//! signal it was sent, no ledger keeps an entry or a charge once its processes are gone,
//! and what the killed processes left in the per-GPU turn folder does not hold back a
//! slice that starts afterwards. The number of lifetimes is `GPUSLICE_SOAK_LIFETIMES`
//! (default 3000); no more are started after 240 s, so the test is bounded in time.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use system_tests::{Bench, run};

/// A small deterministic generator (xorshift64*): the soak is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// How a lifetime ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Ending {
    /// The program runs to its end.
    Natural,
    /// SIGTERM after the given delay.
    Term(Duration),
    /// SIGKILL after the given delay.
    Kill(Duration),
}

/// The programs a process of a compute slice runs, each ending a different way.
const PROGRAMS: &[&[&str]] = &[
    &["init", "ctx", "loop:kernel:40"],
    &["init", "ctx", "loop:kernel:20", "loop:once:0"],
    &[
        "init",
        "ctx",
        "release-at-exit:0",
        "loop:kernel:20",
        "loop:once:0",
    ],
    &[
        "init",
        "ctx",
        "loop:kernel:20",
        "release-at-exit:0",
        "loop:once:0",
    ],
    &[
        "init",
        "ownctx",
        "loop:kernel:20",
        "loop:once:0",
        "ownctxdestroy",
    ],
    &["init", "ownctx", "loop:kernel:20", "loop:once:0"],
    &[
        "init",
        "ctx",
        "loop:kernel:10",
        "fork:init+ctx+loop:kernel:10+loop:once:0",
    ],
    &["init", "ctx", "loop:streamchurn:20"],
    // Long enough (in real time) to be killed in the middle.
    &["init", "ctx", "loop:kernel:3000"],
];

const SLICES: [(&str, &str); 3] = [("soak-a", "20"), ("soak-b", "30"), ("soak-c", "50")];
const AT_ONCE: usize = 6;
const HANG: Duration = Duration::from_secs(30);
const TIME_CAP: Duration = Duration::from_secs(240);

struct Running {
    child: Child,
    started: Instant,
    ending: Ending,
    signalled: bool,
    what: String,
}

fn finish(r: Running) {
    let out = r.child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("fake-cuda:"),
        "{}: the fake driver caught a misuse:\n{stderr}",
        r.what
    );
    use std::os::unix::process::ExitStatusExt;
    let expected = match (r.ending, r.signalled) {
        (Ending::Term(_), true) => out.status.success() || out.status.signal() == Some(15),
        (Ending::Kill(_), true) => out.status.success() || out.status.signal() == Some(9),
        _ => out.status.success(),
    };
    assert!(
        expected,
        "{} ({:?}) ended with {}:\n{}\n{stderr}",
        r.what,
        r.ending,
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn thousands_of_compute_slice_lifetimes_with_kills_neither_hang_nor_leak() {
    let lifetimes: usize = std::env::var("GPUSLICE_SOAK_LIFETIMES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut bench = Bench::new();
    bench.set("FAKE_CUDA_KERNEL_US", "200");
    let ledgers: Vec<String> = SLICES
        .iter()
        .map(|(name, _)| bench.ledger(name).display().to_string())
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut running: Vec<Running> = Vec::new();
    let begin = Instant::now();
    let (mut started, mut kills, mut terms) = (0usize, 0usize, 0usize);
    while (started < lifetimes && begin.elapsed() < TIME_CAP) || !running.is_empty() {
        // Signals due, hangs, and processes that ended.
        let mut i = 0;
        while i < running.len() {
            let r = &mut running[i];
            let age = r.started.elapsed();
            let signal = match r.ending {
                Ending::Term(after) if age >= after => Some(libc::SIGTERM),
                Ending::Kill(after) if age >= after => Some(libc::SIGKILL),
                _ => None,
            };
            if let Some(sig) = signal
                && !r.signalled
            {
                // SAFETY: signalling our own child, which has not been reaped yet.
                unsafe { libc::kill(r.child.id() as libc::pid_t, sig) };
                r.signalled = true;
            }
            if r.child.try_wait().expect("try_wait").is_some() {
                finish(running.swap_remove(i));
                continue;
            }
            if age > HANG {
                let _ = r.child.kill();
                let r = running.swap_remove(i);
                let out = r.child.wait_with_output().expect("wait");
                panic!(
                    "{} ({:?}) hung for {:?}:\n{}\n{}",
                    r.what,
                    r.ending,
                    HANG,
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            i += 1;
        }
        if running.len() < AT_ONCE && started < lifetimes && begin.elapsed() < TIME_CAP {
            let slice = usize::try_from(rng.below(SLICES.len() as u64)).unwrap();
            let program = PROGRAMS[usize::try_from(rng.below(PROGRAMS.len() as u64)).unwrap()];
            let delay = Duration::from_millis(rng.below(120));
            let ending = match rng.below(10) {
                0..=1 => {
                    kills += 1;
                    Ending::Kill(delay)
                }
                2 => {
                    terms += 1;
                    Ending::Term(delay)
                }
                _ => Ending::Natural,
            };
            let child = bench
                .probe(
                    &[
                        ("GPUSLICE_COMPUTE", SLICES[slice].1),
                        ("GPUSLICE_LEDGER", &ledgers[slice]),
                    ],
                    program,
                )
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn cuda-probe");
            running.push(Running {
                child,
                started: Instant::now(),
                ending,
                signalled: false,
                what: format!(
                    "lifetime {started} in {}: {}",
                    SLICES[slice].0,
                    program.join(" ")
                ),
            });
            started += 1;
        } else {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    assert!(started >= 300, "only {started} lifetimes in {TIME_CAP:?}");
    assert!(kills > 0 && terms > 0, "{kills} kills, {terms} terms");
    eprintln!(
        "{started} lifetimes ({kills} SIGKILL, {terms} SIGTERM) in {:?}",
        begin.elapsed()
    );

    // Nothing leaks: once the processes are gone, no ledger keeps an entry or a charge.
    for path in &ledgers {
        let ledger = gpuslice_ledger::Ledger::open(std::path::Path::new(path)).expect(path);
        ledger.sweep_dead();
        let left = ledger.processes();
        assert!(left.is_empty(), "{path} still lists {left:?}");
        for d in ledger.devices() {
            assert_eq!(d.used, 0, "{path}: {d:?}");
        }
    }

    // What the killed processes left in the turn folder holds no one back: a new slice
    // on the same GPU gets its share.
    let fresh = bench.ledger("after-soak").display().to_string();
    let r = run(&mut bench.probe(
        &[("GPUSLICE_COMPUTE", "30"), ("GPUSLICE_LEDGER", &fresh)],
        &["init", "ctx", "loop:kernel:2000"],
    ));
    let share = r.num("loop:kernel:2000", "share_permille");
    assert!(
        share.abs_diff(300) <= 30,
        "a slice started after the soak got {share}‰ of the GPU under a 30% limit"
    );
}
