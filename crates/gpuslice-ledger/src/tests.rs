//! Ledger tests: format checks, limits at their edge, races between threads and between
//! processes, and the sweeping of dead processes.

use super::*;
use std::fs::{self, OpenOptions};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const UUID: &str = "GPU-00000000-0000-4000-8000-000000000000";
/// The entry of the spec's only device.
const DEV: DeviceSlot = DeviceSlot::new(0);

fn spec(limit: u64) -> LedgerSpec {
    LedgerSpec {
        name: "test".into(),
        default_limit: None,
        devices: vec![(UUID.into(), limit)],
        compute: None,
    }
}

pub(crate) fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

impl Ledger {
    /// Test helper: pretend that entry `slot` belongs to `pid`.
    pub(crate) fn forge_owner(&self, slot: ProcessSlot, pid: u32) {
        self.process(slot.0)
            .owner
            .store(OWNER_ACTIVE | pid as u64, SeqCst);
    }
}

#[test]
fn create_then_open_sees_the_same_slice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.ledger");
    let ledger = Ledger::create_or_open(&path, &spec(4 * GIB)).unwrap();
    assert_eq!(ledger.name(), "test");
    let again = Ledger::open(&path).unwrap();
    assert_eq!(again.device_slot(UUID, None).unwrap(), Some(DEV));
    assert_eq!(again.limit(DEV), 4 * GIB);
    // A second create does not overwrite.
    let third = Ledger::create_or_open(&path, &spec(GIB)).unwrap();
    assert_eq!(third.limit(DEV), 4 * GIB);
    // No temporary files are left behind.
    let names: Vec<_> = fs::read_dir(path.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1);
}

#[test]
fn foreign_short_and_old_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let foreign = dir.path().join("foreign");
    fs::write(&foreign, b"hello world, not a ledger").unwrap();
    let err = Ledger::open(&foreign).err().unwrap();
    assert!(matches!(err, LedgerError::Foreign { .. }));
    assert!(err.to_string().contains("foreign"), "{err}");

    let short = dir.path().join("short");
    fs::write(&short, b"GPUSLICE\x01\x00").unwrap();
    let err = Ledger::open(&short).err().unwrap();
    assert!(matches!(err, LedgerError::Corrupt { .. }), "{err}");

    let good = dir.path().join("good");
    Ledger::create_or_open(&good, &spec(GIB)).unwrap();
    let mut bytes = fs::read(&good).unwrap();
    bytes[8] = 99; // version
    let old = dir.path().join("old");
    fs::write(&old, &bytes).unwrap();
    let err = Ledger::open(&old).err().unwrap();
    assert!(
        matches!(err, LedgerError::Version { found: 99, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("old"));

    let mut bytes = fs::read(&good).unwrap();
    bytes.truncate(bytes.len() / 2);
    let cut = dir.path().join("cut");
    fs::write(&cut, &bytes).unwrap();
    assert!(matches!(
        Ledger::open(&cut).err().unwrap(),
        LedgerError::Corrupt { .. }
    ));
}

#[test]
fn limits_hold_to_the_byte() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    let me = ledger.register().unwrap();
    ledger.try_charge(me, DEV, GIB - MIB).unwrap();
    let refusal = ledger.try_charge(me, DEV, MIB + 1).unwrap_err();
    assert_eq!(
        refusal,
        Refusal {
            used: GIB - MIB,
            limit: GIB,
            requested: MIB + 1
        }
    );
    ledger.try_charge(me, DEV, MIB).unwrap();
    assert_eq!(ledger.used(DEV), GIB);
    assert!(ledger.try_charge(me, DEV, 1).is_err());
    ledger.release(me, DEV, GIB);
    assert_eq!(ledger.used(DEV), 0);
    // Releasing more than was charged never wraps around.
    ledger.release(me, DEV, 5);
    assert_eq!(ledger.used(DEV), 0);
    ledger.force_charge(me, DEV, 2 * GIB);
    assert_eq!(ledger.used(DEV), 2 * GIB);
    assert!(ledger.try_charge(me, DEV, 1).is_err());
}

#[test]
fn refusals_and_throttled_time_are_counted_in_the_ledger_for_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let ledger = Ledger::create_or_open(&path, &spec(GIB)).unwrap();
    let me = ledger.register().unwrap();
    assert_eq!(ledger.refused_allocations(DEV), 0);
    ledger.try_charge(me, DEV, GIB).unwrap();
    assert!(ledger.try_charge(me, DEV, 1).is_err());
    assert!(ledger.try_charge(me, DEV, MIB).is_err());
    ledger.count_refusal(DEV);
    ledger
        .throttled_cell(DEV)
        .fetch_add(1_500, std::sync::atomic::Ordering::Relaxed);
    // Another process's view of the same file sees the same counts.
    let other = Ledger::open(&path).unwrap();
    assert_eq!(other.refused_allocations(DEV), 3);
    assert_eq!(other.throttled_ns(DEV), 1_500);
    // A charge that fits counts nothing.
    ledger.release(me, DEV, GIB);
    ledger.try_charge(me, DEV, MIB).unwrap();
    assert_eq!(other.refused_allocations(DEV), 3);
    // A first attempt that the caller retries counts nothing; it counts the last.
    ledger.try_charge(me, DEV, GIB - MIB).unwrap();
    assert!(ledger.try_charge_uncounted(me, DEV, 1).is_err());
    assert_eq!(other.refused_allocations(DEV), 3);
}

