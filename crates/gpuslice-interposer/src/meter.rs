//! How a compute slice measures this process's GPU busy time: the CUDA events of the
//! meter's [`Timeline`] (and the private stream it records on), or NVML's per-process
//! utilization samples; the clock both are read by (the fake driver's virtual clock in
//! tests, the host's monotonic clock otherwise); how a stream is told apart.

use std::ffi::{c_int, c_uint};

use gpuslice_compute::{BusyMeter, Clock, EventMeter, Harvest, MonotonicClock, Timeline};

use crate::ffi::*;
use crate::real::call_driver;
use crate::table::id;

type EventCreateFn = unsafe extern "C" fn(*mut CUevent, c_uint) -> CUresult;
type EventRecordFn = unsafe extern "C" fn(CUevent, CUstream) -> CUresult;
type EventFn = unsafe extern "C" fn(CUevent) -> CUresult;
type StreamFn = unsafe extern "C" fn(CUstream) -> CUresult;
type ElapsedFn = unsafe extern "C" fn(*mut f32, CUevent, CUevent) -> CUresult;
type StreamCreateFn = unsafe extern "C" fn(*mut CUstream, c_uint) -> CUresult;
type IsCapturingFn = unsafe extern "C" fn(CUstream, *mut c_int) -> CUresult;

const CU_EVENT_BLOCKING_SYNC: c_uint = 1;
const CU_STREAM_NON_BLOCKING: c_uint = 1;
const CUDA_ERROR_NOT_READY: CUresult = 600;
/// `CU_STREAM_PER_THREAD`.
pub const PER_THREAD_STREAM: usize = 2;

/// The clock of the GPU's driver when it has one of its own: the project's fake driver
/// exports a virtual clock (`fakeCudaClockNow`/`fakeCudaClockSleep`) so that tests of
/// the controller are exact. The NVIDIA driver has none, and the host's monotonic clock
/// is used.
struct DriverClock {
    now: unsafe extern "C" fn() -> u64,
    sleep: unsafe extern "C" fn(u64),
}

impl Clock for DriverClock {
    fn now_ns(&self) -> u64 {
        // SAFETY: `now` is the fake driver's `fakeCudaClockNow()`, which takes nothing
        // and reads its virtual clock.
        unsafe { (self.now)() }
    }
    fn sleep_ns(&self, ns: u64) {
        // SAFETY: `sleep` is the fake driver's `fakeCudaClockSleep(u64)`, which only
        // advances its virtual clock; any value is valid.
        unsafe { (self.sleep)(ns) }
    }
}

pub fn clock() -> &'static (dyn Clock + Send + Sync) {
    static CLOCK: std::sync::OnceLock<Box<dyn Clock + Send + Sync>> = std::sync::OnceLock::new();
    CLOCK
        .get_or_init(|| {
            // SAFETY: the fake driver exports these with exactly these signatures.
            let (now, sleep) = unsafe {
                (
                    crate::real::symbol(crate::table::Library::Cuda, c"fakeCudaClockNow"),
                    crate::real::symbol(crate::table::Library::Cuda, c"fakeCudaClockSleep"),
                )
            };
            if let (Some(now), Some(sleep)) = (now, sleep) {
                let clock = DriverClock { now, sleep };
                if clock.now_ns() != 0 {
                    return Box::new(clock);
                }
            }
            Box::new(MonotonicClock)
        })
        .as_ref()
}

/// How a stream is told apart: its handle, and for the per-thread default stream the
/// thread it belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct StreamKey {
    handle: usize,
    thread: u64,
}

impl StreamKey {
    /// Whether this thread can name the stream to the driver: any stream but another
    /// thread's per-thread default stream (the handle means the caller's own).
    fn reachable(&self) -> bool {
        self.thread == 0 || self.thread == thread_id()
    }
}

/// The calling thread's id (never 0, so 0 can mean "any thread").
fn thread_id() -> u64 {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // A thread id is positive: the bits read the same unsigned.
    u64::from(tid.cast_unsigned())
}

pub fn stream_key(handle: CUstream) -> StreamKey {
    let handle = handle as usize;
    let thread = if handle == PER_THREAD_STREAM {
        thread_id()
    } else {
        0
    };
    StreamKey { handle, thread }
}

