//! Compute slices inside the process: the per-context gate in front of every kernel and
//! graph launch, and the CUDA events that measure this process's GPU busy time (the
//! controller itself lives in the `gpuslice-compute` crate). Built from plain values
//! ([`ComputeSettings`], the ledger's cells); the launch hooks that use it are in
//! `launch.rs`.
//!
//! Launches into a stream that is being captured are not gated (they run later, as a
//! graph, whose launch is).

// The contexts map is read on every gated launch: Fx hash, not SipHash (the keys are the
// driver's context handles).
use rustc_hash::FxHashMap as HashMap;
use std::ffi::{c_int, c_uint, c_void};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

use gpuslice_compute::turns::process_key;
use gpuslice_compute::{Budget, EventMeter, Gate, GateConfig, GpuTurns, Step};
use gpuslice_config::{ComputeMethod, SliceConfig};
use gpuslice_ledger::{DeviceSlot, Ledger};

use crate::ffi::*;
use crate::lock::lock;
use crate::log::log_at;
use crate::meter::{
    CudaTimeline, LaunchClock, Meter, NvmlMeter, PER_THREAD_STREAM, capturing, clock, stream_key,
};
use crate::real::call_driver;
use crate::table::id;

type CtxGetCurrentFn = unsafe extern "C" fn(*mut CUcontext) -> CUresult;
type ExchangeModeFn = unsafe extern "C" fn(*mut c_int) -> CUresult;

const CU_STREAM_CAPTURE_MODE_RELAXED: c_int = 2;

/// One CUDA context's gate and meter. The meter's events and private stream belong to
/// the context: they must not be used once the driver has destroyed it.
pub struct ContextCompute {
    gate: Gate<'static>,
    meter: Meter,
    /// The launch path's clock.
    clock: LaunchClock,
    /// The slice's ledger word counting time held back by the gate on this device.
    throttled: &'static std::sync::atomic::AtomicU64,
    /// The device the context is on.
    device: CUdevice,
    /// For the periodic report at `info` level: since when, the slice's busy time then,
    /// and this process's launches since.
    report_since_ns: u64,
    report_busy_ns: u64,
    report_checks: u64,
    report_rests: u64,
    report_events: u64,
    launches: u64,
    /// Launches that took the full path without waiting, and the CPU time the
    /// interposer spent on them (their launch calls apart), since the last report.
    full_paths: u64,
    full_path_ns: u64,
    name: String,
}

const REPORT_NS: u64 = 2_000_000_000;

impl ContextCompute {
    /// Counts a launch that took the full path, which cost the interposer `ns` (unless
    /// it `waited`: then its time is mostly the wait's).
    fn time_full_path(&mut self, waited: bool, ns: u64) {
        if !waited {
            self.full_paths += 1;
            self.full_path_ns = self.full_path_ns.saturating_add(ns);
        }
    }

    /// Every two seconds, at `info` level: the share of the GPU the slice used.
    fn report(&mut self, now_ns: u64) {
        if now_ns.saturating_sub(self.report_since_ns) < REPORT_NS
            || !crate::log::enabled(gpuslice_config::LogLevel::Info)
        {
            return;
        }
        let busy = self.gate.budget().busy_total_ns();
        let span = now_ns - self.report_since_ns;
        let (lost, events, stats) = match &mut self.meter {
            Meter::Events(m) => (m.lost(), m.events_recorded(), Some(m.take_stats())),
            Meter::Nvml(_) => (0, 0, None),
        };
        // The meter's own account, at `debug` level: spans, bounds and probes.
        let stats = match stats {
            Some(s) if crate::log::enabled(gpuslice_config::LogLevel::Debug) => format!(
                "; {} full paths of {:.2} us each, the launch call apart; {s}",
                self.full_paths,
                self.full_path_ns as f64 / 1e3 / self.full_paths.max(1) as f64
            ),
            _ => String::new(),
        };
        self.full_paths = 0;
        self.full_path_ns = 0;
        crate::log::line(
            gpuslice_config::LogLevel::Info,
            format_args!(
                "{}: the slice used {:.1}% of the GPU over the last {:.1} s ({} launches from this process, {} full gate checks, {} rests, {} timing events, {} unmeasured{})",
                self.name,
                (busy - self.report_busy_ns) as f64 * 100.0 / span as f64,
                span as f64 / 1e9,
                self.launches,
                self.gate.full_checks() - self.report_checks,
                self.gate.rests() - self.report_rests,
                events - self.report_events,
                lost,
                stats
            ),
        );
        self.report_checks = self.gate.full_checks();
        self.report_rests = self.gate.rests();
        self.report_events = events;
        self.report_since_ns = now_ns;
        self.report_busy_ns = busy;
        self.launches = 0;
    }
}

