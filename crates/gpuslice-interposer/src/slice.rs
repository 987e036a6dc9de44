//! The slice as this process sees it: the ledger entry it charges, the devices it has
//! met, the books of what it allocated (so that frees give charges back), and the
//! accounting policy: what a new context is charged, when context and module memory is
//! re-measured, how pools and graph memory are reconciled, how room is made before a
//! refusal.
//!
//! The policy asks the driver only through [`DriverQueries`]: [`RealDriver`] in the
//! process, a scripted one in this file's unit tests.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, AtomicU8, AtomicU64, Ordering::*};
use std::time::Instant;

use gpuslice_config::{SliceConfig, human_size};
use gpuslice_ledger::{DeviceSlot, Ledger, LedgerSpec, Owners, ProcessSlot};

use crate::books::{Charge, GraphBook, Key, PoolBook, set_tracked};
use crate::compute::ComputeSettings;
use crate::ffi::*;
use crate::lock::lock;
use crate::log::{log_at, report_broken_once};

/// Which book's lock a caller of [`Slice::reserve_holding`] holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// None.
    Nothing,
    /// The pool book.
    Pools,
    /// The graph book.
    Graphs,
}

/// `Slice::primary` while the charge of a claimed primary context is under way.
const PRIMARY_CLAIMED: u64 = 1;

/// A context's charge, taken before the driver creates the context: given back with
/// [`Slice::cancel_context`] if the driver fails, made context memory with
/// [`Slice::context_created`] if it succeeds.
#[must_use]
pub struct ContextCharge {
    /// Ledger device entry.
    pub device: DeviceSlot,
    /// Bytes charged.
    pub bytes: u64,
}

/// Who charges the primary context at a retain.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PrimaryClaim {
    /// This retain: it charges the context before the driver activates it.
    Mine,
    /// Another thread of this process is charging it now.
    Pending,
    /// It is charged already: the retain only adds a reference.
    Charged,
}

/// What a new context is charged before anyone in the slice has measured one (a CUDA 12
/// or 13 context with its first modules takes about 500 MiB on Hopper).
const DEFAULT_CONTEXT_ESTIMATE: u64 = 512 << 20;
/// When less than this (plus the request) is left in the slice, context and module
/// memory is re-measured before charging.
const TIGHT_ROOM: u64 = 1 << 30;

const DEVICE_UNRESOLVED: i32 = -2;
const DEVICE_UNLIMITED: i32 = -1;
const MAX_ORDINALS: usize = 64;

/// The driver queries the slice's accounting makes: all it asks the CUDA driver and
/// NVML. [`RealDriver`] asks the real ones; generic, so that a hook pays no dispatch.
pub trait DriverQueries {
    /// The CUDA device of the current context.
    fn current_device(&self) -> Result<CUdevice, CUresult>;
    /// The UUID of CUDA device `dev` (`GPU-...`).
    fn device_uuid(&self, dev: CUdevice) -> Result<String, CUresult>;
    /// Initialises NVML; false when there is none.
    fn nvml_init(&self) -> bool;
    /// NVML's index of the GPU with `uuid`.
    fn nvml_index(&self, uuid: &str) -> Option<u32>;
    /// Device memory NVML attributes to process `pid` on the GPU with `uuid` (contexts
    /// and modules included); `None` when NVML cannot say.
    fn process_memory(&self, uuid: &str, pid: u32) -> Option<u64>;
    /// The memory a stream-ordered pool reserves from its device now.
    fn pool_reserved(&self, pool: usize) -> Option<u64>;
    /// The memory the graph memory pool of CUDA device `dev` reserves now.
    fn graph_reserved(&self, dev: CUdevice) -> Option<u64>;
}

/// The real CUDA driver and NVML, through `real.rs` and `nvml.rs`.
#[derive(Clone, Copy, Default)]
pub struct RealDriver;

impl DriverQueries for RealDriver {
    #[inline]
    fn current_device(&self) -> Result<CUdevice, CUresult> {
        crate::real::current_cuda_device()
    }
    fn device_uuid(&self, dev: CUdevice) -> Result<String, CUresult> {
        crate::real::device_uuid(dev)
    }
    fn nvml_init(&self) -> bool {
        crate::nvml::init()
    }
    fn nvml_index(&self, uuid: &str) -> Option<u32> {
        crate::nvml::index_of(uuid)
    }
    fn process_memory(&self, uuid: &str, pid: u32) -> Option<u64> {
        crate::nvml::process_memory(uuid, pid)
    }
    fn pool_reserved(&self, pool: usize) -> Option<u64> {
        crate::real::pool_attribute(pool as CUmemoryPool, CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)
    }
    fn graph_reserved(&self, dev: CUdevice) -> Option<u64> {
        crate::real::graph_mem_attribute(dev, CU_GRAPH_MEM_ATTR_RESERVED_MEM_CURRENT)
    }
}