/// The CUDA driver's events, as the meter's [`Timeline`]. Calls are made in the
/// context that is current in the calling thread: the launch's context.
pub struct CudaTimeline {
    private: CUstream,
}

impl CudaTimeline {
    /// A timeline whose private stream is made at its first use.
    pub fn new() -> Self {
        CudaTimeline {
            private: std::ptr::null_mut(),
        }
    }
}

impl Timeline for CudaTimeline {
    type Event = usize;
    type Stream = StreamKey;

    fn new_event(&mut self) -> Option<usize> {
        let mut event: CUevent = std::ptr::null_mut();
        let r = call_driver!(
            id::cuEventCreate,
            EventCreateFn,
            &mut event,
            CU_EVENT_BLOCKING_SYNC
        );
        (r == CUDA_SUCCESS && !event.is_null()).then_some(event as usize)
    }

    fn record(&mut self, event: usize, stream: StreamKey) -> bool {
        // An event recorded into a stream being captured would become part of the
        // user's graph, and one recorded into another thread's per-thread default
        // stream would land in this thread's: the group it would close is measured as
        // lost instead (charged its launches' usual time).
        if !stream.reachable() || capturing(stream.handle as CUstream) != Some(false) {
            return false;
        }
        call_driver!(
            id::cuEventRecord,
            EventRecordFn,
            event as CUevent,
            stream.handle as CUstream
        ) == CUDA_SUCCESS
    }

    fn record_private(&mut self, event: usize) -> bool {
        if self.private.is_null() {
            let mut stream: CUstream = std::ptr::null_mut();
            if call_driver!(
                id::cuStreamCreate,
                StreamCreateFn,
                &mut stream,
                CU_STREAM_NON_BLOCKING
            ) != CUDA_SUCCESS
            {
                return false;
            }
            self.private = stream;
        }
        let ok = call_driver!(
            id::cuEventRecord,
            EventRecordFn,
            event as CUevent,
            self.private
        ) == CUDA_SUCCESS;
        if !ok {
            // The stream may belong to a context that is gone (a reset, or a destroyed
            // context whose address was reused): the next re-base makes a new one, so
            // that the meter measures again instead of losing every launch from now on.
            self.private = std::ptr::null_mut();
        }
        ok
    }

    fn is_done(&mut self, event: usize) -> Option<bool> {
        match call_driver!(id::cuEventQuery, EventFn, event as CUevent) {
            CUDA_SUCCESS => Some(true),
            CUDA_ERROR_NOT_READY => Some(false),
            _ => None,
        }
    }

    fn stream_idle(&mut self, stream: StreamKey) -> Option<bool> {
        // Querying a stream being captured would invalidate the capture.
        if !stream.reachable() || capturing(stream.handle as CUstream) != Some(false) {
            return None;
        }
        match call_driver!(id::cuStreamQuery, StreamFn, stream.handle as CUstream) {
            CUDA_SUCCESS => Some(true),
            CUDA_ERROR_NOT_READY => Some(false),
            _ => None,
        }
    }

    fn wait(&mut self, event: usize) -> bool {
        call_driver!(id::cuEventSynchronize, EventFn, event as CUevent) == CUDA_SUCCESS
    }

    fn elapsed_ns(&mut self, from: usize, to: usize) -> Option<i64> {
        let mut ms: f32 = 0.0;
        let mut r = call_driver!(
            id::cuEventElapsedTime_v2,
            ElapsedFn,
            &mut ms,
            from as CUevent,
            to as CUevent
        );
        if r == CUDA_ERROR_NOT_FOUND {
            r = call_driver!(
                id::cuEventElapsedTime,
                ElapsedFn,
                &mut ms,
                from as CUevent,
                to as CUevent
            );
        }
        (r == CUDA_SUCCESS).then(|| elapsed_ns(ms))
    }
}

/// `cuEventElapsedTime`'s milliseconds in nanoseconds.
#[expect(
    clippy::cast_possible_truncation,
    reason = "the driver's elapsed time is finite and far below 2^63 ns; `as` saturates even so"
)]
fn elapsed_ns(ms: f32) -> i64 {
    (f64::from(ms) * 1e6) as i64
}

