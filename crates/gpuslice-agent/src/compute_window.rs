//! The slices' compute use over a sliding window, for `/metrics`'
//! `gpuslice_slice_compute_used_ratio`: the history of each compute-limited (slice, GPU)'s
//! busy time (`busy_ns`, the compute meter's charge in the slice's ledger), sampled
//! about every [`SAMPLE_PERIOD`] by a thread of the exporter's, and the share of the GPU
//! it used over the last [`WINDOW`]: the busy time charged in the window over the wall
//! time it spans.
//!
//! Memory is bounded: a series keeps only the samples of its window (at most
//! [`MAX_SAMPLES`]), and a series whose slice or GPU entry is gone from a reading is
//! dropped with it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How far back the share is measured.
pub const WINDOW: Duration = Duration::from_secs(10);

/// How often the exporter's sampler reads the ledgers.
pub const SAMPLE_PERIOD: Duration = Duration::from_secs(1);

/// The shortest span a share is given for: below it (in the agent's first moments, or
/// a slice's first), the share would be mostly noise and is left out.
pub const MIN_SPAN: Duration = Duration::from_millis(500);

/// The most samples one series keeps, whatever the rate of readings.
pub const MAX_SAMPLES: usize = 64;

/// One metered (slice, GPU): the slice's ledger file (two users' slices may share a
/// name, never a file) and the GPU's UUID.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeterKey {
    /// The slice's ledger file.
    pub ledger: String,
    /// The GPU's UUID.
    pub gpu_uuid: String,
}

/// The busy-time history of every metered (slice, GPU).
#[derive(Debug)]
pub struct ComputeWindow {
    window: Duration,
    series: Mutex<HashMap<MeterKey, VecDeque<(Instant, u64)>>>,
}

impl Default for ComputeWindow {
    fn default() -> Self {
        Self::new(WINDOW)
    }
}

impl ComputeWindow {
    /// An empty history measuring over `window`.
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            series: Mutex::new(HashMap::new()),
        }
    }

    /// Records `readings` (each metered (slice, GPU) and its busy time in ns), read at
    /// `at`. A series missing from `readings` is dropped; one whose busy time went back
    /// (its ledger was made anew) starts again.
    pub fn record(&self, at: Instant, readings: impl IntoIterator<Item = (MeterKey, u64)>) {
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut seen: HashMap<MeterKey, VecDeque<(Instant, u64)>> = HashMap::new();
        for (key, busy) in readings {
            let mut samples = series.remove(&key).unwrap_or_default();
            if samples.back().is_some_and(|&(_, last)| busy < last) {
                samples.clear();
            }
            samples.push_back((at, busy));
            while samples.len() > MAX_SAMPLES
                || samples
                    .front()
                    .is_some_and(|&(t, _)| at.saturating_duration_since(t) > self.window)
            {
                samples.pop_front();
            }
            seen.insert(key, samples);
        }
        *series = seen;
    }

    /// The share of the GPU that `key` used over the window ending at `at`, when its
    /// busy time is `busy_ns`: the busy time since the oldest sample of the window over
    /// the wall time since it (so shorter than the window until the agent has watched
    /// the slice that long). `None` without a sample at least [`MIN_SPAN`] old.
    pub fn ratio(&self, key: &MeterKey, at: Instant, busy_ns: u64) -> Option<f64> {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let &(since, base) = series
            .get(key)?
            .iter()
            .find(|&&(t, _)| at.saturating_duration_since(t) <= self.window)?;
        let span = at.saturating_duration_since(since);
        if span < MIN_SPAN || busy_ns < base {
            return None;
        }
        Some((busy_ns - base) as f64 / span.as_nanos() as f64)
    }

    /// How many (slice, GPU)s are metered.
    pub fn len(&self) -> usize {
        self.series.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ledger: &str) -> MeterKey {
        MeterKey {
            ledger: ledger.into(),
            gpu_uuid: "GPU-1".into(),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn the_share_is_busy_time_over_wall_time_since_the_window_began() {
        let w = ComputeWindow::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Too early: no sample half a second old.
        w.record(at(0), [(key("a"), 0)]);
        assert_eq!(w.ratio(&key("a"), at(0), 0), None);
        // 30% busy for four seconds: the share over the four seconds watched so far.
        for s in 1..=4 {
            w.record(at(s), [(key("a"), s * S * 3 / 10)]);
        }
        let r = w.ratio(&key("a"), at(4), 4 * S * 3 / 10).unwrap();
        assert!((r - 0.3).abs() < 1e-9, "{r}");
        // Then idle for 20 s: the window holds only idle time.
        for s in 5..=24 {
            w.record(at(s), [(key("a"), 4 * S * 3 / 10)]);
        }
        assert_eq!(w.ratio(&key("a"), at(24), 4 * S * 3 / 10), Some(0.0));
        // Then fully busy: after 5 s of the last 10, half.
        let mut busy = 4 * S * 3 / 10;
        for s in 25..=29 {
            busy += S;
            w.record(at(s), [(key("a"), busy)]);
        }
        let r = w.ratio(&key("a"), at(29), busy).unwrap();
        assert!((r - 0.5).abs() < 1e-9, "{r}");
        // An unknown series has no share.
        assert_eq!(w.ratio(&key("b"), at(29), busy), None);
    }

    #[test]
    fn series_are_bounded_and_those_gone_are_dropped() {
        let w = ComputeWindow::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for ms in 0..1_000u64 {
            w.record(
                t0 + Duration::from_millis(ms),
                [(key("a"), ms), (key("b"), ms)],
            );
        }
        {
            let series = w.series.lock().unwrap();
            assert!(series.values().all(|s| s.len() == MAX_SAMPLES));
        }
        w.record(t0 + Duration::from_secs(2), [(key("b"), 5_000)]);
        assert_eq!(w.len(), 1, "a is gone");
        // b's busy time went back (a new ledger): it starts again.
        let later = t0 + Duration::from_secs(3);
        w.record(later, [(key("b"), 10)]);
        assert_eq!(w.series.lock().unwrap()[&key("b")].len(), 1);
        assert_eq!(w.ratio(&key("b"), later, 10), None);
        w.record(later, []);
        assert!(w.is_empty());
    }
}