#[test]
fn limit_mismatch_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    let err = ledger.device_slot(UUID, Some(2 * GIB)).unwrap_err();
    assert!(matches!(err, LedgerError::LimitMismatch { .. }), "{err}");
    assert_eq!(ledger.device_slot(UUID, Some(GIB)).unwrap(), Some(DEV));
}

#[test]
fn a_limit_raised_in_the_file_frees_no_process_that_agreed_to_less() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let ledger = Ledger::create_or_open(&path, &spec(GIB)).unwrap();
    let dev = ledger.device_slot(UUID, Some(GIB)).unwrap().unwrap();
    let me = ledger.register().unwrap();
    // Another process, writing the file directly, raises the limit.
    let other = Ledger::open(&path).unwrap();
    other.device(dev.0).limit.store(1000 * GIB, SeqCst);
    assert_eq!(
        other.limit(dev),
        1000 * GIB,
        "a handle that agreed to nothing reads it"
    );
    assert_eq!(ledger.limit(dev), GIB);
    assert!(ledger.try_charge(me, dev, 2 * GIB).is_err());
    ledger.try_charge(me, dev, GIB).unwrap();
    // Lowering it applies.
    other.device(dev.0).limit.store(GIB / 2, SeqCst);
    assert_eq!(ledger.limit(dev), GIB / 2);
}

#[test]
fn devices_are_added_lazily_with_the_default_limit() {
    let dir = tempfile::tempdir().unwrap();
    let spec = LedgerSpec {
        name: "lazy".into(),
        default_limit: Some(GIB),
        devices: vec![],
        compute: None,
    };
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec).unwrap();
    assert_eq!(ledger.device_slot("GPU-a", None).unwrap(), Some(DEV));
    assert_eq!(
        ledger.device_slot("GPU-b", Some(GIB)).unwrap(),
        Some(DeviceSlot::new(1))
    );
    assert_eq!(ledger.device_slot("GPU-a", None).unwrap(), Some(DEV));
    let devices = ledger.devices();
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1].uuid, "GPU-b");
    // Without any limit, a device stays unlimited and gets no entry.
    let bare = Ledger::create_or_open(&dir.path().join("bare"), &LedgerSpec::default()).unwrap();
    assert_eq!(bare.device_slot("GPU-a", None).unwrap(), None);
    assert!(bare.devices().is_empty());
}

#[test]
fn concurrent_device_claims_make_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let spec = LedgerSpec {
        name: "race".into(),
        default_limit: Some(GIB),
        devices: vec![],
        compute: None,
    };
    Ledger::create_or_open(&path, &spec).unwrap();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let l = Ledger::open(&path).unwrap();
                (0..4)
                    .map(|d| {
                        l.device_slot(&format!("GPU-{}", (d + i) % 4), None)
                            .unwrap()
                    })
                    .count()
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let ledger = Ledger::open(&path).unwrap();
    let mut uuids: Vec<_> = ledger.devices().into_iter().map(|d| d.uuid).collect();
    uuids.sort();
    assert_eq!(uuids, ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]);
}

