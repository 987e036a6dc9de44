//! The truncation guard: a ledger cut short under a guarded mapping reads as empty and
//! says so, in one step and under a truncation loop; registrations are given back; any
//! other `SIGBUS` keeps the disposition the process had; and a process that never
//! installed the guard (the interposer's case) has no handler at all.
//!
//! Each case runs in its own child process (`test_support`): the handler is process-wide,
//! and a case that fails by dying of `SIGBUS` must fail its test, not the test run.

use std::os::unix::fs::FileExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use super::*;
use crate::test_support::{Finished, run_worker};
use std::fs::{self, OpenOptions};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const UUID: &str = "GPU-00000000-0000-4000-8000-000000000000";
const ENV_DIR: &str = "LEDGER_GUARD_DIR";

fn worker(name: &str) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    run_worker(
        &format!("guard_tests::{name}"),
        &[(ENV_DIR, dir.path().as_os_str())],
        Duration::from_secs(60),
    )
}

/// The folder a worker works in; `None` when the test harness runs the worker itself.
fn worker_dir() -> Option<PathBuf> {
    std::env::var_os(ENV_DIR).map(PathBuf::from)
}

/// A ledger with one device and this process registered with 100 MiB: the ledger, the
/// device entry and the file's bytes.
fn a_ledger(path: &Path) -> (Ledger, DeviceSlot, Vec<u8>) {
    let spec = LedgerSpec {
        name: "guarded".into(),
        default_limit: None,
        devices: vec![(UUID.into(), GIB)],
        compute: None,
    };
    let ledger = Ledger::create_or_open(path, &spec).unwrap();
    let dev = ledger.device_slot(UUID, Some(GIB)).unwrap().unwrap();
    let me = ledger.register().unwrap();
    ledger.try_charge(me, dev, 100 * MIB).unwrap();
    let image = fs::read(path).unwrap();
    (ledger, dev, image)
}

fn cut_short(path: &Path, len: u64) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// Reads the first byte of a shared mapping of a (non-ledger) file after cutting the
/// file to nothing: a fault outside every ledger.
fn fault_outside_the_ledgers(dir: &Path) -> u8 {
    let path = dir.join("not-a-ledger");
    fs::write(&path, [7u8; 8192]).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a private test file; the fault its truncation causes is the point.
    let map = unsafe { memmap2::MmapMut::map_mut(&file) }.unwrap();
    file.set_len(0).unwrap();
    // SAFETY: the pointer is inside the mapping; reading it raises SIGBUS.
    unsafe { std::ptr::read_volatile(map.as_ptr()) }
}

#[test]
#[ignore = "started by a_guarded_ledger_cut_short_reads_as_empty_and_says_so"]
fn worker_cut_short() {
    let Some(dir) = worker_dir() else { return };
    guard::install().unwrap();
    let path = dir.join("cut.ledger");
    let (writer, dev, image) = a_ledger(&path);
    let reader = Ledger::open(&path).unwrap();
    assert_eq!(reader.processes().len(), 1);
    assert_eq!(reader.used(dev), 100 * MIB);
    reader.intact().unwrap();

    // A process of the slice cuts the file short under both mappings.
    cut_short(&path, 0);
    assert!(reader.processes().is_empty());
    assert!(reader.devices().is_empty());
    assert_eq!(reader.used(dev), 0);
    assert_eq!(reader.sweep_dead(), 0);
    assert_eq!(reader.sweep_identities(|_, _, _| true), 0);
    let err = reader.intact().unwrap_err();
    assert!(
        matches!(err, LedgerError::Truncated { .. }) && err.to_string().contains("cut.ledger"),
        "{err}"
    );
    assert_eq!(writer.used(dev), 0);
    assert!(
        writer.intact().is_err(),
        "every mapping of the file is void"
    );
    let err = Ledger::open(&path).expect_err("an empty file is refused");
    assert!(err.to_string().contains("cut.ledger"), "{err}");

    // Cut to one page: what lies past it faults, and the whole ledger is void.
    fs::write(&path, &image).unwrap();
    let reader = Ledger::open(&path).unwrap();
    cut_short(&path, 4096);
    let last = ProcessSlot(MAX_PROCESSES - 1);
    assert_eq!(reader.charged(last, dev), 0);
    assert!(reader.intact().is_err());

    // Restored, the file opens and reads as before.
    fs::write(&path, &image).unwrap();
    let again = Ledger::open(&path).unwrap();
    again.intact().unwrap();
    assert_eq!(again.used(dev), 100 * MIB);
    // Registrations are given back when a ledger is dropped.
    for _ in 0..guard::CAPACITY * 2 {
        Ledger::open(&path).unwrap().intact().unwrap();
    }
    println!("SURVIVED");
}

#[test]
fn a_guarded_ledger_cut_short_reads_as_empty_and_says_so() {
    let done = worker("worker_cut_short");
    assert!(
        done.status.success() && done.said("SURVIVED"),
        "the worker failed ({}; signal {:?}):\n{}",
        done.status,
        done.status.signal(),
        done.tail()
    );
}