// SAFETY: the raw pointers inside (the private stream) are driver handles, valid in any
// thread; the state is only touched under `Compute::contexts`' lock.
unsafe impl Send for ContextCompute {}

/// The compute side of a process's slice.
pub struct Compute {
    settings: ComputeSettings,
    /// Context -> its gate, or `None` when its device is not limited.
    contexts: Mutex<HashMap<usize, Option<ContextCompute>>>,
    /// Device -> its primary context, as `cuDevicePrimaryCtxRetain` handed it out.
    primaries: Mutex<HashMap<CUdevice, usize>>,
}

/// What a process's compute side is made of: plain values from the slice's
/// configuration and ledger.
pub struct ComputeSettings {
    /// The hard limit and burst, in percent; `None`: launches are not gated.
    pub limits: Option<(u32, Option<u32>)>,
    /// How busy time is measured.
    pub method: ComputeMethod,
    /// The folder of the GPUs' turn files.
    pub gpu_dir: std::path::PathBuf,
    /// A tag equal for all processes of the slice on this host.
    pub slice_tag: u64,
    /// `GPUSLICE_COMPUTE_BAND_MS`, `_QUEUE_MS`, `_ALONE_RESUME_MS`.
    pub band_ms: Option<u32>,
    /// See `band_ms`.
    pub queue_ms: Option<u32>,
    /// See `band_ms`.
    pub alone_resume_ms: Option<u32>,
    /// The slice's name, for messages.
    pub slice_name: String,
}

impl ComputeSettings {
    /// The settings of the slice configured by `config`, whose ledger file is `ledger`
    /// and whose name is `slice_name`.
    pub fn of(config: &SliceConfig, ledger: &std::path::Path, slice_name: &str) -> Self {
        ComputeSettings {
            limits: config.compute.shares.map(|s| s.to_pair()),
            method: config.compute.method,
            gpu_dir: config.gpu_dir.clone().into(),
            slice_tag: slice_tag(ledger),
            band_ms: config.compute.band_ms,
            queue_ms: config.compute.queue_ms,
            alone_resume_ms: config.compute.alone_resume_ms,
            slice_name: slice_name.to_string(),
        }
    }
}

impl Compute {
    /// The compute side of a process's slice.
    pub fn new(settings: ComputeSettings) -> Self {
        Compute {
            settings,
            contexts: Mutex::new(HashMap::default()),
            primaries: Mutex::new(HashMap::default()),
        }
    }

    /// Whether launches are gated at all.
    pub fn enabled(&self) -> bool {
        self.settings.limits.is_some()
    }