#[test]
fn racing_threads_never_commit_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let limit = 64 * MIB;
    // One process, as the interposer has it: every thread charges the process's one
    // entry (a second registration of the same process would sweep the first: it
    // stands for an earlier program image of the process).
    let me = Ledger::create_or_open(&path, &spec(limit))
        .unwrap()
        .register()
        .unwrap();
    let committed = Arc::new(AtomicU64::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let (path, committed, over, successes) = (
                path.clone(),
                committed.clone(),
                over.clone(),
                successes.clone(),
            );
            std::thread::spawn(move || {
                let ledger = Ledger::open(&path).unwrap();
                for i in 0..3000u64 {
                    let bytes = ((t * 7 + i * 13) % 9 + 1) * 3 * MIB;
                    if ledger.try_charge(me, DEV, bytes).is_ok() {
                        let now = committed.fetch_add(bytes, SeqCst) + bytes;
                        if now > limit {
                            over.store(true, SeqCst);
                        }
                        successes.fetch_add(1, SeqCst);
                        committed.fetch_sub(bytes, SeqCst);
                        ledger.release(me, DEV, bytes);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(!over.load(SeqCst), "committed charges exceeded the limit");
    assert!(
        successes.load(SeqCst) > 3000,
        "too few reservations succeeded: {}",
        successes.load(SeqCst)
    );
    let ledger = Ledger::open(&path).unwrap();
    assert_eq!(ledger.used(DEV), 0);
    ledger.unregister(me);
}

#[test]
fn dead_processes_are_swept_and_live_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    // Registering twice from one process looks like an exec; forge the first entry's
    // owner before the second registration.
    let dead = ledger.register().unwrap();
    ledger.try_charge(dead, DEV, 800 * MIB).unwrap();
    ledger.forge_owner(dead, dead_pid());
    let live = ledger.register().unwrap();
    ledger.try_charge(live, DEV, 100 * MIB).unwrap();
    assert!(ledger.try_charge(live, DEV, 200 * MIB).is_err());
    let info = ledger.processes();
    assert_eq!(
        info.iter().filter(|p| p.liveness == Liveness::Dead).count(),
        1
    );
    assert_eq!(ledger.sweep_dead(), 1);
    assert_eq!(ledger.used(DEV), 100 * MIB);
    ledger.try_charge(live, DEV, 200 * MIB).unwrap();
    assert_eq!(ledger.processes().len(), 1);
    let me = current_identity();
    let entry = &ledger.processes()[0];
    assert_eq!(
        (entry.pid, entry.pid_ns, entry.start_time),
        (me.pid, me.pid_ns, me.start_time)
    );
}

#[test]
fn a_reused_pid_is_not_mistaken_for_the_owner() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    let slot = ledger.register().unwrap();
    ledger.try_charge(slot, DEV, MIB).unwrap();
    // Same (live) PID, different start time: the owner is gone and the PID was reused.
    ledger.process(slot.0).start_time.store(1, SeqCst);
    assert_eq!(ledger.sweep_dead(), 1);
    assert_eq!(ledger.used(DEV), 0);
}

#[test]
fn registering_again_after_exec_drops_the_old_image_entry() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    let before_exec = ledger.register().unwrap();
    ledger.try_charge(before_exec, DEV, 300 * MIB).unwrap();
    // Same PID and start time registering again is a new program image of this process.
    let after_exec = ledger.register().unwrap();
    assert_eq!(ledger.used(DEV), 0);
    assert_eq!(ledger.processes().len(), 1);
    assert_eq!(ledger.processes()[0].slot, after_exec);
}

#[test]
fn an_interrupted_sweep_is_finished_by_the_next_sweeper() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = Ledger::create_or_open(&dir.path().join("l"), &spec(GIB)).unwrap();
    let slot = ledger.register().unwrap();
    ledger.try_charge(slot, DEV, 10 * MIB).unwrap();
    ledger
        .process(slot.0)
        .owner
        .store(OWNER_RECLAIMING | dead_pid() as u64, SeqCst);
    assert_eq!(ledger.sweep_dead(), 1);
    assert_eq!(ledger.used(DEV), 0);
}

/// Worker for the multi-process test: runs only when the parent test starts it.
#[test]
#[ignore = "started by racing_processes_never_commit_past_the_limit"]
fn ledger_worker_process() {
    let Ok(path) = std::env::var("LEDGER_WORKER_PATH") else {
        return;
    };
    let counter_path = std::env::var("LEDGER_WORKER_COUNTER").unwrap();
    let ledger = Ledger::open(Path::new(&path)).unwrap();
    let counter_file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&counter_path)
        .unwrap();
    // SAFETY: a private test file of 16 bytes, used only through atomics.
    let counter_map = unsafe { memmap2::MmapMut::map_mut(&counter_file) }.unwrap();
    // SAFETY: the mapping is page aligned and 16 bytes long: two u64 atomics.
    let counters = unsafe { &*counter_map.as_ptr().cast::<[AtomicU64; 2]>() };
    let limit = ledger.limit(DEV);
    let me = ledger.register().unwrap();
    let salt = std::process::id() as u64;
    for i in 0..2000u64 {
        let bytes = ((salt + i * 13) % 9 + 1) * 3 * MIB;
        if ledger.try_charge(me, DEV, bytes).is_ok() {
            let now = counters[0].fetch_add(bytes, SeqCst) + bytes;
            if now > limit {
                counters[1].store(1, SeqCst);
            }
            counters[0].fetch_sub(bytes, SeqCst);
            ledger.release(me, DEV, bytes);
        }
    }
    // Keep a charge and die without unregistering: the parent must sweep it.
    ledger.try_charge(me, DEV, 3 * MIB).unwrap_or(());
}

#[test]
fn racing_processes_never_commit_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l");
    let limit = 40 * MIB;
    Ledger::create_or_open(&path, &spec(limit)).unwrap();
    let counter = dir.path().join("counter");
    fs::write(&counter, [0u8; 16]).unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "tests::ledger_worker_process",
                    "--ignored",
                    "--quiet",
                ])
                .env("LEDGER_WORKER_PATH", &path)
                .env("LEDGER_WORKER_COUNTER", &counter)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let bytes = fs::read(&counter).unwrap();
    assert_eq!(
        &bytes[8..16],
        &[0u8; 8],
        "committed charges exceeded the limit across processes"
    );
    let ledger = Ledger::open(&path).unwrap();
    assert!(
        ledger.used(DEV) > 0,
        "the dead workers' last charges should still be there"
    );
    assert_eq!(ledger.sweep_dead(), 4);
    assert_eq!(ledger.used(DEV), 0);
}
