//! Unit tests of the slice's accounting policy against a scripted driver (the
//! `DriverQueries` seam): what NVML says a process uses, what pools and the graph memory
//! pool reserve.

use super::*;
use crate::compute::Compute;
use gpuslice_config::{ComputeLimits, LogLevel, MemoryLimits};
use std::sync::atomic::AtomicU32;

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const UUID: &str = "GPU-00000000-1111-2222-3333-444444444444";

/// A driver whose answers the test sets; it counts the NVML measurements.
#[derive(Default)]
struct ScriptedDriver {
    /// What NVML says this process uses (`None`: it does not list the process).
    process_memory: Mutex<Option<u64>>,
    measurements: AtomicU32,
    pool_reserved: Mutex<HashMap<usize, u64>>,
    graph_reserved: Mutex<HashMap<CUdevice, u64>>,
}

impl DriverQueries for ScriptedDriver {
    fn current_device(&self) -> Result<CUdevice, CUresult> {
        Ok(0)
    }
    fn device_uuid(&self, dev: CUdevice) -> Result<String, CUresult> {
        if dev == 0 {
            Ok(UUID.to_string())
        } else {
            Err(CUDA_ERROR_INVALID_VALUE)
        }
    }
    fn nvml_init(&self) -> bool {
        true
    }
    fn nvml_index(&self, _uuid: &str) -> Option<u32> {
        Some(0)
    }
    fn process_memory(&self, uuid: &str, pid: u32) -> Option<u64> {
        assert_eq!((uuid, pid), (UUID, std::process::id()));
        self.measurements.fetch_add(1, Relaxed);
        *lock(&self.process_memory)
    }
    fn pool_reserved(&self, pool: usize) -> Option<u64> {
        lock(&self.pool_reserved).get(&pool).copied()
    }
    fn graph_reserved(&self, dev: CUdevice) -> Option<u64> {
        lock(&self.graph_reserved).get(&dev).copied()
    }
}

/// A slice limited to `limit` bytes on device 0, in a ledger of its own; the folder
/// goes when the returned guard does.
fn slice(limit: u64) -> (tempfile::TempDir, Slice<ScriptedDriver>, DeviceSlot) {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("test.ledger");
    let spec = LedgerSpec {
        name: "test".into(),
        default_limit: Some(limit),
        devices: Vec::new(),
        compute: None,
    };
    let ledger = Ledger::create_or_open_as(&path, &spec, Owners::Mine).expect("a ledger");
    let entry = ledger.register().expect("a process entry");
    let config = SliceConfig {
        memory: MemoryLimits {
            all_devices: Some(limit),
            per_device: Vec::new(),
        },
        ledger_path: Some(path.display().to_string()),
        ledger_dir: None,
        slice_name: Some("test".into()),
        log_level: LogLevel::Off,
        memory_source: "the test".into(),
        compute: ComputeLimits::default(),
        gpu_dir: dir.path().display().to_string(),
        pinned_file: None,
        smi_ioctl: None,
    };
    let compute = Compute::new(ComputeSettings::of(&config, &path, "test"));
    let s = Slice::from_parts(
        config,
        ledger,
        entry,
        "test".into(),
        compute,
        ScriptedDriver::default(),
    );
    let device = s
        .device_entry(0)
        .expect("device 0 resolves")
        .expect("device 0 is limited");
    (dir, s, device)
}

/// Charges and records an allocation of `bytes`, as the allocation hooks do.
fn allocate(s: &Slice<ScriptedDriver>, device: DeviceSlot, key: u64, bytes: u64, visible: bool) {
    s.reserve(device, bytes, "test allocation").expect("fits");
    s.remember(
        Key::Pointer(key),
        Charge {
            device,
            bytes,
            visible_to_nvml: visible,
        },
    );
}

#[test]
fn a_new_context_is_charged_the_default_estimate_until_one_is_measured() {
    let (_dir, s, device) = slice(8 * GIB);
    assert_eq!(s.context_estimate(device), DEFAULT_CONTEXT_ESTIMATE);
    let charge = s.reserve_context(device).expect("fits");
    assert_eq!(charge.bytes, DEFAULT_CONTEXT_ESTIMATE);
    assert_eq!(s.used(device), DEFAULT_CONTEXT_ESTIMATE);
    // Far from the limit, the new context is not measured.
    assert!(s.context_created(&charge));
    assert_eq!(s.driver.measurements.load(Relaxed), 0);
    assert_eq!(s.context_bytes(device), DEFAULT_CONTEXT_ESTIMATE);
}

#[test]
fn a_context_the_driver_did_not_create_gives_its_charge_back() {
    let (_dir, s, device) = slice(8 * GIB);
    let charge = s.reserve_context(device).expect("fits");
    s.cancel_context(charge);
    assert_eq!(s.used(device), 0);
    assert_eq!(s.context_bytes(device), 0);
}