/// The slice as this process sees it.
pub struct Slice<D: DriverQueries = RealDriver> {
    /// The configuration.
    pub config: SliceConfig,
    /// The shared ledger.
    pub ledger: Ledger,
    /// This process's entry in it.
    pub entry: ProcessSlot,
    /// The PID that built this state.
    pub pid: u32,
    /// The slice's name for messages.
    pub name: String,
    devices: [AtomicI32; MAX_ORDINALS],
    /// Allocations charged one by one.
    pub allocations: Mutex<HashMap<Key, Charge>>,
    /// Stream-ordered pools.
    pub pools: Mutex<PoolBook>,
    /// Graph memory.
    pub graphs: Mutex<GraphBook>,
    /// Compute limits: the gates of this process's contexts.
    pub compute: crate::compute::Compute,
    /// Per ledger device entry: bytes charged for context and module memory.
    overhead: [AtomicU64; gpuslice_ledger::MAX_DEVICES],
    /// Per ledger device entry: bytes charged that NVML's per-process usage never shows
    /// (managed memory).
    invisible: [AtomicU64; gpuslice_ledger::MAX_DEVICES],
    overhead_lock: Mutex<()>,
    /// Per ledger device entry: bytes charged for contexts the driver is creating now
    /// (charged before the driver call, not yet context memory NVML could show).
    pending_contexts: [AtomicU64; gpuslice_ledger::MAX_DEVICES],
    /// Per ledger device entry: bytes charged for this process's primary context while
    /// it is active (0: not charged).
    primary: [AtomicU64; gpuslice_ledger::MAX_DEVICES],
    last_overhead_check_ms: AtomicU64,
    started: Instant,
    nvml_ready: AtomicU8,
    /// What the policy asks the driver.
    driver: D,
}

impl Slice {
    /// Joins the slice `config` describes: checks the GPUs it names are present, opens
    /// (or creates) its ledger and registers this process in it.
    pub fn build(config: SliceConfig) -> Result<Slice, String> {
        crate::presence::check(&config)?;
        let path = match &config.ledger_path {
            Some(p) => std::path::PathBuf::from(p),
            None => config
                .ledger_dir
                .as_ref()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(gpuslice_ledger::default_ledger_dir)
                .join(config.derived_ledger_file_name()),
        };
        // A ledger named by the read-only pinned configuration was mounted by the
        // container runtime, and its owner may show as an unmapped uid (user
        // namespaces); any other must be this user's or root's, in a folder that no
        // other user can swap it in.
        let owners = if config.pinned_file.is_some() {
            Owners::Anyone
        } else {
            Owners::Mine
        };
        let name = config.slice_name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "default".into())
        });
        let compute_limits = config.compute.shares.map(|s| s.to_pair());
        let spec = LedgerSpec {
            name: name.clone(),
            // A compute budget lives in a device entry: with no memory limit the
            // devices are entered with an unlimited one.
            default_limit: config
                .memory
                .all_devices
                .or(compute_limits.map(|_| u64::MAX)),
            devices: Vec::new(),
            compute: compute_limits,
        };
        let ledger = Ledger::create_or_open_as(&path, &spec, owners).map_err(|e| e.to_string())?;
        ledger
            .agree_compute_limits(compute_limits)
            .map_err(|e| e.to_string())?;
        let entry = ledger.register().map_err(|e| e.to_string())?;
        let name = if config.slice_name.is_some() {
            name
        } else {
            ledger.name()
        };
        log_at!(
            Debug,
            "process {} joined slice '{}' (ledger {})",
            std::process::id(),
            name,
            path.display()
        );
        let compute = crate::compute::Compute::new(ComputeSettings::of(&config, &path, &name));
        Ok(Slice::from_parts(
            config, ledger, entry, name, compute, RealDriver,
        ))
    }
}