/// The busy time of this process by the driver's own per-process utilization samples
/// (NVML): the second candidate, kept for comparison (`GPUSLICE_COMPUTE_METHOD=nvml`).
/// It sees work only after the driver has sampled it and cannot bound the queue.
pub struct NvmlMeter {
    uuid: String,
    pid: u32,
    last_poll_ns: u64,
    last_sample_us: u64,
}

const NVML_POLL_NS: u64 = 50_000_000;

impl NvmlMeter {
    /// The meter of process `pid` on the GPU `uuid`, from `now_ns` on.
    pub fn new(uuid: String, pid: u32, now_ns: u64) -> Self {
        NvmlMeter {
            uuid,
            pid,
            last_poll_ns: now_ns,
            last_sample_us: 0,
        }
    }
}

impl BusyMeter for NvmlMeter {
    fn harvest(&mut self, now_ns: u64) -> Harvest {
        if now_ns.saturating_sub(self.last_poll_ns) < NVML_POLL_NS {
            return Harvest::default();
        }
        self.last_poll_ns = now_ns;
        let samples = crate::nvml::utilization_samples(&self.uuid, self.last_sample_us);
        let mut busy_ns = 0u64;
        for (pid, at_us, sm_percent) in samples {
            if pid != self.pid || at_us <= self.last_sample_us {
                continue;
            }
            let span_us = if self.last_sample_us == 0 {
                NVML_POLL_NS / 1000
            } else {
                at_us - self.last_sample_us
            };
            busy_ns += span_us * 1000 * u64::from(sm_percent.min(100)) / 100;
            self.last_sample_us = at_us;
        }
        Harvest {
            busy_ns,
            started_ns: now_ns.saturating_sub(busy_ns),
        }
    }
    fn pending(&self) -> usize {
        0
    }
    fn inflight_estimate_ns(&self) -> u64 {
        0
    }
    fn room(&self, _max_inflight_ns: u64, max_pending: usize) -> usize {
        max_pending
    }
    fn wait_oldest(&mut self) {}
    fn wait_all(&mut self) {}
}

pub enum Meter {
    /// CUDA events around groups of launches (the default).
    Events(Box<EventMeter<CudaTimeline>>),
    /// NVML's per-process utilization samples.
    Nvml(NvmlMeter),
}

impl Meter {
    /// The meter as the gate sees it.
    pub fn as_dyn(&mut self) -> &mut dyn BusyMeter {
        match self {
            Meter::Events(m) => m.as_mut(),
            Meter::Nvml(m) => m,
        }
    }
}

/// Whether a stream is being captured; `None` when the driver will not say (then the
/// launch is not gated: it would fail the same way in the driver).
pub fn capturing(stream: CUstream) -> Option<bool> {
    let mut status: c_int = CU_STREAM_CAPTURE_STATUS_NONE;
    let r = call_driver!(id::cuStreamIsCapturing, IsCapturingFn, stream, &mut status);
    (r == CUDA_SUCCESS).then_some(status != CU_STREAM_CAPTURE_STATUS_NONE)
}

/// The launch path's reading of the clock: the CPU's time-stamp counter, scaled to
/// nanoseconds by a rate measured against [`clock`], instead of a `clock_gettime` call
/// for every launch. Each gate keeps its own, and rebases it on every full check
/// ([`LaunchClock::precise_ns`]), so what it reads is at most [`EXTRAPOLATE_NS`] away from
/// a real reading. Where the counter cannot be trusted (not x86-64, a counter that does
/// not tick at a constant rate, the fake driver's virtual clock) every reading is a real
/// one.
#[derive(Debug, Default)]
pub struct LaunchClock {
    /// A real reading and the counter read with it.
    base: Option<(u64, u64)>,
    /// The reading the rate is measured from.
    origin: Option<(u64, u64)>,
    /// Nanoseconds per tick times 2^32; 0 until measured over [`CALIBRATE_NS`].
    scale_q32: u64,
    /// The most ticks read past the base before a real reading is taken.
    max_ticks: u64,
}

