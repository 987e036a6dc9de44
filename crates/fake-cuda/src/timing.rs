//! Time on the fake GPU, for testing compute limits: with `FAKE_CUDA_KERNEL_US` set,
//! every kernel launch occupies the (one, serial) GPU for that many microseconds, a
//! graph launch for that times its kernel nodes, and events complete when the work
//! queued before them on their stream has. Time is virtual and per process: it moves
//! by `FAKE_CUDA_CALL_NS` (default 4000) per launch, a little per event call, to the
//! target of every synchronisation, and by whatever the caller sleeps through
//! [`fakeCudaClockSleep`]. So a test of a controller is exact and repeatable.
//!
//! With `FAKE_CUDA_REALTIME=1` the virtual clock keeps pace with the host's monotonic
//! clock instead, for tests that watch a process from outside over wall time (the
//! agent's compute use over a window): it never lags the host's clock (it jumps up to
//! it when read or used), and a sleep through [`fakeCudaClockSleep`] really sleeps until
//! the host's clock has caught up with it. Shares are then as exact as the host's
//! scheduling lets them be.
//!
//! Exported for the tests and the interposer's clock seam: `fakeCudaClockNow` (0 when
//! timing is off), `fakeCudaClockSleep`, and `fakeCudaBusyNs` (GPU time used so far).

use std::collections::HashMap;
use std::time::Duration;

use crate::driver::{Driver, api};
use crate::types::*;

/// Where the virtual clock starts (far from zero, like a monotonic clock).
const EPOCH_NS: u64 = 1_000_000_000_000;

/// The GPU's timeline.
#[derive(Debug, Default)]
pub struct Timing {
    /// GPU time per kernel; 0 turns timing off.
    pub kernel_ns: u64,
    /// Virtual CPU time one launch costs.
    pub call_ns: u64,
    /// Submission to the earliest start of work.
    pub latency_ns: u64,
    /// Virtual now.
    pub now: u64,
    gpu_free: u64,
    tails: HashMap<u64, u64>,
    events: HashMap<u64, u64>,
    /// GPU time used so far.
    pub busy_ns: u64,
    /// Whether the clock keeps pace with the host's (`FAKE_CUDA_REALTIME=1`).
    pub realtime: bool,
}

/// The host's monotonic clock, in ns.
fn host_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid, exclusive pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    // CLOCK_MONOTONIC never reads negative.
    u64::try_from(ts.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(ts.tv_nsec).unwrap_or(0))
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

impl Timing {
    /// From `FAKE_CUDA_KERNEL_US` and `FAKE_CUDA_CALL_NS`.
    pub fn from_env() -> Self {
        Timing {
            kernel_ns: env_u64("FAKE_CUDA_KERNEL_US").unwrap_or(0) * 1000,
            call_ns: env_u64("FAKE_CUDA_CALL_NS").unwrap_or(4000),
            latency_ns: 5000,
            now: EPOCH_NS,
            realtime: std::env::var("FAKE_CUDA_REALTIME").is_ok_and(|v| v.trim() == "1"),
            ..Timing::default()
        }
    }

    /// In real-time mode, moves the virtual clock up to the host's when it lags.
    fn catch_up(&mut self) {
        if self.realtime {
            self.now = self.now.max(host_now_ns());
        }
    }

    /// In real-time mode, how long the host's clock needs to reach the virtual one.
    fn ahead(&self) -> Option<Duration> {
        let host = host_now_ns();
        (self.realtime && self.now > host).then(|| Duration::from_nanos(self.now - host))
    }

    /// Whether the GPU takes time at all.
    pub fn on(&self) -> bool {
        self.kernel_ns > 0
    }

    /// Queues `duration_ns` of work on stream `sk`.
    pub fn run(&mut self, sk: u64, duration_ns: u64) {
        if !self.on() {
            return;
        }
        self.catch_up();
        self.now += self.call_ns;
        let tail = self.tails.get(&sk).copied().unwrap_or(0);
        let start = (self.now + self.latency_ns).max(tail).max(self.gpu_free);
        let end = start + duration_ns;
        self.gpu_free = end;
        self.tails.insert(sk, end);
        self.busy_ns += duration_ns;
    }

    /// Records event `ev` on stream `sk`.
    pub fn record(&mut self, ev: u64, sk: u64) {
        if !self.on() {
            return;
        }
        self.catch_up();
        self.now += self.call_ns / 4;
        let tail = self.tails.get(&sk).copied().unwrap_or(0);
        let at = tail.max(self.now + self.latency_ns);
        self.tails.insert(sk, at);
        self.events.insert(ev, at);
    }