impl<D: DriverQueries> Slice<D> {
    /// A slice of this process from its parts: `entry` is this process's entry in
    /// `ledger`, and `driver` answers the policy's queries.
    pub fn from_parts(
        config: SliceConfig,
        ledger: Ledger,
        entry: ProcessSlot,
        name: String,
        compute: crate::compute::Compute,
        driver: D,
    ) -> Self {
        Slice {
            config,
            ledger,
            entry,
            pid: std::process::id(),
            name,
            devices: [const { AtomicI32::new(DEVICE_UNRESOLVED) }; MAX_ORDINALS],
            allocations: Mutex::new(HashMap::new()),
            pools: Mutex::new(PoolBook::default()),
            graphs: Mutex::new(GraphBook::default()),
            compute,
            overhead: [const { AtomicU64::new(0) }; gpuslice_ledger::MAX_DEVICES],
            invisible: [const { AtomicU64::new(0) }; gpuslice_ledger::MAX_DEVICES],
            overhead_lock: Mutex::new(()),
            pending_contexts: [const { AtomicU64::new(0) }; gpuslice_ledger::MAX_DEVICES],
            primary: [const { AtomicU64::new(0) }; gpuslice_ledger::MAX_DEVICES],
            last_overhead_check_ms: AtomicU64::new(0),
            started: Instant::now(),
            nvml_ready: AtomicU8::new(0),
            driver,
        }
    }

    /// The ledger device entry of CUDA device `dev`, `None` when the slice does not limit
    /// it. Errors are driver codes to return.
    pub fn device_entry(&self, dev: CUdevice) -> Result<Option<DeviceSlot>, CUresult> {
        let Some(cell) = usize::try_from(dev).ok().and_then(|d| self.devices.get(d)) else {
            return Err(CUDA_ERROR_INVALID_VALUE);
        };
        match cell.load(Relaxed) {
            DEVICE_UNLIMITED => return Ok(None),
            DEVICE_UNRESOLVED => {}
            // Cached slots are indexes, never negative: anything else is looked up again.
            slot => {
                if let Ok(slot) = usize::try_from(slot) {
                    return Ok(Some(DeviceSlot::new(slot)));
                }
            }
        }
        let uuid = self.driver.device_uuid(dev)?;
        let index = if self.config.memory.has_index_selectors() {
            self.ensure_nvml();
            match self.driver.nvml_index(&uuid) {
                Some(i) => Some(i),
                None => {
                    report_broken_once(&format!(
                        "{} sets a limit by device index, but NVML cannot tell the index of {uuid}; use UUIDs instead",
                        self.config.memory_source
                    ));
                    return Err(CUDA_ERROR_NOT_PERMITTED);
                }
            }
        } else {
            None
        };
        let config_limit = self
            .config
            .memory
            .per_device
            .iter()
            .find(|(s, _)| s.matches(index, &uuid))
            .map(|(_, l)| *l);
        let config_limit = config_limit.or(self.config.memory.all_devices).or(self
            .config
            .compute
            .is_limited()
            .then_some(u64::MAX)
            .filter(|_| self.config.memory.is_empty()));
        match self.ledger.device_slot(&uuid, config_limit) {
            Ok(Some(slot)) => {
                // An index is below MAX_DEVICES; one that did not fit would stay
                // unresolved (looked up again next time).
                if let Ok(index) = i32::try_from(slot.index()) {
                    cell.store(index, Relaxed);
                }
                let limit = self.ledger.limit(slot);
                if limit == u64::MAX {
                    log_at!(Info, "slice '{}': {uuid}: no memory limit", self.name);
                } else {
                    log_at!(
                        Info,
                        "slice '{}': {uuid} limited to {}",
                        self.name,
                        human_size(limit)
                    );
                }
                Ok(Some(slot))
            }
            Ok(None) => {
                cell.store(DEVICE_UNLIMITED, Relaxed);
                Ok(None)
            }
            Err(e) => {
                report_broken_once(&e.to_string());
                Err(CUDA_ERROR_NOT_PERMITTED)
            }
        }
    }

    /// The ledger device entry of the current context's device.
    pub fn current_device(&self) -> Result<(CUdevice, Option<DeviceSlot>), CUresult> {
        let dev = self.driver.current_device()?;
        Ok((dev, self.device_entry(dev)?))
    }

    /// Reserves `bytes` on a device entry; on refusal first makes room (sweeps dead
    /// processes, re-reads pools and graph memory), then logs and returns OOM.
    pub fn reserve(&self, device: DeviceSlot, bytes: u64, what: &str) -> Result<(), CUresult> {
        self.reserve_holding(device, bytes, what, Holding::Nothing)
    }