#[test]
fn a_measurement_charges_what_the_books_do_not_explain_and_teaches_the_estimate() {
    let (_dir, s, device) = slice(8 * GIB);
    allocate(&s, device, 0x1000, GIB, true);
    // Managed memory is charged but NVML never shows it: not context memory.
    allocate(&s, device, 0x2000, 256 * MIB, false);
    *lock(&s.driver.process_memory) = Some(GIB + 300 * MIB);
    assert!(s.refresh_overhead(device, true));
    assert_eq!(s.context_bytes(device), 300 * MIB);
    assert_eq!(s.charged(device), GIB + 256 * MIB + 300 * MIB);
    assert_eq!(s.ledger.context_estimate(device), Some(300 * MIB));
    // The next context is charged what this one was measured to take.
    let charge = s.reserve_context(device).expect("fits");
    assert_eq!(charge.bytes, 300 * MIB);
    s.cancel_context(charge);
    // Context memory that went away is given back at the next measurement.
    *lock(&s.driver.process_memory) = Some(GIB + 100 * MIB);
    assert!(s.refresh_overhead(device, true));
    assert_eq!(s.context_bytes(device), 100 * MIB);
    assert_eq!(s.charged(device), GIB + 256 * MIB + 100 * MIB);
}

#[test]
fn a_process_nvml_does_not_list_keeps_its_charges() {
    let (_dir, s, device) = slice(8 * GIB);
    allocate(&s, device, 0x1000, GIB, true);
    assert!(s.refresh_overhead(device, true));
    assert_eq!(s.driver.measurements.load(Relaxed), 1);
    assert_eq!(s.context_bytes(device), 0);
    assert_eq!(s.charged(device), GIB);
}

#[test]
fn near_the_limit_a_new_context_is_measured_and_refused_when_it_does_not_fit() {
    let (_dir, s, device) = slice(GIB);
    let charge = s.reserve_context(device).expect("the estimate fits");
    // NVML shows the context three times larger than the estimate.
    *lock(&s.driver.process_memory) = Some(3 * DEFAULT_CONTEXT_ESTIMATE);
    assert!(!s.context_created(&charge));
    // Measured once; the growth tried twice, with room made in between, and the
    // refusal counted once.
    assert_eq!(s.driver.measurements.load(Relaxed), 1);
    assert_eq!(s.ledger.refused_allocations(device), 1);
    // The caller destroys the context and gives its charge back.
    s.context_gone(device, charge.bytes);
    assert_eq!(s.used(device), 0);
}

#[test]
fn a_pool_is_charged_what_it_reserves() {
    let (_dir, s, device) = slice(8 * GIB);
    lock(&s.pools).charged.insert(7, (device, 0));
    lock(&s.driver.pool_reserved).insert(7, 64 * MIB);
    s.reconcile_pools();
    assert_eq!(s.charged(device), 64 * MIB);
    lock(&s.driver.pool_reserved).insert(7, 32 * MIB);
    s.reconcile_pools();
    assert_eq!(s.charged(device), 32 * MIB);
    assert_eq!(lock(&s.pools).charged[&7], (device, 32 * MIB));
}

#[test]
fn graph_memory_is_charged_what_the_graph_pool_reserves() {
    let (_dir, s, device) = slice(8 * GIB);
    lock(&s.graphs).charged.insert(0, (device, 0));
    lock(&s.driver.graph_reserved).insert(0, 128 * MIB);
    s.reconcile_graph_memory();
    assert_eq!(s.charged(device), 128 * MIB);
}

#[test]
fn a_refused_charge_first_makes_room_from_pools_that_shrank() {
    let (_dir, s, device) = slice(GIB);
    lock(&s.pools).charged.insert(7, (device, 0));
    lock(&s.driver.pool_reserved).insert(7, 900 * MIB);
    s.reconcile_pools();
    // The pool was trimmed since: only re-reading it makes room for the request.
    lock(&s.driver.pool_reserved).insert(7, 100 * MIB);
    assert_eq!(s.reserve(device, 512 * MIB, "test allocation"), Ok(()));
    assert_eq!(s.used(device), 612 * MIB);
    assert_eq!(s.ledger.refused_allocations(device), 0);
    // What does not fit even then is refused as a full GPU would, and counted once.
    assert_eq!(
        s.reserve(device, 512 * MIB, "test allocation"),
        Err(CUDA_ERROR_OUT_OF_MEMORY)
    );
    assert_eq!(s.ledger.refused_allocations(device), 1);
    assert_eq!(s.used(device), 612 * MIB);
}

#[test]
fn a_freed_allocation_gives_its_charge_back() {
    let (_dir, s, device) = slice(8 * GIB);
    allocate(&s, device, 0x1000, 2 * MIB, true);
    allocate(&s, device, 0x2000, 4 * MIB, false);
    s.forget(Key::Pointer(0x2000));
    s.forget(Key::Pointer(0x1000));
    s.forget(Key::Pointer(0x1000));
    assert_eq!(s.used(device), 0);
    assert_eq!(s.invisible[device.index()].load(Relaxed), 0);
}
