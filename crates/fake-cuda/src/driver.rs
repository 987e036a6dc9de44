//! The process-wide driver state behind one mutex, the thread-local context stack, and the
//! helpers every entry point uses: fault injection, the initialisation check, out-pointers,
//! handle encoding, device-memory charging and the address allocators.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::c_void;
use std::ptr::NonNull;
use std::sync::{Mutex, OnceLock, PoisonError};

use fake_gpu::fault::FaultPlan;
use fake_gpu::process::current_pid;
use fake_gpu::size::{MIB, env_size, round_up};
use fake_gpu::{ChargeError, GpuConfig, SharedState};

use crate::graph::{Exec, Graph, GraphMem, Node};
use crate::types::*;

/// Tunables read from the environment at `cuInit`.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `FAKE_CUDA_CONTEXT_BYTES`: charged per context.
    pub context_bytes: u64,
    /// `FAKE_CUDA_MODULE_BYTES`: charged per loaded module.
    pub module_bytes: u64,
    /// `FAKE_CUDA_GRANULARITY`: physical allocation granularity.
    pub granularity: u64,
    /// `FAKE_CUDA_POOL_CHUNK`: the step in which memory pools grow.
    pub pool_chunk: u64,
    /// `FAKE_CUDA_SM_UTIL`, `FAKE_CUDA_MEM_UTIL`, `FAKE_CUDA_ENCODER_SESSIONS`,
    /// `FAKE_CUDA_FBC_SESSIONS`: what the process is recorded doing on a device while it
    /// has a context there (default: idle, no sessions).
    pub activity: fake_gpu::Activity,
}

fn env_count(name: &str) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

impl Settings {
    fn from_env() -> Self {
        let nonzero = |v: u64| if v == 0 { 2 * MIB } else { v };
        Self {
            context_bytes: env_size("FAKE_CUDA_CONTEXT_BYTES", 300 * MIB),
            module_bytes: env_size("FAKE_CUDA_MODULE_BYTES", 2 * MIB),
            granularity: nonzero(env_size("FAKE_CUDA_GRANULARITY", 2 * MIB)),
            pool_chunk: nonzero(env_size("FAKE_CUDA_POOL_CHUNK", 2 * MIB)),
            activity: fake_gpu::Activity {
                sm_util: env_count("FAKE_CUDA_SM_UTIL").min(100),
                mem_util: env_count("FAKE_CUDA_MEM_UTIL").min(100),
                encoder_sessions: env_count("FAKE_CUDA_ENCODER_SESSIONS"),
                fbc_sessions: env_count("FAKE_CUDA_FBC_SESSIONS"),
            },
        }
    }
}

/// A context (primary or created).
#[derive(Debug)]
pub struct Context {
    /// Visible device ordinal.
    pub dev: usize,
    /// Whether it is the device's primary context.
    pub primary: bool,
    /// Whether it holds resources (a released primary context is inactive).
    pub active: bool,
}

/// Per visible device: the primary context.
#[derive(Debug)]
pub struct Primary {
    pub ctx: u64,
    pub refs: u32,
    pub flags: u32,
}

/// How a device allocation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocKind {
    /// cuMemAlloc / cuMemAllocPitch / cuMemAllocManaged: charged directly.
    Direct,
    /// From a memory pool; `bytes` (rounded) are part of the pool's `used`.
    Pool { pool: u64, bytes: u64 },
    /// An outstanding graph allocation; part of the graph memory pool's `used`.
    Graph { bytes: u64 },
}

/// A live device allocation.
#[derive(Debug, Clone, Copy)]
pub struct Alloc {
    pub size: u64,
    pub charged: u64,
    pub dev: usize,
    pub ctx: u64,
    pub kind: AllocKind,
}

/// A stream.
#[derive(Debug)]
pub struct Stream {
    pub ctx: u64,
    pub dev: usize,
    /// The graph being captured into, if any.
    pub capture: Option<u64>,
    /// How the capture was begun: its mode, the thread that began it, and whether a
    /// prohibited call has invalidated it.
    pub capture_mode: std::ffi::c_int,
    pub capture_thread: u64,
    pub capture_invalidated: bool,
}

/// A loaded module.
#[derive(Debug)]
pub struct Module {
    pub ctx: u64,
    pub dev: usize,
    pub charged: u64,
}

/// An array or mipmapped array.
#[derive(Debug)]
pub struct Array {
    pub ctx: u64,
    pub dev: usize,
    pub size: u64,
    pub charged: u64,
    pub mipmapped: bool,
}