    /// [`Slice::reserve`] for a caller that holds one of the books' locks (that book is
    /// then not re-read).
    pub fn reserve_holding(
        &self,
        device: DeviceSlot,
        bytes: u64,
        what: &str,
        holding: Holding,
    ) -> Result<(), CUresult> {
        self.refresh_overhead_if_tight(device, bytes);
        match self.try_charge_making_room(device, bytes, holding) {
            Ok(()) => Ok(()),
            Err(refusal) => {
                crate::log::refusal(format_args!(
                    "slice '{}' on {}: {what} of {} refused: the slice's limit is {} and {} is in use",
                    self.name,
                    self.ledger.uuid(device),
                    human_size(bytes),
                    human_size(refusal.limit),
                    human_size(refusal.used),
                ));
                Err(CUDA_ERROR_OUT_OF_MEMORY)
            }
        }
    }

    /// Tries a charge; if it does not fit, makes room (sweeps dead processes, re-reads
    /// pools and graph memory, except the book the caller holds) and tries once more.
    /// A refusal is counted in the ledger once, by the second attempt.
    fn try_charge_making_room(
        &self,
        device: DeviceSlot,
        bytes: u64,
        holding: Holding,
    ) -> Result<(), gpuslice_ledger::Refusal> {
        if self
            .ledger
            .try_charge_uncounted(self.entry, device, bytes)
            .is_ok()
        {
            return Ok(());
        }
        self.make_room(holding);
        self.ledger.try_charge(self.entry, device, bytes)
    }

    /// Sweeps dead processes and re-reads pools and graph memory (except the book the
    /// caller holds the lock of).
    fn make_room(&self, holding: Holding) {
        self.ledger.sweep_dead();
        if holding != Holding::Pools {
            self.reconcile_pools();
        }
        if holding != Holding::Graphs {
            self.reconcile_graph_memory();
        }
    }

    /// Gives back a charge.
    pub fn unreserve(&self, device: DeviceSlot, bytes: u64) {
        self.ledger.release(self.entry, device, bytes);
    }

    /// Records a charged allocation.
    pub fn remember(&self, key: Key, charge: Charge) {
        if !charge.visible_to_nvml {
            self.invisible[charge.device.index()].fetch_add(charge.bytes, Relaxed);
        }
        lock(&self.allocations).insert(key, charge);
    }

    /// Forgets an allocation and gives its charge back.
    pub fn forget(&self, key: Key) {
        if let Some(c) = lock(&self.allocations).remove(&key) {
            if !c.visible_to_nvml {
                self.invisible[c.device.index()].fetch_sub(c.bytes, Relaxed);
            }
            self.unreserve(c.device, c.bytes);
        }
    }

    /// Bytes this process has charged on a device entry, by the ledger.
    pub fn charged(&self, device: DeviceSlot) -> u64 {
        self.ledger.charged(self.entry, device)
    }

    /// The slice's usage on a device entry.
    pub fn used(&self, device: DeviceSlot) -> u64 {
        self.ledger.used(device)
    }

    fn ensure_nvml(&self) -> bool {
        match self.nvml_ready.load(Relaxed) {
            1 => true,
            2 => false,
            _ => {
                let ok = self.driver.nvml_init();
                self.nvml_ready.store(if ok { 1 } else { 2 }, Relaxed);
                ok
            }
        }
    }