    /// The gate and meter of context `ctx`, on CUDA device `dev` whose entry in the
    /// slice's `ledger` is `slot`; `None` when launches are not gated.
    pub fn context_gate(
        &self,
        ledger: &'static Ledger,
        dev: CUdevice,
        slot: DeviceSlot,
        ctx: usize,
    ) -> Option<ContextCompute> {
        let (hard, burst) = self.settings.limits?;
        let uuid = ledger.uuid(slot);
        let now = clock().now_ns();
        // The turn file is shared with every compute slice of the host, any of which can
        // cut it short: guard the mapping, so that this process survives that (and takes
        // turns with no one) instead of dying of SIGBUS. Only the turn files are
        // registered; the slice's own ledger never is.
        if let Err(e) = gpuslice_mapguard::install() {
            warn_once(format_args!(
                "{e}; a process that cuts the GPU's turn file short could end this one"
            ));
        }
        let turns = match GpuTurns::open(
            &self.settings.gpu_dir,
            &uuid,
            self.settings.slice_tag,
            process_key(),
            now,
        ) {
            Ok(t) => Some(t),
            Err(e) => {
                warn_once(format_args!(
                    "{e}; slice '{}' is held to its compute limit but cannot take turns with other slices on {uuid}",
                    self.settings.slice_name
                ));
                None
            }
        };
        let (tat, busy) = ledger.compute_cells(slot);
        let mut gate_config = GateConfig::new(hard, burst);
        if let Some(ms) = self.settings.band_ms {
            gate_config.band_ns = u64::from(ms) * 1_000_000;
        }
        if let Some(ms) = self.settings.queue_ms {
            gate_config.max_inflight_ns = u64::from(ms) * 1_000_000;
        }
        if let Some(ms) = self.settings.alone_resume_ms {
            gate_config.alone_resume_ns = Some(u64::from(ms) * 1_000_000);
        }
        let gate = Gate::new(gate_config, Budget::new(tat, busy), turns);
        let meter = match self.settings.method {
            ComputeMethod::Events => {
                Meter::Events(Box::new(EventMeter::new(CudaTimeline::new(), now)))
            }
            ComputeMethod::Nvml => {
                Meter::Nvml(NvmlMeter::new(uuid.clone(), std::process::id(), now))
            }
        };
        log_at!(
            Info,
            "slice '{}': context {ctx:#x} on {uuid} limited to {hard}% of the GPU{}",
            self.settings.slice_name,
            burst.map(|b| format!(" (burst {b}%)")).unwrap_or_default()
        );
        let report_busy_ns = gate.budget().busy_total_ns();
        Some(ContextCompute {
            gate,
            meter,
            clock: LaunchClock::default(),
            throttled: ledger.throttled_cell(slot),
            device: dev,
            report_since_ns: now,
            report_busy_ns,
            report_checks: 0,
            report_rests: 0,
            report_events: 0,
            launches: 0,
            full_paths: 0,
            full_path_ns: 0,
            name: format!("slice '{}' on {uuid}", self.settings.slice_name),
        })
    }

    /// On exit: charges the work still queued in every context (waiting for it at most
    /// [`EXIT_WAIT_NS`] in all), gives the GPU's turn back and forgets the contexts, so
    /// that a second call does nothing. Only contexts that still exist are left here:
    /// those the driver destroyed were forgotten when it did ([`Compute::primary_gone`],
    /// [`Compute::before_context_destroy`]).
    pub fn leave(&self) {
        let drained: Vec<ContextCompute> = match self.contexts.try_lock() {
            Ok(mut map) => map.drain().filter_map(|(_, cc)| cc).collect(),
            // Another thread of the exiting process is inside a launch: leave it be
            // rather than wait for it.
            Err(_) => return,
        };
        let deadline = clock().now_ns().saturating_add(EXIT_WAIT_NS);
        for mut cc in drained {
            let left = deadline.saturating_sub(clock().now_ns());
            relaxed(|| cc.gate.settle(cc.meter.as_dyn(), clock(), left));
        }
    }

    /// After `cuDevicePrimaryCtxRetain` handed out `ctx` as `dev`'s primary context.
    pub fn note_primary(&self, dev: CUdevice, ctx: CUcontext) {
        if self.settings.limits.is_some() && !ctx.is_null() {
            lock(&self.primaries).insert(dev, ctx as usize);
        }
    }

