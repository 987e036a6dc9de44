//! Damaged ledgers: hundreds of seeded, reproducible mutations of a valid ledger (random
//! bytes, random words, and state words of device and process entries), written before
//! the file is opened or into the live file after. For each, opening and using the
//! ledger as a process of the slice does (device entries, registering, charging,
//! listing, sweeping) must end in bounded time, without a crash, and every error must
//! name the file.
//!
//! The cases run in a child process under a watchdog (`test_support`): a case that
//! hangs is killed and named, instead of hanging the test run.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use super::*;
use crate::test_support::run_worker;
use std::fs::{self, OpenOptions};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;
const UUID: &str = "GPU-00000000-0000-4000-8000-000000000000";
const OTHER: &str = "GPU-00000000-0000-4000-8000-000000000001";
/// Random cases after the fixed ones.
const RANDOM_CASES: usize = 500;
const SEED: u64 = 0x6770_7573_6c69_6365;
/// Byte offset of the first device entry's state word: where the field report's
/// corruption (`0x8012000000000000`) was written.
const FIRST_DEVICE_STATE: usize = 192;

#[derive(Clone, Copy)]
enum Mutation {
    Byte { at: usize, value: u8 },
    Word { at: usize, value: u64 },
}

impl std::fmt::Debug for Mutation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mutation::Byte { at, value } => write!(f, "byte {at} = {value:#04x}"),
            Mutation::Word { at, value } => write!(f, "word {at} = {value:#018x}"),
        }
    }
}

impl Mutation {
    fn apply(self, file: &File) {
        match self {
            Mutation::Byte { at, value } => file.write_all_at(&[value], at as u64),
            Mutation::Word { at, value } => file.write_all_at(&value.to_ne_bytes(), at as u64),
        }
        .expect("write a mutation");
    }
}

#[derive(Debug, Clone, Copy)]
struct Case {
    mutations: [Option<Mutation>; 3],
    /// Written into the live file after it was opened, rather than before.
    live: bool,
}

/// A word of the shape of a state or owner word: two state bits and a payload.
fn state_like(rng: &mut fastrand::Rng) -> u64 {
    let payload = match rng.u8(0..3) {
        0 => 0,
        1 => rng.u64(..1 << 32),
        _ => rng.u64(..1 << 62),
    };
    (rng.u64(0..4) << 62) | payload
}

fn interesting(rng: &mut fastrand::Rng) -> u64 {
    match rng.u8(0..6) {
        0 => 0,
        1 => u64::MAX,
        2 => 1 << 63,
        3 => rng.u64(..1 << 20),
        4 => state_like(rng),
        _ => rng.u64(..),
    }
}

fn random_mutation(rng: &mut fastrand::Rng) -> Mutation {
    // The header, the device table and the first process entries: where a damaged
    // word matters.
    let hot = layout::process_offset(8);
    match rng.u8(0..5) {
        0 => Mutation::Byte {
            at: rng.usize(..hot),
            value: rng.u8(..),
        },
        1 => Mutation::Byte {
            at: rng.usize(..layout::total_bytes()),
            value: rng.u8(..),
        },
        2 => Mutation::Word {
            at: rng.usize(..hot / 8) * 8,
            value: interesting(rng),
        },
        3 => Mutation::Word {
            at: layout::device_offset(rng.usize(..4)),
            value: state_like(rng),
        },
        _ => Mutation::Word {
            at: layout::process_offset(rng.usize(..8)),
            value: state_like(rng),
        },
    }
}

fn cases() -> Vec<Case> {
    let word = |at, value| Case {
        mutations: [Some(Mutation::Word { at, value }), None, None],
        live: false,
    };
    let mut cases = vec![
        // The field report: a device state word with READY's bits and more.
        word(FIRST_DEVICE_STATE, 0x8012_0000_0000_0000),
        word(FIRST_DEVICE_STATE, DEVICE_READY | 1),
        word(FIRST_DEVICE_STATE, 3 << 62),
        word(FIRST_DEVICE_STATE, DEVICE_CLAIMING | (1 << 40)),
        word(FIRST_DEVICE_STATE, DEVICE_CLAIMING),
        // Claimed by a process that stays alive (init): waited for, then refused.
        word(layout::device_offset(2), DEVICE_CLAIMING | 1),
        word(layout::process_offset(0), OWNER_RECLAIMING | 1),
        word(layout::process_offset(1), 3),
        word(std::mem::offset_of!(layout::Header, high_water), u64::MAX),
    ];
    let live: Vec<Case> = cases.iter().map(|c| Case { live: true, ..*c }).collect();
    cases.extend(live);
    let mut rng = fastrand::Rng::with_seed(SEED);
    for _ in 0..RANDOM_CASES {
        let mut mutations = [None; 3];
        for m in mutations.iter_mut().take(rng.usize(1..=3)) {
            *m = Some(random_mutation(&mut rng));
        }
        cases.push(Case {
            mutations,
            live: rng.bool(),
        });
    }
    cases
}