    /// Re-measures the memory of this process's contexts and modules on a device entry
    /// (what NVML says the process uses, less what the books account for) and charges
    /// the difference. With `strict`, growth that does
    /// not fit is refused instead of forced, returning false.
    pub fn refresh_overhead(&self, device: DeviceSlot, strict: bool) -> bool {
        if !self.ensure_nvml() {
            return true;
        }
        let uuid = self.ledger.uuid(device);
        let Some(measured) = self.driver.process_memory(&uuid, self.pid) else {
            log_at!(Debug, "NVML does not list process {} on {uuid}", self.pid);
            return true;
        };
        log_at!(
            Debug,
            "NVML: process {} uses {measured} bytes on {uuid}",
            self.pid
        );
        for attempt in 0..2 {
            {
                let _guard = lock(&self.overhead_lock);
                let current = self.overhead[device.index()].load(Relaxed);
                // What NVML should show for the allocations the books hold: everything
                // charged except context memory, memory NVML never shows, and contexts
                // being created.
                let accounted = self
                    .charged(device)
                    .saturating_sub(current)
                    .saturating_sub(self.invisible[device.index()].load(Relaxed))
                    .saturating_sub(self.pending_contexts[device.index()].load(Relaxed));
                let wanted = measured.saturating_sub(accounted);
                if wanted > current {
                    let grow = wanted - current;
                    // Only the last attempt counts a refusal: the first is retried.
                    let charged = if attempt == 0 {
                        Ledger::try_charge_uncounted
                    } else {
                        Ledger::try_charge
                    };
                    if !strict {
                        self.ledger.force_charge(self.entry, device, grow);
                    } else if charged(&self.ledger, self.entry, device, grow).is_err() {
                        if attempt == 1 {
                            return false;
                        }
                        // Make room below, without holding the lock (making room
                        // takes the pool and graph locks), then measure again.
                        drop(_guard);
                        self.make_room(Holding::Nothing);
                        continue;
                    }
                } else {
                    self.ledger.release(self.entry, device, current - wanted);
                }
                self.overhead[device.index()].store(wanted, Relaxed);
                self.ledger.set_context_bytes(self.entry, device, wanted);
                if wanted > 0 {
                    self.ledger.set_context_estimate(device, wanted);
                }
                return true;
            }
        }
        false
    }

    /// What a new context is charged before it exists: what a context was last measured
    /// to take in this slice, or a default.
    pub fn context_estimate(&self, device: DeviceSlot) -> u64 {
        self.ledger
            .context_estimate(device)
            .unwrap_or(DEFAULT_CONTEXT_ESTIMATE)
    }

    /// Charges a context that the driver is about to create, by
    /// [`Slice::context_estimate`]. When it does not fit, makes room, re-measures this
    /// process's context memory (contexts destroyed since are given back) and tries once
    /// more; the refusal is counted in the ledger once and returned for the caller to
    /// report.
    pub fn reserve_context(
        &self,
        device: DeviceSlot,
    ) -> Result<ContextCharge, gpuslice_ledger::Refusal> {
        let bytes = self.context_estimate(device);
        let mut last = None;
        for attempt in 0..3 {
            match attempt {
                0 => {}
                1 => self.make_room(Holding::Nothing),
                _ => {
                    if !self.refresh_overhead(device, false) {
                        break;
                    }
                }
            }
            // Charged and marked pending under the lock, so that a measurement in another
            // thread never takes the charge for memory the books do not explain.
            let _guard = lock(&self.overhead_lock);
            match self.ledger.try_charge_uncounted(self.entry, device, bytes) {
                Ok(()) => {
                    self.pending_contexts[device.index()].fetch_add(bytes, Relaxed);
                    return Ok(ContextCharge { device, bytes });
                }
                Err(refusal) => last = Some(refusal),
            }
        }
        self.ledger.count_refusal(device);
        Err(last.unwrap_or(gpuslice_ledger::Refusal {
            used: self.used(device),
            limit: self.ledger.limit(device),
            requested: bytes,
        }))
    }

    /// The driver did not create the context: its charge is given back.
    pub fn cancel_context(&self, charge: ContextCharge) {
        let _guard = lock(&self.overhead_lock);
        self.pending_contexts[charge.device.index()].fetch_sub(charge.bytes, Relaxed);
        self.ledger.release(self.entry, charge.device, charge.bytes);
    }

    /// The driver created the context: its charge becomes context memory, and is set to
    /// what the process is measured to use when the slice is nearly full. False when the measured memory does not fit: the caller
    /// destroys the context and gives its charge back with [`Slice::context_gone`].
    pub fn context_created(&self, charge: &ContextCharge) -> bool {
        let device = charge.device;
        {
            let _guard = lock(&self.overhead_lock);
            self.pending_contexts[device.index()].fetch_sub(charge.bytes, Relaxed);
            let total =
                self.overhead[device.index()].fetch_add(charge.bytes, Relaxed) + charge.bytes;
            self.ledger.set_context_bytes(self.entry, device, total);
        }
        // Measured now only when the slice is nearly full. A slice that has not learned
        // what a context takes learns it at the first `cuMemGetInfo` (or when it is
        // nearly full), after the program's first modules are loaded: measured right at
        // creation, a PyTorch context is about 90 MiB smaller than it soon becomes, and
        // every later context of the slice would be charged that much too little (on the
        // H200, two processes of a 4 GiB slice reached 4164 MiB).
        let room = self.ledger.limit(device).saturating_sub(self.used(device));
        if room < TIGHT_ROOM {
            return self.refresh_overhead(device, true);
        }
        true
    }