    /// After the driver destroyed `dev`'s primary context (its last release, or a
    /// reset): the context's events and streams went with it, so its gate is dropped
    /// without another call to the driver, and what it still had queued is charged its
    /// usual time. Called from the CUDA runtime's own teardown at exit too: the exit
    /// handler must then find nothing of that context left to touch.
    pub fn primary_gone(&self, dev: CUdevice) {
        if self.settings.limits.is_none() {
            return;
        }
        let Some(ctx) = lock(&self.primaries).remove(&dev) else {
            return;
        };
        let gone = lock(&self.contexts).remove(&ctx);
        if let Some(Some(mut cc)) = gone {
            debug_assert_eq!(cc.device, dev);
            cc.gate.abandon(cc.meter.as_dyn(), clock().now_ns());
        }
    }

    /// Before `cuCtxDestroy` destroys `ctx`: its queued work is charged (waited for at
    /// most [`EXIT_WAIT_NS`]) while its events still exist, and the context is forgotten,
    /// so that no later call reaches its events, and a new context given the same
    /// address starts afresh.
    pub fn before_context_destroy(&self, ctx: CUcontext) {
        if self.settings.limits.is_none() || ctx.is_null() {
            return;
        }
        lock(&self.primaries).retain(|_, c| *c != ctx as usize);
        let gone = lock(&self.contexts).remove(&(ctx as usize));
        if let Some(Some(mut cc)) = gone {
            relaxed(|| cc.gate.settle(cc.meter.as_dyn(), clock(), EXIT_WAIT_NS));
        }
    }

    /// Before `stream` is destroyed: the current context's meter closes the stream's
    /// open group and forgets the stream.
    pub fn before_stream_destroy(&self, stream: CUstream) {
        if !stream.is_null() {
            self.with_current_meter(
                |meter| meter.forget_stream(stream_key(stream)),
                std::ptr::null_mut(),
            );
        }
    }

    /// Before this thread waits for the GPU (`waited`: a stream, context or event):
    /// closes the open groups of the current context, so that their events are recorded
    /// while their work is still queued. Closed later, after the wait, a group's end
    /// could only be estimated from its launches' usual time, which a long kernel after
    /// short ones would exceed. A wait for a context other than the current one closes
    /// nothing: the default streams' handles name the current context's, and that
    /// context's groups are closed at its next launch or wait instead.
    pub fn before_wait(&self, waited: Waited) {
        let now = clock().now_ns();
        self.with_current_meter(|meter| meter.seal_at(now), waited.context());
    }

    /// After this thread's wait for `waited` succeeded: the meter needs not ask the
    /// driver whether that work (a stream's, or the whole current context's) still runs.
    pub fn after_wait(&self, waited: Waited) {
        let idle = match waited {
            Waited::Stream { handle, per_thread } => {
                Some(stream_key(if handle.is_null() && per_thread {
                    PER_THREAD_STREAM as CUstream
                } else {
                    handle
                }))
            }
            Waited::Context(_) => None,
            Waited::Event => return,
        };
        self.with_current_meter(|meter| meter.note_idle(idle), waited.context());
    }

    /// Runs `f` on the event meter of the current context, if it is compute-limited and
    /// has one, in relaxed capture mode. `only`: unless null, nothing is done when it is not the current context.
    fn with_current_meter(&self, f: impl FnOnce(&mut EventMeter<CudaTimeline>), only: CUcontext) {
        if self.settings.limits.is_none() {
            return;
        }
        let mut ctx: CUcontext = std::ptr::null_mut();
        if call_driver!(id::cuCtxGetCurrent, CtxGetCurrentFn, &mut ctx) != CUDA_SUCCESS
            || ctx.is_null()
            || (!only.is_null() && only != ctx)
        {
            return;
        }
        let mut map = lock(&self.contexts);
        if let Some(Some(cc)) = map.get_mut(&(ctx as usize))
            && let Meter::Events(meter) = &mut cc.meter
        {
            relaxed(|| f(meter));
        }
    }
}