#[test]
#[ignore = "started by a_guarded_reader_survives_a_truncation_loop"]
fn worker_truncation_loop() {
    let Some(dir) = worker_dir() else { return };
    guard::install().unwrap();
    let path = dir.join("loop.ledger");
    let (_writer, _dev, image) = a_ledger(&path);
    let stop = Arc::new(AtomicBool::new(false));
    // A process of the slice rewrites its ledger in a loop, as in the field report.
    let cutter = {
        let (stop, path, image) = (stop.clone(), path.clone(), image.clone());
        std::thread::spawn(move || {
            let file = OpenOptions::new().write(true).open(&path).unwrap();
            let mut rounds = 0u64;
            while !stop.load(Relaxed) {
                file.set_len(0).unwrap();
                file.set_len(image.len() as u64).unwrap();
                file.write_all_at(&image[..4096], 0).unwrap();
                rounds += 1;
            }
            rounds
        })
    };
    let (mut whole, mut void, mut refused) = (0, 0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(1500) {
        match Ledger::open(&path) {
            Ok(ledger) => {
                let _ = (
                    ledger.processes(),
                    ledger.devices(),
                    ledger.used(DeviceSlot::new(0)),
                );
                ledger.sweep_dead();
                match ledger.intact() {
                    Ok(()) => whole += 1,
                    Err(_) => void += 1,
                }
            }
            Err(e) => {
                assert!(e.to_string().contains("loop.ledger"), "{e}");
                refused += 1;
            }
        }
    }
    stop.store(true, Relaxed);
    let rounds = cutter.join().unwrap();
    println!("{rounds} truncations; reads: {whole} whole, {void} void, {refused} refused");
    println!("SURVIVED");
}

#[test]
fn a_guarded_reader_survives_a_truncation_loop() {
    let done = worker("worker_truncation_loop");
    assert!(
        done.status.success() && done.said("SURVIVED"),
        "the worker failed ({}; signal {:?}):\n{}",
        done.status,
        done.status.signal(),
        done.tail()
    );
}

#[test]
#[ignore = "started by a_fault_outside_the_ledgers_still_ends_the_process"]
fn worker_fault_elsewhere() {
    let Some(dir) = worker_dir() else { return };
    guard::install().unwrap();
    let (_ledger, _, _) = a_ledger(&dir.join("l"));
    println!("FAULTING");
    let byte = fault_outside_the_ledgers(&dir);
    println!("READ {byte}");
}

#[test]
fn a_fault_outside_the_ledgers_still_ends_the_process() {
    let done = worker("worker_fault_elsewhere");
    assert!(done.said("FAULTING"), "{}", done.tail());
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGBUS),
        "{}:\n{}",
        done.status,
        done.tail()
    );
}

extern "C" fn exit_42(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe and ends the process at once.
    unsafe { libc::_exit(42) }
}

#[test]
#[ignore = "started by a_handler_installed_before_the_guard_still_gets_other_faults"]
fn worker_previous_handler() {
    let Some(dir) = worker_dir() else { return };
    let previous = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(exit_42),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: `exit_42` is async-signal-safe.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGBUS, &previous) }.unwrap();
    guard::install().unwrap();
    // A ledger cut short is still the guard's...
    let path = dir.join("l");
    let (ledger, dev, _) = a_ledger(&path);
    cut_short(&path, 0);
    assert_eq!(ledger.used(dev), 0);
    assert!(ledger.intact().is_err());
    println!("LEDGER SURVIVED");
    // ...and any other fault the previous handler's.
    let byte = fault_outside_the_ledgers(&dir);
    println!("READ {byte}");
}

#[test]
fn a_handler_installed_before_the_guard_still_gets_other_faults() {
    let done = worker("worker_previous_handler");
    assert!(done.said("LEDGER SURVIVED"), "{}", done.tail());
    assert_eq!(
        done.status.code(),
        Some(42),
        "{}:\n{}",
        done.status,
        done.tail()
    );
}

#[test]
#[ignore = "started by a_sigbus_sent_by_a_process_still_ends_the_process"]
fn worker_sent() {
    let Some(dir) = worker_dir() else { return };
    // The default disposition, as a C program has it (Rust's runtime installs a handler
    // of its own, which the guard would call, and which lets a sent SIGBUS go).
    let default = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::SigDfl,
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    // SAFETY: the default disposition needs no handler.
    unsafe { nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGBUS, &default) }.unwrap();
    guard::install().unwrap();
    let (_ledger, _, _) = a_ledger(&dir.join("l"));
    println!("RAISING");
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGBUS).unwrap();
    println!("STILL HERE");
}

#[test]
fn a_sigbus_sent_by_a_process_still_ends_the_process() {
    let done = worker("worker_sent");
    assert!(done.said("RAISING"), "{}", done.tail());
    assert_eq!(
        done.status.signal(),
        Some(libc::SIGBUS),
        "{}:\n{}",
        done.status,
        done.tail()
    );
}

/// The SIGBUS handler function this process has (`SIG_DFL`, `SIG_IGN` or an address).
fn sigbus_disposition() -> libc::sighandler_t {
    // SAFETY: a zeroed sigaction is a valid out-parameter; a null new action only reads
    // the current disposition.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current),
            0
        );
        current.sa_sigaction
    }
}

#[test]
#[ignore = "started by a_process_that_never_installs_the_guard_keeps_its_signals"]
fn worker_not_installed() {
    let Some(dir) = worker_dir() else { return };
    let before = sigbus_disposition();
    let (ledger, _, _) = a_ledger(&dir.join("l"));
    let again = Ledger::open(&dir.join("l")).unwrap();
    ledger.intact().unwrap();
    again.intact().unwrap();
    assert!(!guard::installed());
    assert_eq!(sigbus_disposition(), before);
    println!("UNCHANGED");
}

#[test]
fn a_process_that_never_installs_the_guard_keeps_its_signals() {
    let done = worker("worker_not_installed");
    assert!(
        done.status.success() && done.said("UNCHANGED"),
        "{}:\n{}",
        done.status,
        done.tail()
    );
}