/// Everything the fake driver knows about this process.
pub struct Driver {
    pub cfg: GpuConfig,
    pub state: SharedState,
    /// Visible ordinal -> physical index.
    pub visible: Vec<usize>,
    pub settings: Settings,
    next_handle: u64,
    va_next: Vec<u64>,
    vmm_va_next: u64,
    pub contexts: HashMap<u64, Context>,
    pub primaries: Vec<Primary>,
    pub allocs: BTreeMap<u64, Alloc>,
    pub host_allocs: HashSet<usize>,
    pub pools: HashMap<u64, crate::pool::Pool>,
    pub default_pool: Vec<u64>,
    pub current_pool: Vec<u64>,
    pub streams: HashMap<u64, Stream>,
    pub events: HashSet<u64>,
    /// Event -> the context it was created in.
    pub event_ctx: HashMap<u64, u64>,
    /// Stream and event handles freed because their context was destroyed. A real
    /// driver frees them with the context, and a later call with one is undefined
    /// behaviour (a crash, or a wait that never ends), so the fake aborts on it: a test
    /// that does it fails loudly.
    pub dead_handles: HashSet<u64>,
    pub phys: HashMap<u64, crate::vmm::PhysAlloc>,
    pub reservations: BTreeMap<u64, u64>,
    pub mappings: BTreeMap<u64, crate::vmm::Mapping>,
    pub arrays: HashMap<u64, Array>,
    pub modules: HashMap<u64, Module>,
    /// Function handle -> (module, name).
    pub functions: HashMap<u64, (u64, String)>,
    pub graphs: HashMap<u64, Graph>,
    pub nodes: HashMap<u64, Node>,
    pub execs: HashMap<u64, Exec>,
    /// Device addresses of graph allocation nodes -> (device, bytes).
    pub graph_vas: HashMap<u64, (usize, u64)>,
    pub graph_mem: Vec<GraphMem>,
    /// Time on the GPU (off unless `FAKE_CUDA_KERNEL_US` is set).
    pub timing: crate::timing::Timing,
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);
static FAULTS: OnceLock<FaultPlan> = OnceLock::new();

thread_local! {
    static CTX_STACK: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// The code `symbol` must fail with under `FAKE_CUDA_FAIL`, if any.
pub fn injected(symbol: &str) -> Option<CUresult> {
    FAULTS
        .get_or_init(|| FaultPlan::from_env("FAKE_CUDA_FAIL"))
        .check(symbol)
        // A code that does not fit a CUresult fails nothing.
        .and_then(|c| CUresult::try_from(c).ok())
}

/// Runs an entry point: fault injection, then the initialisation check, then `f` under the
/// driver lock.
pub fn api(symbol: &str, f: impl FnOnce(&mut Driver) -> Result<(), CUresult>) -> CUresult {
    if let Some(code) = injected(symbol) {
        return code;
    }
    let mut guard = DRIVER.lock().unwrap_or_else(PoisonError::into_inner);
    match guard.as_mut() {
        None => CUDA_ERROR_NOT_INITIALIZED,
        Some(d) => match f(d) {
            Ok(()) => CUDA_SUCCESS,
            Err(e) => e,
        },
    }
}

/// `cuInit`: builds the driver state once.
pub fn init() -> CUresult {
    let mut guard = DRIVER.lock().unwrap_or_else(PoisonError::into_inner);
    if guard.is_some() {
        return CUDA_SUCCESS;
    }
    let cfg = GpuConfig::from_env();
    let visible = cfg.visible_from_env();
    if visible.is_empty() {
        return CUDA_ERROR_NO_DEVICE;
    }
    let state = match SharedState::from_env(&cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-cuda: cannot open the simulated GPU state: {e}");
            return CUDA_ERROR_OPERATING_SYSTEM;
        }
    };
    *guard = Some(Driver::new(cfg, state, visible, Settings::from_env()));
    CUDA_SUCCESS
}

/// A checked out-pointer: null is rejected when it is made, writes are unaligned-safe.
pub struct Out<T>(NonNull<T>);

impl<T> Out<T> {
    /// Wraps an out-parameter, failing with `CUDA_ERROR_INVALID_VALUE` when it is null.
    ///
    /// # Safety
    /// `p` must be null or valid for writing a `T` until the entry point returns.
    pub unsafe fn new(p: *mut T) -> Result<Self, CUresult> {
        NonNull::new(p).map(Out).ok_or(CUDA_ERROR_INVALID_VALUE)
    }

    /// Wraps an optional out-parameter (null means "not wanted").
    ///
    /// # Safety
    /// As for [`Out::new`].
    pub unsafe fn optional(p: *mut T) -> Option<Self> {
        NonNull::new(p).map(Out)
    }

    /// Stores the value.
    pub fn set(&self, v: T) {
        // SAFETY: `new` / `optional` callers promised the pointer is writable.
        unsafe { self.0.as_ptr().write_unaligned(v) }
    }

    /// Reads the current value (for in/out parameters).
    pub fn get(&self) -> T {
        // SAFETY: in/out parameters are readable as well as writable by the API contract.
        unsafe { self.0.as_ptr().read_unaligned() }
    }
}