/// What a synchronisation waits for.
#[derive(Clone, Copy, Debug)]
pub enum Waited {
    /// A stream of the current context; `per_thread`: a null handle names the
    /// per-thread default stream.
    Stream {
        /// The stream's handle.
        handle: CUstream,
        /// Whether a null handle names the per-thread default stream.
        per_thread: bool,
    },
    /// A context (null: the current one).
    Context(CUcontext),
    /// An event (what it follows is not known).
    Event,
}

impl Waited {
    /// The context the wait is only about, or null for the current one.
    fn context(self) -> CUcontext {
        match self {
            Waited::Context(ctx) => ctx,
            Waited::Stream { .. } | Waited::Event => std::ptr::null_mut(),
        }
    }
}

static WARNED: AtomicU32 = AtomicU32::new(0);

fn warn_once(message: std::fmt::Arguments<'_>) {
    let pid = std::process::id();
    if WARNED.swap(pid, Relaxed) != pid {
        crate::log::line(gpuslice_config::LogLevel::Warn, message);
    }
}

/// A tag equal for all processes of one slice on a host: the ledger file's identity.
fn slice_tag(ledger: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let (dev, ino) = std::fs::metadata(ledger)
        .map(|m| (m.dev(), m.ino()))
        .unwrap_or((0, 0));
    gpuslice_config::hash::fnv1a(&[&dev.to_ne_bytes(), &ino.to_ne_bytes()]).max(1)
}

/// Adds the part of a wait from `from_ns` to `to_ns` that no other wait of this process
/// counted already to `cell` (none: the wait was not throttling): several threads of a
/// process resting at once are held back once, not once each.
fn count_throttled(cell: Option<&std::sync::atomic::AtomicU64>, from_ns: u64, to_ns: u64) {
    static COUNTED_UNTIL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(cell) = cell else {
        return;
    };
    let before = COUNTED_UNTIL.fetch_max(to_ns, Relaxed);
    let start = from_ns.max(before);
    if to_ns > start {
        cell.fetch_add(to_ns - start, Relaxed);
    }
}

/// What a launch is, for the meter's times per kind of launch: a kernel with its grid
/// and block sizes (the same kernel on a larger grid is another kind), or a graph.
pub fn kernel_kind(f: *mut c_void, grid: [c_uint; 3], block: [c_uint; 3]) -> u64 {
    // Wrapping: the sizes are the caller's, not yet checked by the driver.
    let cells = |d: [c_uint; 3]| {
        u64::from(d[0])
            .wrapping_mul(u64::from(d[1]))
            .wrapping_mul(u64::from(d[2]))
    };
    (f as u64)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(cells(grid).rotate_left(21))
        .wrapping_add(cells(block).rotate_left(43))
}

/// The kind of a graph launch (see [`kernel_kind`]).
pub fn graph_kind(exec: *mut c_void) -> u64 {
    (exec as u64).rotate_left(32) ^ 0x6772_6170_6800_0000
}