/// A valid ledger with two devices, this process registered with charges, an entry of
/// a dead process, and one being swept.
fn base_image(path: &Path) -> Vec<u8> {
    let spec = LedgerSpec {
        name: "mutations".into(),
        default_limit: Some(GIB),
        devices: vec![(UUID.into(), 4 * GIB)],
        compute: Some((30, Some(60))),
    };
    let ledger = Ledger::create_or_open(path, &spec).unwrap();
    let dev = ledger.device_slot(UUID, Some(4 * GIB)).unwrap().unwrap();
    let other = ledger.device_slot(OTHER, None).unwrap().unwrap();
    let dead = ledger.register().unwrap();
    ledger.try_charge(dead, dev, 100 * MIB).unwrap();
    ledger.forge_owner(dead, crate::tests::dead_pid());
    let reclaiming = ledger.register().unwrap();
    ledger.try_charge(reclaiming, other, 10 * MIB).unwrap();
    ledger
        .process(reclaiming.0)
        .owner
        .store(OWNER_RECLAIMING | crate::tests::dead_pid() as u64, SeqCst);
    let me = ledger.register().unwrap();
    ledger.try_charge(me, dev, 300 * MIB).unwrap();
    ledger.set_context_bytes(me, dev, 200 * MIB);
    drop(ledger);
    fs::read(path).unwrap()
}

/// Uses the ledger as a process of the slice would; returns the errors met.
fn exercise(ledger: &Ledger) -> Vec<LedgerError> {
    let mut errors = Vec::new();
    let mut devices = Vec::new();
    for (uuid, limit) in [(UUID, Some(4 * GIB)), (OTHER, None), ("GPU-new", Some(GIB))] {
        match ledger.device_slot(uuid, limit) {
            Ok(Some(d)) => devices.push(d),
            Ok(None) => {}
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = ledger.agree_compute_limits(Some((30, Some(60)))) {
        errors.push(e);
    }
    let _ = (
        ledger.name(),
        ledger.default_limit(),
        ledger.compute_limits(),
    );
    let slot = ledger.register().map_err(|e| errors.push(e)).ok();
    for &d in &devices {
        let _ = (ledger.limit(d), ledger.used(d), ledger.context_estimate(d));
        if let Some(slot) = slot {
            if ledger.try_charge(slot, d, 64 * MIB).is_ok() {
                ledger.release(slot, d, 64 * MIB);
            }
            ledger.force_charge(slot, d, MIB);
            let _ = ledger.charged(slot, d);
        }
    }
    let _ = (ledger.processes(), ledger.devices());
    ledger.sweep_dead();
    ledger.sweep_identities(|pid, _, start| !process_is_alive(pid, start));
    if let Some(slot) = slot {
        ledger.unregister(slot);
    }
    errors
}

/// Runs every case; prints a line before each so that the watchdog can name a hang.
#[test]
#[ignore = "started by damaged_ledgers_are_refused_or_survived_in_bounded_time"]
fn mutation_worker() {
    let Some(dir) = std::env::var_os("LEDGER_MUTATION_DIR") else {
        return;
    };
    let path = Path::new(&dir).join("damaged.ledger");
    let image = base_image(&path);
    let mut opened = 0;
    let mut refused = 0;
    let mut failed = 0;
    for (n, case) in cases().iter().enumerate() {
        println!("case {n}: {case:?}");
        fs::write(&path, &image).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let mutate = || case.mutations.iter().flatten().for_each(|m| m.apply(&file));
        if !case.live {
            mutate();
        }
        let errors = match Ledger::open(&path) {
            Ok(ledger) => {
                opened += 1;
                if case.live {
                    mutate();
                }
                exercise(&ledger)
            }
            Err(e) => {
                refused += 1;
                vec![e]
            }
        };
        for e in errors {
            if !e.to_string().contains(&*path.to_string_lossy()) {
                println!("FAILED case {n}: the error does not name the file: {e}");
                failed += 1;
            }
        }
    }
    println!("opened {opened}, refused {refused}, failed {failed}");
    if failed == 0 {
        println!("ALL CASES DONE");
    }
}

#[test]
fn damaged_ledgers_are_refused_or_survived_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let done = run_worker(
        "mutation_tests::mutation_worker",
        &[("LEDGER_MUTATION_DIR", dir.path().as_os_str())],
        // Each case takes milliseconds (a claim held by a live process: 2 s).
        Duration::from_secs(30),
    );
    assert!(
        done.status.success() && done.said("ALL CASES DONE"),
        "the mutation worker failed ({}):\n{}",
        done.status,
        done.tail()
    );
}