/// How long the counter's rate is measured against the clock before it is used (and
/// again each time, on the way, so that the rate follows the clock's slewing).
const CALIBRATE_NS: u64 = 20_000_000;
/// How far past its last real reading the launch clock extrapolates.
const EXTRAPOLATE_NS: u64 = 4_000_000;

impl LaunchClock {
    /// The time now, for the launch path: from the counter when calibrated and rebased
    /// recently, else a real reading (which rebases).
    #[inline]
    pub fn now_ns(&mut self) -> u64 {
        if let Some((ns, tsc)) = self.base
            && self.scale_q32 > 0
        {
            let ticks = read_tsc().wrapping_sub(tsc);
            // A counter behind the base (another CPU's) reads as a huge count: it fails
            // the bound too, and a real reading is taken.
            if ticks < self.max_ticks {
                let elapsed = (u128::from(ticks) * u128::from(self.scale_q32)) >> 32;
                // Bounded by `max_ticks`: the product fits well within 64 bits.
                return ns + u64::try_from(elapsed).unwrap_or(EXTRAPOLATE_NS);
            }
        }
        self.precise_ns()
    }

    /// A real reading of the clock, which rebases the counter (and measures its rate).
    pub fn precise_ns(&mut self) -> u64 {
        let ns = clock().now_ns();
        if !tsc_usable() {
            return ns;
        }
        let tsc = read_tsc();
        self.base = Some((ns, tsc));
        match self.origin {
            Some((ns0, tsc0)) if ns.saturating_sub(ns0) >= CALIBRATE_NS && tsc > tsc0 => {
                let scale = (u128::from(ns - ns0) << 32) / u128::from(tsc - tsc0);
                match u64::try_from(scale) {
                    Ok(scale) if scale > 0 => {
                        self.scale_q32 = scale;
                        self.max_ticks =
                            u64::try_from((u128::from(EXTRAPOLATE_NS) << 32) / u128::from(scale))
                                .unwrap_or(0);
                    }
                    _ => self.scale_q32 = 0,
                }
                self.origin = Some((ns, tsc));
            }
            Some((ns0, tsc0)) if ns >= ns0 && tsc >= tsc0 => {}
            // The first reading, or a counter that went back (another CPU's): measure
            // afresh.
            _ => {
                self.origin = Some((ns, tsc));
                self.scale_q32 = 0;
            }
        }
        ns
    }
}

/// Whether the time-stamp counter can stand in for the clock: the host's clock is the
/// one read (not the fake driver's virtual one), and the CPU says its counter ticks at
/// a constant rate whatever its frequency and sleep states (an invariant counter).
fn tsc_usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| clock().is_real() && invariant_tsc())
}

#[cfg(target_arch = "x86_64")]
fn invariant_tsc() -> bool {
    use std::arch::x86_64::__cpuid;
    // Leaf 0x8000_0007 (advanced power management), EDX bit 8: the invariant counter,
    // asked only if the CPU reports the leaf.
    __cpuid(0x8000_0000).eax >= 0x8000_0007 && __cpuid(0x8000_0007).edx & (1 << 8) != 0
}

#[cfg(not(target_arch = "x86_64"))]
fn invariant_tsc() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
#[inline]
fn read_tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and only reads the counter.
    unsafe { std::arch::x86_64::_rdtsc() }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn read_tsc() -> u64 {
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_compute::clock::monotonic_ns;

    #[test]
    fn the_launch_clock_keeps_within_microseconds_of_the_real_one() {
        let mut c = LaunchClock::default();
        let first = c.precise_ns();
        std::thread::sleep(std::time::Duration::from_millis(25));
        // Calibrated now, where the counter can be trusted.
        c.precise_ns();
        assert_eq!(c.scale_q32 > 0, tsc_usable());
        let mut last = first;
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_micros(100));
            let before = monotonic_ns();
            let read = c.now_ns();
            let after = monotonic_ns();
            assert!(
                read + 20_000 >= before && read <= after + 20_000,
                "{before} <= {read} <= {after}, within 20 µs"
            );
            assert!(read >= last, "no reading before an earlier one");
            last = read;
        }
    }
}