impl Compute {
    /// Runs a launch of `kind` on `stream` through the gate of the current context (made
    /// by `context_gate` the first time the context launches): waits while the slice is
    /// over its share, launches, and measures the launch.
    ///
    /// The common case costs no driver call besides `cuCtxGetCurrent`, and no system
    /// call (the time comes from the context's [`LaunchClock`]): while the gate's
    /// allowance lasts ([`Gate::fast_go`]) and the stream has an open group to join
    /// ([`EventMeter::try_join`]), the launch only counts. Everything that calls the driver
    /// (whether the stream is being captured, the timing events, the relaxed capture mode
    /// they need) happens once per group or per full check.
    #[inline]
    pub fn gated(
        &self,
        stream: CUstream,
        per_thread: bool,
        kind: u64,
        context_gate: impl Fn(usize) -> Option<ContextCompute>,
        call: impl FnOnce() -> CUresult,
    ) -> CUresult {
        if !self.enabled() {
            return call();
        }
        let handle = if stream.is_null() && per_thread {
            PER_THREAD_STREAM as CUstream
        } else {
            stream
        };
        let mut ctx: CUcontext = std::ptr::null_mut();
        if call_driver!(id::cuCtxGetCurrent, CtxGetCurrentFn, &mut ctx) != CUDA_SUCCESS
            || ctx.is_null()
        {
            return call();
        }
        let key = stream_key(handle);
        let mut call = Some(call);
        let mut checked_capture = false;
        // Whether this launch waited (then its full path is not timed), and whether it
        // took the first, long sleep of a wait for its own queued work.
        let (mut waited, mut napped) = (false, false);
        loop {
            let mut map = lock(&self.contexts);
            let entry = map
                .entry(ctx as usize)
                .or_insert_with(|| context_gate(ctx as usize));
            let Some(cc) = entry.as_mut() else {
                drop(map);
                return call.take().map_or(CUDA_SUCCESS, |c| c());
            };
            let now = cc.clock.now_ns();
            let fast = cc.gate.fast_go(now);
            if fast {
                let joined = match &mut cc.meter {
                    Meter::Events(meter) => meter.try_join(key, kind, now),
                    Meter::Nvml(_) => true,
                };
                if joined {
                    // A launch into a stream that began a capture after its group opened
                    // joins the group too: the group's end is then timed once the capture
                    // is over (`CudaTimeline::record` refuses a capturing stream).
                    cc.launches += 1;
                    return call.take().map_or(CUDA_SUCCESS, |c| c());
                }
            }
            // The full path, on a real reading of the clock (which keeps the launch
            // clock's counter rebased): launches into a stream being captured are not
            // gated (they run later, as a graph, whose launch is).
            let now = cc.clock.precise_ns();
            if !checked_capture {
                checked_capture = true;
                if capturing(handle) != Some(false) {
                    drop(map);
                    return call.take().map_or(CUDA_SUCCESS, |c| c());
                }
            }
            let step = if fast {
                Step::Go
            } else {
                relaxed(|| {
                    let unblocked = cc.gate.unblocked();
                    let step = cc.gate.step(now, cc.meter.as_dyn());
                    if cc.gate.turns_truncated() {
                        warn_once(format_args!(
                            "{}: the GPU's turn file was cut short by another process; this slice stays within its share but no longer takes turns with the others",
                            cc.name
                        ));
                    }
                    if cc.gate.unblocked() > unblocked {
                        warn_once(format_args!(
                            "{}: this process's queued GPU work stopped completing while a launch waited for it; the launch goes, in case that work waits for it",
                            cc.name
                        ));
                    }
                    cc.report(now);
                    step
                })
            };
            // Waits happen without the lock, so that another thread of this process can
            // submit the work this one's queue may depend on. The time spent resting over
            // the share or waiting for another slice's turn is the slice's throttled time
            // (its ledger counts it for /metrics and `top`); waiting for a full queue to
            // drain is not.
            let waited_from = clock().now_ns();
            let throttled = cc.gate.resting().then_some(cc.throttled);
            match step {
                Step::Go => {
                    let joined = match &mut cc.meter {
                        Meter::Events(meter) => meter.try_join(key, kind, now),
                        Meter::Nvml(_) => true,
                    };
                    if joined {
                        cc.launches += 1;
                        cc.time_full_path(waited, clock().now_ns().saturating_sub(now));
                        return call.take().map_or(CUDA_SUCCESS, |c| c());
                    }
                    if let Meter::Events(meter) = &mut cc.meter {
                        relaxed(|| meter.before_launch(key, now));
                    }
                    let submitted = clock().now_ns();
                    let r = call.take().map_or(CUDA_SUCCESS, |c| c());
                    let called = clock().now_ns();
                    let call_ns = called.saturating_sub(submitted);
                    cc.launches += 1;
                    if r == CUDA_SUCCESS
                        && let Meter::Events(meter) = &mut cc.meter
                    {
                        relaxed(|| meter.after_launch(key, kind, submitted, call_ns));
                    }
                    let after = clock().now_ns().saturating_sub(called);
                    cc.time_full_path(waited, submitted.saturating_sub(now) + after);
                    return r;
                }
                Step::Sleep(ns) => {
                    waited = true;
                    drop(map);
                    clock().sleep_ns(ns);
                    count_throttled(throttled, waited_from, clock().now_ns());
                }
                Step::WaitTurn { seen, timeout_ns } => {
                    waited = true;
                    // Waits for another process to give the GPU up; nothing of this
                    // process's own is waited for, so the lock can stay held.
                    cc.gate.wait_turn(seen, timeout_ns, clock());
                    count_throttled(Some(cc.throttled), waited_from, clock().now_ns());
                }
                Step::WaitOldest | Step::WaitAll => {
                    // Waiting for this process's own queued work: asleep until about
                    // half of what it estimates to be queued has had time to run, then
                    // every WAIT_POLL_NS (each look is a full check). A slice that rests
                    // after every band of work would otherwise spend as much CPU time
                    // looking as a launch costs.
                    let first = step == Step::WaitAll && !napped;
                    napped = true;
                    waited = true;
                    let estimate = cc.meter.as_dyn().inflight_estimate_ns();
                    drop(map);
                    let nap = if first && estimate != u64::MAX {
                        (estimate / 2).clamp(WAIT_POLL_NS, MAX_WAIT_NAP_NS)
                    } else {
                        WAIT_POLL_NS
                    };
                    clock().sleep_ns(nap);
                    count_throttled(throttled, waited_from, clock().now_ns());
                }
            }
        }
    }
}