/// Reads an in-parameter struct, failing with `CUDA_ERROR_INVALID_VALUE` when it is null.
///
/// # Safety
/// `p` must be null or valid for reading a `T`.
pub unsafe fn read_in<T>(p: *const T) -> Result<T, CUresult> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: non-null and readable by the caller's contract.
    Ok(unsafe { p.read_unaligned() })
}

/// An opaque handle as an integer key.
pub fn key(h: Handle) -> u64 {
    h.addr() as u64
}

/// An integer key as an opaque handle.
pub fn handle(k: u64) -> Handle {
    // Keys are counters, far below usize::MAX on a 64-bit host.
    std::ptr::without_provenance_mut::<c_void>(usize::try_from(k).unwrap_or(usize::MAX))
}

/// A device index as a `CUdevice` (indexes are below fake-gpu's `MAX_DEVICES`).
pub fn ordinal(index: usize) -> Result<CUdevice, CUresult> {
    CUdevice::try_from(index).map_err(|_| CUDA_ERROR_INVALID_DEVICE)
}

/// A byte count as the driver API's `size_t`.
pub fn size_t(bytes: u64) -> Result<usize, CUresult> {
    usize::try_from(bytes).map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

/// Maps a charge failure to a CUDA code.
pub fn charge_err(e: ChargeError) -> CUresult {
    match e {
        ChargeError::OutOfMemory | ChargeError::TableFull => CUDA_ERROR_OUT_OF_MEMORY,
        ChargeError::InvalidDevice => CUDA_ERROR_INVALID_DEVICE,
    }
}

/// The calling thread's current context, if any.
pub fn current_key() -> Option<u64> {
    CTX_STACK
        .try_with(|s| s.borrow().last().copied())
        .ok()
        .flatten()
}

/// Applies `f` to the calling thread's context stack.
pub fn with_stack<R>(f: impl FnOnce(&mut Vec<u64>) -> R) -> Option<R> {
    CTX_STACK.try_with(|s| f(&mut s.borrow_mut())).ok()
}

const VA_BASE: u64 = 0x7f00_0000_0000;
const VA_PER_DEVICE: u64 = 1 << 40;
const VMM_VA_BASE: u64 = 0x6000_0000_0000;

impl Driver {
    fn new(cfg: GpuConfig, state: SharedState, visible: Vec<usize>, settings: Settings) -> Self {
        let mut d = Self {
            va_next: visible
                .iter()
                .map(|&p| VA_BASE + p as u64 * VA_PER_DEVICE)
                .collect(),
            cfg,
            state,
            settings,
            next_handle: 0x1000,
            vmm_va_next: VMM_VA_BASE,
            contexts: HashMap::new(),
            primaries: Vec::new(),
            allocs: BTreeMap::new(),
            host_allocs: HashSet::new(),
            pools: HashMap::new(),
            default_pool: Vec::new(),
            current_pool: Vec::new(),
            streams: HashMap::new(),
            events: HashSet::new(),
            event_ctx: HashMap::new(),
            dead_handles: HashSet::new(),
            phys: HashMap::new(),
            reservations: BTreeMap::new(),
            mappings: BTreeMap::new(),
            arrays: HashMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            graphs: HashMap::new(),
            nodes: HashMap::new(),
            execs: HashMap::new(),
            graph_vas: HashMap::new(),
            graph_mem: Vec::new(),
            timing: crate::timing::Timing::from_env(),
            visible,
        };
        for dev in 0..d.visible.len() {
            let ctx = d.new_handle();
            d.contexts.insert(
                ctx,
                Context {
                    dev,
                    primary: true,
                    active: false,
                },
            );
            d.primaries.push(Primary {
                ctx,
                refs: 0,
                flags: 0,
            });
            let pool = d.new_handle();
            d.pools.insert(pool, crate::pool::Pool::new(dev, true, 0));
            d.default_pool.push(pool);
            d.current_pool.push(pool);
            d.graph_mem.push(GraphMem::default());
        }
        d
    }

    /// A fresh, never reused handle value.
    pub fn new_handle(&mut self) -> u64 {
        self.next_handle += 0x10;
        self.next_handle
    }

    /// Number of visible devices.
    pub fn device_count(&self) -> usize {
        self.visible.len()
    }

    /// Validates a `CUdevice` ordinal.
    pub fn device(&self, dev: CUdevice) -> Result<usize, CUresult> {
        usize::try_from(dev)
            .ok()
            .filter(|&d| d < self.visible.len())
            .ok_or(CUDA_ERROR_INVALID_DEVICE)
    }

    /// Physical index of a visible device.
    pub fn phys_index(&self, dev: usize) -> usize {
        self.visible.get(dev).copied().unwrap_or(usize::MAX)
    }

    /// Charges allocation bytes (`used`) and context bytes to this process on `dev`.
    pub fn charge(&self, dev: usize, used: u64, context: u64) -> Result<(), CUresult> {
        self.state
            .lock()
            .charge(current_pid(), self.phys_index(dev), used, context)
            .map_err(charge_err)
    }

    /// Records this process's activity on `dev` (see [`Settings::activity`]).
    pub fn record_activity(&self, dev: usize) {
        self.state
            .lock()
            .set_activity(current_pid(), self.phys_index(dev), self.settings.activity);
    }

    /// Returns bytes charged with [`Driver::charge`].
    pub fn uncharge(&self, dev: usize, used: u64, context: u64) {
        if used == 0 && context == 0 {
            return;
        }
        self.state
            .lock()
            .uncharge(current_pid(), self.phys_index(dev), used, context);
    }

    /// Device total memory.
    pub fn total(&self, dev: usize) -> u64 {
        self.state.lock().total(self.phys_index(dev))
    }

    /// Device free memory.
    pub fn free(&self, dev: usize) -> u64 {
        self.state.lock().free(self.phys_index(dev))
    }

    /// The calling thread's current context: (handle, device).
    pub fn current(&self) -> Result<(u64, usize), CUresult> {
        let k = current_key().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
        match self.contexts.get(&k) {
            Some(c) if c.active => Ok((k, c.dev)),
            _ => Err(CUDA_ERROR_INVALID_CONTEXT),
        }
    }

    /// Rounds a physical size to the allocation granularity.
    pub fn granular(&self, bytes: u64) -> u64 {
        round_up(bytes, self.settings.granularity)
    }

    /// Reserves `size` bytes of device address space of `dev`, aligned to `align`.
    pub fn alloc_va(&mut self, dev: usize, size: u64, align: u64) -> u64 {
        let Some(next) = self.va_next.get_mut(dev) else {
            return 0;
        };
        let base = round_up(*next, align.max(1));
        *next = base.saturating_add(size.max(1));
        base
    }

    /// Reserves `size` bytes of VMM address space aligned to `align`.
    pub fn alloc_vmm_va(&mut self, size: u64, align: u64) -> u64 {
        let base = round_up(self.vmm_va_next, align.max(self.settings.granularity));
        self.vmm_va_next = base.saturating_add(size.max(1));
        base
    }

    /// Resolves a stream handle to (stream key or 0, context, device); the null, legacy and
    /// per-thread handles mean the current context.
    pub fn stream(&self, s: Handle) -> Result<(u64, u64, usize), CUresult> {
        let k = key(s);
        if k == 0 || k == CU_STREAM_LEGACY || k == CU_STREAM_PER_THREAD {
            let (ctx, dev) = self.current()?;
            return Ok((0, ctx, dev));
        }
        self.check_not_dead("stream", k);
        let st = self.streams.get(&k).ok_or(CUDA_ERROR_INVALID_HANDLE)?;
        match self.contexts.get(&st.ctx) {
            Some(c) if c.active => Ok((k, st.ctx, st.dev)),
            _ => Err(CUDA_ERROR_INVALID_CONTEXT),
        }
    }

    /// Aborts the process if `k` is a handle that a destroyed context took with it (see
    /// [`Driver::dead_handles`]).
    pub fn check_not_dead(&self, what: &str, k: u64) {
        if self.dead_handles.contains(&k) {
            eprintln!(
                "fake-cuda: {what} {k:#x} belonged to a context that was destroyed; using it is undefined behaviour on a real driver"
            );
            std::process::abort();
        }
    }

    /// The allocation containing `ptr`: (base, allocation).
    pub fn alloc_containing(&self, ptr: u64) -> Option<(u64, Alloc)> {
        let (&base, a) = self.allocs.range(..=ptr).next_back()?;
        (ptr < base.saturating_add(a.size.max(1))).then_some((base, *a))
    }

    /// Frees a directly charged or pooled allocation at exactly `base`.
    pub fn free_alloc(&mut self, base: u64) -> Result<(), CUresult> {
        let a = self.allocs.remove(&base).ok_or(CUDA_ERROR_INVALID_VALUE)?;
        match a.kind {
            AllocKind::Direct => self.uncharge(a.dev, a.charged, 0),
            AllocKind::Pool { pool, bytes } => self.pool_return(pool, bytes),
            AllocKind::Graph { bytes } => {
                if let Some(g) = self.graph_mem.get_mut(a.dev) {
                    g.used = g.used.saturating_sub(bytes);
                }
            }
        }
        Ok(())
    }

    /// Synchronisation point: every pool gives back memory above its release threshold.
    pub fn synchronize(&mut self) {
        let pools: Vec<u64> = self.pools.keys().copied().collect();
        for p in pools {
            self.pool_release_above_threshold(p);
        }
    }
}