    /// Whether event `ev` has completed (never-recorded events have).
    pub fn done(&mut self, ev: u64) -> bool {
        if !self.on() {
            return true;
        }
        self.catch_up();
        self.now += 100;
        self.events.get(&ev).is_none_or(|&at| at <= self.now)
    }

    /// Whether everything queued on stream `sk` has completed.
    pub fn stream_done(&mut self, sk: u64) -> bool {
        if !self.on() {
            return true;
        }
        self.catch_up();
        self.now += 100;
        self.tails.get(&sk).is_none_or(|&at| at <= self.now)
    }

    /// Waits for event `ev`.
    pub fn wait_event(&mut self, ev: u64) {
        if let Some(&at) = self.events.get(&ev) {
            self.now = self.now.max(at);
        }
    }

    /// Waits for everything queued on stream `sk` (`None`: on every stream).
    pub fn wait_stream(&mut self, sk: Option<u64>) {
        let target = match sk {
            Some(sk) => self.tails.get(&sk).copied().unwrap_or(0),
            None => self.gpu_free,
        };
        self.now = self.now.max(target);
    }

    /// Milliseconds from `a` to `b`; `None` if either is not recorded or not complete.
    pub fn elapsed_ms(&mut self, a: u64, b: u64) -> Option<f32> {
        if !self.on() {
            return Some(0.0);
        }
        let (ta, tb) = (*self.events.get(&a)?, *self.events.get(&b)?);
        (ta <= self.now && tb <= self.now).then(|| {
            #[expect(
                clippy::cast_possible_truncation,
                reason = "the API reports elapsed time as f32 ms: rounding to f32 is what it asks for"
            )]
            let ns = (tb as f64 - ta as f64) as f32;
            ns / 1e6
        })
    }
}

impl Driver {
    /// Queues a kernel launched on `stream` (already resolved to its key).
    pub fn time_kernels(&mut self, sk: u64, kernels: u64) {
        let d = self.timing.kernel_ns.saturating_mul(kernels.max(1));
        self.timing.run(sk, d);
    }
}

/// The virtual clock in nanoseconds, or 0 when timing is off.
#[unsafe(no_mangle)]
pub extern "C" fn fakeCudaClockNow() -> u64 {
    let mut now = 0;
    api("fakeCudaClockNow", |d| {
        if d.timing.on() {
            d.timing.catch_up();
            now = d.timing.now;
        }
        Ok(())
    });
    now
}

/// Advances the virtual clock by `ns` (a sleep); in real-time mode, then sleeps (not
/// holding the driver) until the host's clock has caught up.
#[unsafe(no_mangle)]
pub extern "C" fn fakeCudaClockSleep(ns: u64) {
    let mut wait = None;
    api("fakeCudaClockSleep", |d| {
        d.timing.catch_up();
        d.timing.now = d.timing.now.saturating_add(ns);
        wait = d.timing.ahead();
        Ok(())
    });
    if let Some(wait) = wait {
        std::thread::sleep(wait);
    }
}

/// GPU time used by this process so far, in nanoseconds.
#[unsafe(no_mangle)]
pub extern "C" fn fakeCudaBusyNs() -> u64 {
    let mut busy = 0;
    api("fakeCudaBusyNs", |d| {
        busy = d.timing.busy_ns;
        Ok(())
    });
    busy
}

/// `cuEventElapsedTime` and `_v2`.
fn elapsed(symbol: &str, ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    api(symbol, |d| {
        if ms.is_null() {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        let (ka, kb) = (crate::driver::key(a), crate::driver::key(b));
        d.check_not_dead("event", ka);
        d.check_not_dead("event", kb);
        if !d.events.contains(&ka) || !d.events.contains(&kb) {
            return Err(CUDA_ERROR_INVALID_HANDLE);
        }
        let v = d.timing.elapsed_ms(ka, kb).ok_or(CUDA_ERROR_NOT_READY)?;
        // SAFETY: non-null, and writable by the API contract.
        unsafe { ms.write(v) };
        Ok(())
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    elapsed("cuEventElapsedTime", ms, a, b)
}

#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuEventElapsedTime_v2(ms: *mut f32, a: Handle, b: Handle) -> CUresult {
    elapsed("cuEventElapsedTime_v2", ms, a, b)
}