/// Runs `f` with this thread in relaxed stream-capture mode. The meter and the gate
/// query and record events; in the default (global) mode that would fail, and
/// invalidate the capture, while another thread of the process captures a graph.
fn relaxed<R>(f: impl FnOnce() -> R) -> R {
    let mut mode = CU_STREAM_CAPTURE_MODE_RELAXED;
    let exchanged = call_driver!(
        id::cuThreadExchangeStreamCaptureMode,
        ExchangeModeFn,
        &mut mode
    ) == CUDA_SUCCESS;
    let r = f();
    if exchanged {
        call_driver!(
            id::cuThreadExchangeStreamCaptureMode,
            ExchangeModeFn,
            &mut mode
        );
    }
    r
}

/// How long an exiting process waits for its queued work, to charge it (all its
/// contexts together); what is still queued then is charged its usual time. A process
/// of a compute slice ends within this (plus its own teardown) of its program's end.
const EXIT_WAIT_NS: u64 = 1_500_000_000;

/// How often a launch waiting for this process's queued work to drain checks again.
const WAIT_POLL_NS: u64 = 50_000;

/// The longest first sleep of a wait for this process's queued work (the queue holds
/// about two milliseconds of it).
const MAX_WAIT_NAP_NS: u64 = 1_000_000;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn waits_of_several_threads_at_once_are_throttled_time_once() {
        let cell = AtomicU64::new(0);
        // Two threads rest over the same 1 000 ns, a third 500 ns later on.
        count_throttled(Some(&cell), 10_000, 11_000);
        count_throttled(Some(&cell), 10_000, 11_000);
        count_throttled(Some(&cell), 10_500, 11_500);
        assert_eq!(cell.load(Relaxed), 1_500);
        // A wait that is not throttling counts nowhere and hides nothing.
        count_throttled(None, 12_000, 13_000);
        count_throttled(Some(&cell), 12_000, 13_000);
        assert_eq!(cell.load(Relaxed), 2_500);
    }

    #[test]
    fn kinds_tell_grids_apart_and_huge_sizes_do_not_overflow() {
        let f = 0x1000 as *mut c_void;
        let a = kernel_kind(f, [1, 1, 1], [128, 1, 1]);
        let b = kernel_kind(f, [2, 1, 1], [128, 1, 1]);
        assert_ne!(a, b);
        assert_eq!(a, kernel_kind(f, [1, 1, 1], [128, 1, 1]));
        let _ = kernel_kind(f, [u32::MAX; 3], [u32::MAX; 3]);
        assert_ne!(graph_kind(f), a);
    }
}