    /// A context charged with `bytes` was destroyed: the charge is given back (at most
    /// what context memory is still charged).
    pub fn context_gone(&self, device: DeviceSlot, bytes: u64) {
        let _guard = lock(&self.overhead_lock);
        let current = self.overhead[device.index()].load(Relaxed);
        let give = bytes.min(current);
        if give > 0 {
            self.ledger.release(self.entry, device, give);
            self.overhead[device.index()].store(current - give, Relaxed);
            self.ledger
                .set_context_bytes(self.entry, device, current - give);
        }
    }

    /// Before a retain of the primary context: whether this retain must charge it.
    pub fn claim_primary_context(&self, device: DeviceSlot) -> PrimaryClaim {
        match self.primary[device.index()].compare_exchange(0, PRIMARY_CLAIMED, AcqRel, Acquire) {
            Ok(_) => PrimaryClaim::Mine,
            Err(PRIMARY_CLAIMED) => PrimaryClaim::Pending,
            Err(_) => PrimaryClaim::Charged,
        }
    }

    /// After a successful claim: what the charge came to (the growth of this process's
    /// context bytes), kept to be given back when the context goes. Never left at
    /// [`PRIMARY_CLAIMED`] (threads waiting for the charge would wait for ever), even when
    /// a measurement made the growth nothing.
    pub fn note_primary_charge(&self, device: DeviceSlot, bytes: u64) {
        let _ = self.primary[device.index()].compare_exchange(
            PRIMARY_CLAIMED,
            bytes.max(PRIMARY_CLAIMED + 1),
            AcqRel,
            Acquire,
        );
    }

    /// The claim on a primary context whose charge failed.
    pub fn unclaim_primary_context(&self, device: DeviceSlot) {
        let _ = self.primary[device.index()].compare_exchange(PRIMARY_CLAIMED, 0, AcqRel, Acquire);
    }

    /// Bytes this process has charged for context and module memory on a device entry.
    pub fn context_bytes(&self, device: DeviceSlot) -> u64 {
        self.overhead[device.index()].load(Relaxed)
    }

    /// The driver destroyed this process's primary context on a device entry: its
    /// charge is given back (at most what context memory is still charged).
    pub fn primary_context_gone(&self, device: DeviceSlot) {
        let bytes = self.primary[device.index()].swap(0, AcqRel);
        if bytes != 0 {
            self.context_gone(device, bytes);
        }
    }

    /// Re-measures context and module memory (at most four times a second) when less
    /// than `bytes` plus a margin is left in the slice: elsewhere a small error in the
    /// estimate cannot take the slice past its limit, and NVML stays unloaded.
    pub fn refresh_overhead_if_tight(&self, device: DeviceSlot, bytes: u64) {
        let room = self.ledger.limit(device).saturating_sub(self.used(device));
        if room < bytes.saturating_add(TIGHT_ROOM) {
            self.maybe_refresh_overhead(device, false);
        }
    }

    /// [`Slice::refresh_overhead`] at most four times a second.
    pub fn maybe_refresh_overhead(&self, device: DeviceSlot, force: bool) {
        let now = u64::try_from(self.started.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let last = self.last_overhead_check_ms.load(Relaxed);
        if !force && last != 0 && now.saturating_sub(last) < 250 {
            return;
        }
        if self
            .last_overhead_check_ms
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_ok()
            || force
        {
            self.refresh_overhead(device, false);
        }
    }

    /// Sets a pool's charge to the pool's reserved memory now.
    pub fn reconcile_pools(&self) {
        let mut book = lock(&self.pools);
        let pools: Vec<usize> = book.charged.keys().copied().collect();
        for pool in pools {
            if let Some(reserved) = self.driver.pool_reserved(pool) {
                set_tracked(
                    &self.ledger,
                    self.entry,
                    book.charged.get_mut(&pool),
                    reserved,
                    true,
                );
            }
        }
    }

    /// Sets each device's graph-memory charge to what the graph pool reserves now.
    pub fn reconcile_graph_memory(&self) {
        let mut book = lock(&self.graphs);
        let devices: Vec<CUdevice> = book.charged.keys().copied().collect();
        for dev in devices {
            if let Some(reserved) = self.driver.graph_reserved(dev) {
                set_tracked(
                    &self.ledger,
                    self.entry,
                    book.charged.get_mut(&dev),
                    reserved,
                    true,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
