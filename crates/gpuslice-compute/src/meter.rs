//! Measuring a process's GPU busy time with timing events.
//!
//! After each launch the process records one event on the launch's stream. When the
//! event has completed, its timestamp is the moment that launch's work ended. The work
//! began when the previous work on the same stream ended, or, if the stream had run dry,
//! when the GPU reached it: for a launch into a stream that has drained (its newest
//! pending launch, asked right before this one, has completed), an event is recorded
//! just before the launch too, whose timestamp excludes the time the GPU spent on other
//! processes' work and switching to this one. Where neither is known, the
//! submission time from the CPU clock is used, mapped onto the GPU's event clock by
//! reference events recorded on a private idle stream (the mapping errs towards too
//! early, so busy time is never under-counted by it).
//! Busy intervals of several streams are merged, so overlapping streams count once.
//!
//! Event timestamps are read relative to a chain of reference events, re-based every
//! 100 ms, so that the millisecond floats of `cuEventElapsedTime` never lose precision.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// The GPU operations the meter needs: events recorded on streams, queried, waited
/// for, and compared in time. The CUDA driver, the fake driver and the simulated GPU
/// implement it.
pub trait Timeline {
    /// An event.
    type Event: Copy + PartialEq + std::fmt::Debug;
    /// A stream, as the meter tells streams apart.
    type Stream: Copy + Eq + Hash + std::fmt::Debug;
    /// A new timing event.
    fn new_event(&mut self) -> Option<Self::Event>;
    /// Records `event` on `stream`; false if the driver refused.
    fn record(&mut self, event: Self::Event, stream: Self::Stream) -> bool;
    /// Records `event` on the meter's own idle stream.
    fn record_private(&mut self, event: Self::Event) -> bool;
    /// Whether `event` has completed; `None` on an error.
    fn is_done(&mut self, event: Self::Event) -> Option<bool>;
    /// Blocks until `event` has completed; false on an error.
    fn wait(&mut self, event: Self::Event) -> bool;
    /// Nanoseconds from `from` to `to`, both completed.
    fn elapsed_ns(&mut self, from: Self::Event, to: Self::Event) -> Option<i64>;
}

/// What a harvest of completed work found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Harvest {
    /// GPU busy time, overlapping streams counted once.
    pub busy_ns: u64,
    /// When (CPU clock) the earliest of that work began; 0 when there was none.
    pub started_ns: u64,
}

/// A source of GPU busy time for the gate.
pub trait BusyMeter {
    /// Collects the busy time of work that has completed since the last harvest.
    fn harvest(&mut self, now_ns: u64) -> Harvest;
    /// Launches whose work has not been harvested yet.
    fn pending(&self) -> usize;
    /// An estimate of the GPU time still queued by this process.
    fn inflight_estimate_ns(&self) -> u64;
    /// How many more launches may be queued before the queue is full (an estimate).
    fn room(&self, max_inflight_ns: u64, max_pending: usize) -> usize;
    /// Blocks until the oldest pending launch has completed.
    fn wait_oldest(&mut self);
    /// Blocks until every pending launch has completed.
    fn wait_all(&mut self);
}

struct Mark<T: Timeline> {
    event: T::Event,
    /// An event recorded just before the launch, when the stream was drained.
    start: Option<T::Event>,
    stream: T::Stream,
    submitted_ns: u64,
    generation: u64,
}

struct Reference<T: Timeline> {
    generation: u64,
    event: T::Event,
    recorded_ns: u64,
    /// Position on the meter's GPU time axis, once the event has completed.
    at: Option<i64>,
    /// Whether this reference starts the time axis (it is at 0).
    epoch: bool,
}

const REBASE_NS: u64 = 100_000_000;
const OFFSET_SAMPLES: usize = 16;
/// Launches a process may queue before any of its work has been measured.
const UNMEASURED_PENDING: usize = 2;

/// Busy time from events, for one CUDA context.
pub struct EventMeter<T: Timeline> {
    timeline: T,
    free: Vec<T::Event>,
    pending: VecDeque<Mark<T>>,
    references: VecDeque<Reference<T>>,
    next_generation: u64,
    last_rebase_ns: u64,
    last_end: HashMap<T::Stream, i64>,
    /// For each stream with pending launches, the event of its newest.
    newest: HashMap<T::Stream, T::Event>,
    /// The start event recorded before the launch in progress.
    starting: Option<(T::Stream, T::Event)>,
    offsets: VecDeque<i64>,
    horizon: i64,
    average_ns: u64,
    lost: u64,
}

impl<T: Timeline> EventMeter<T> {
    /// A meter over `timeline`, starting its reference chain at `now_ns`.
    pub fn new(timeline: T, now_ns: u64) -> Self {
        let mut meter = EventMeter {
            timeline,
            free: Vec::new(),
            pending: VecDeque::new(),
            references: VecDeque::new(),
            next_generation: 0,
            last_rebase_ns: 0,
            last_end: HashMap::new(),
            newest: HashMap::new(),
            starting: None,
            offsets: VecDeque::new(),
            horizon: i64::MIN,
            average_ns: 0,
            lost: 0,
        };
        meter.rebase(now_ns);
        meter
    }

    /// Starts over after the driver lost events (a destroyed context, a sticky error):
    /// pending launches are dropped as unmeasurable and a new time axis begins.
    fn reset(&mut self, now_ns: u64) {
        self.lost += self.pending.len() as u64;
        self.pending.clear();
        self.references.clear();
        self.free.clear();
        self.last_end.clear();
        self.newest.clear();
        self.starting = None;
        self.offsets.clear();
        self.horizon = i64::MIN;
        self.rebase(now_ns);
    }

    /// The timeline (for the caller's own bookkeeping).
    pub fn timeline(&mut self) -> &mut T {
        &mut self.timeline
    }

    /// Launches that could not be measured (driver errors).
    pub fn lost(&self) -> u64 {
        self.lost
    }

    fn take_event(&mut self) -> Option<T::Event> {
        self.free.pop().or_else(|| self.timeline.new_event())
    }

    fn rebase(&mut self, now_ns: u64) {
        let Some(event) = self.take_event() else {
            return;
        };
        if !self.timeline.record_private(event) {
            self.free.push(event);
            return;
        }
        let epoch = self.references.is_empty();
        self.references.push_back(Reference {
            generation: self.next_generation,
            event,
            recorded_ns: now_ns,
            at: None,
            epoch,
        });
        self.next_generation += 1;
        self.last_rebase_ns = now_ns;
    }

    /// Right before a launch on `stream`: if the stream is known to be drained, records
    /// the event that will time the start of the launch's work.
    pub fn before_launch(&mut self, stream: T::Stream) {
        if let Some((_, event)) = self.starting.take() {
            self.free.push(event);
        }
        // Drained: nothing of it pending, or its newest pending launch has completed
        // (asked now, so that a stream that ran dry since the last harvest is caught).
        let drained = match self.newest.get(&stream) {
            None => true,
            Some(&event) => self.timeline.is_done(event) != Some(false),
        };
        if !drained {
            return;
        }
        let Some(event) = self.take_event() else {
            return;
        };
        if self.timeline.record(event, stream) {
            self.starting = Some((stream, event));
        } else {
            self.free.push(event);
        }
    }

    /// Records the end of a launch that was submitted at `submitted_ns` on `stream`.
    /// False if it could not be measured.
    pub fn after_launch(&mut self, stream: T::Stream, submitted_ns: u64) -> bool {
        let start = match self.starting.take() {
            Some((s, event)) if s == stream => Some(event),
            Some((_, event)) => {
                self.free.push(event);
                None
            }
            None => None,
        };
        let recycle = |free: &mut Vec<T::Event>| {
            if let Some(e) = start {
                free.push(e);
            }
        };
        let Some(generation) = self.references.back().map(|r| r.generation) else {
            recycle(&mut self.free);
            self.lost += 1;
            return false;
        };
        let Some(event) = self.take_event() else {
            recycle(&mut self.free);
            self.lost += 1;
            return false;
        };
        if !self.timeline.record(event, stream) {
            self.free.push(event);
            recycle(&mut self.free);
            self.lost += 1;
            return false;
        }
        self.newest.insert(stream, event);
        self.pending.push_back(Mark {
            event,
            start,
            stream,
            submitted_ns,
            generation,
        });
        true
    }

    /// Places completed reference events on the time axis and takes clock samples.
    /// False if the driver has lost them (the meter must start over).
    fn resolve_references(&mut self) -> bool {
        for i in 0..self.references.len() {
            if self.references[i].at.is_some() {
                continue;
            }
            let event = self.references[i].event;
            match self.timeline.is_done(event) {
                Some(true) => {}
                Some(false) => break,
                None => return false,
            }
            let at = if self.references[i].epoch {
                Some(0)
            } else if i == 0 {
                None
            } else {
                let prev = &self.references[i - 1];
                match prev.at {
                    Some(prev_at) => self
                        .timeline
                        .elapsed_ns(prev.event, event)
                        .map(|d| prev_at + d),
                    None => None,
                }
            };
            let Some(at) = at else { break };
            self.references[i].at = Some(at);
            self.offsets
                .push_back(self.references[i].recorded_ns as i64 - at);
            if self.offsets.len() > OFFSET_SAMPLES {
                self.offsets.pop_front();
            }
        }
        // Drop references no pending launch needs, keeping the newest resolved one.
        while self.references.len() > 1 && self.references[1].at.is_some() {
            let oldest = self.references[0].generation;
            if self.pending.iter().any(|m| m.generation == oldest) {
                break;
            }
            if let Some(r) = self.references.pop_front() {
                self.free.push(r.event);
            }
        }
        true
    }

    /// CPU time minus GPU-axis time: the largest sample, so that a submission maps to
    /// no later than the earliest moment its work could start.
    fn offset(&self) -> Option<i64> {
        self.offsets.iter().copied().max()
    }

    fn reference_at(&self, generation: u64) -> Option<(T::Event, i64)> {
        self.references
            .iter()
            .find(|r| r.generation == generation)
            .and_then(|r| r.at.map(|at| (r.event, at)))
    }

    /// For each stream with pending launches, how many of its oldest are complete.
    fn completed_per_stream(&mut self) -> HashMap<T::Stream, usize> {
        let mut by_stream: HashMap<T::Stream, Vec<T::Event>> = HashMap::new();
        for m in &self.pending {
            by_stream.entry(m.stream).or_default().push(m.event);
        }
        let mut done = HashMap::new();
        for (stream, events) in by_stream {
            // Work on one stream completes in order: find the boundary by bisection.
            // An event the driver cannot answer for counts as completed (and is then
            // dropped as unmeasurable), so that a broken event never blocks a stream.
            let (mut lo, mut hi) = (0usize, events.len());
            if self.timeline.is_done(events[hi - 1]) != Some(false) {
                lo = hi;
            } else {
                hi -= 1;
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    if self.timeline.is_done(events[mid]) != Some(false) {
                        lo = mid + 1;
                    } else {
                        hi = mid;
                    }
                }
            }
            done.insert(stream, lo);
        }
        done
    }
}

impl<T: Timeline> BusyMeter for EventMeter<T> {
    fn harvest(&mut self, now_ns: u64) -> Harvest {
        if now_ns.saturating_sub(self.last_rebase_ns) >= REBASE_NS {
            self.rebase(now_ns);
        }
        if !self.resolve_references() {
            self.reset(now_ns);
            return Harvest::default();
        }
        if self.pending.is_empty() {
            return Harvest::default();
        }
        let mut budget = self.completed_per_stream();
        let offset = self.offset();
        let mut intervals: Vec<(i64, i64)> = Vec::new();
        let mut keep: VecDeque<Mark<T>> = VecDeque::with_capacity(self.pending.len());
        let marks: Vec<Mark<T>> = self.pending.drain(..).collect();
        let mut blocked_streams: Vec<T::Stream> = Vec::new();
        for m in marks {
            let left = budget.get_mut(&m.stream);
            let complete = matches!(left, Some(n) if *n > 0);
            if !complete || blocked_streams.contains(&m.stream) {
                keep.push_back(m);
                continue;
            }
            let Some((reference, reference_at)) = self.reference_at(m.generation) else {
                // Its reference is not placed yet: keep it (and what follows on its
                // stream) for the next harvest.
                blocked_streams.push(m.stream);
                keep.push_back(m);
                continue;
            };
            if let Some(n) = budget.get_mut(&m.stream) {
                *n -= 1;
            }
            let Some(end) = self
                .timeline
                .elapsed_ns(reference, m.event)
                .map(|d| reference_at + d)
            else {
                self.lost += 1;
                self.free.push(m.event);
                if let Some(se) = m.start {
                    self.free.push(se);
                }
                continue;
            };
            // When the work began: the GPU's own start mark if there is one, else the
            // mapped submission time; never before the stream's previous work ended.
            let began = match m.start {
                Some(se) => self
                    .timeline
                    .elapsed_ns(reference, se)
                    .map(|d| reference_at + d),
                None => None,
            }
            .or_else(|| offset.map(|o| m.submitted_ns as i64 - o))
            .map(|s| s.min(end));
            if let Some(se) = m.start {
                self.free.push(se);
            }
            let start = match (self.last_end.get(&m.stream).copied(), began) {
                (Some(prev), Some(s)) => prev.max(s),
                (Some(prev), None) => prev,
                (None, Some(s)) => s,
                (None, None) => end,
            }
            .min(end);
            self.last_end.insert(m.stream, end);
            intervals.push((start, end));
            self.free.push(m.event);
        }
        self.pending = keep;
        // A stream with nothing pending has drained: its next launch gets a start mark.
        self.newest.clear();
        for m in &self.pending {
            self.newest.insert(m.stream, m.event);
        }
        if intervals.is_empty() {
            return Harvest::default();
        }
        let marks = intervals.len() as u64;
        intervals.sort_unstable();
        let mut busy: i64 = 0;
        for &(start, end) in &intervals {
            let from = start.max(self.horizon);
            if end > from {
                busy += end - from;
            }
            self.horizon = self.horizon.max(end);
        }
        let busy = busy.max(0) as u64;
        let per_mark = busy / marks;
        self.average_ns = if self.average_ns == 0 {
            per_mark
        } else {
            (self.average_ns * 7 + per_mark) / 8
        };
        let started_ns = match offset {
            Some(o) => (intervals[0].0 + o).max(0) as u64,
            None => now_ns.saturating_sub(busy),
        };
        Harvest {
            busy_ns: busy,
            started_ns,
        }
    }

    fn pending(&self) -> usize {
        self.pending.len()
    }

    fn inflight_estimate_ns(&self) -> u64 {
        if self.average_ns == 0 && self.pending.len() > UNMEASURED_PENDING {
            // Nothing measured yet: the work may be long, so queue little until it is.
            return u64::MAX;
        }
        self.average_ns.saturating_mul(self.pending.len() as u64)
    }

    fn room(&self, max_inflight_ns: u64, max_pending: usize) -> usize {
        let by_count = max_pending.saturating_sub(self.pending.len());
        // One launch more than the bound allows is always let through, so that the next
        // work is queued before the running work ends: the GPU never waits for the CPU
        // to notice a completion, however long each launch's work is.
        let by_time = match (max_inflight_ns + self.average_ns)
            .saturating_sub(self.inflight_estimate_ns())
            .checked_div(self.average_ns)
        {
            Some(n) => n as usize,
            None => UNMEASURED_PENDING.saturating_sub(self.pending.len()),
        };
        // With nothing queued, one launch may always go, however long it is.
        let by_time = if self.pending.is_empty() {
            by_time.max(1)
        } else {
            by_time
        };
        by_count.min(by_time)
    }

    fn wait_oldest(&mut self) {
        if let Some(m) = self.pending.front() {
            let event = m.event;
            if !self.timeline.wait(event) {
                // Unmeasurable: forget it rather than wait for it again.
                self.lost += 1;
                self.pending.pop_front();
            }
        }
    }

    fn wait_all(&mut self) {
        let mut newest: HashMap<T::Stream, T::Event> = HashMap::new();
        for m in &self.pending {
            newest.insert(m.stream, m.event);
        }
        let mut failed = false;
        for (_, event) in newest {
            failed |= !self.timeline.wait(event);
        }
        if failed {
            self.lost += self.pending.len() as u64;
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events whose completion times the test sets; "now" is set by the test too.
    #[derive(Default)]
    struct Scripted {
        now: i64,
        times: Vec<i64>,
        next_record: VecDeque<i64>,
    }

    impl Timeline for Scripted {
        type Event = usize;
        type Stream = u8;
        fn new_event(&mut self) -> Option<usize> {
            self.times.push(i64::MAX);
            Some(self.times.len() - 1)
        }
        fn record(&mut self, event: usize, _stream: u8) -> bool {
            self.times[event] = self.next_record.pop_front().unwrap();
            true
        }
        fn record_private(&mut self, event: usize) -> bool {
            // References complete at once, at CPU time minus 1000 (the clock offset).
            self.times[event] = self.now - 1000;
            true
        }
        fn is_done(&mut self, event: usize) -> Option<bool> {
            Some(self.times[event] <= self.now - 1000)
        }
        fn wait(&mut self, _event: usize) -> bool {
            true
        }
        fn elapsed_ns(&mut self, from: usize, to: usize) -> Option<i64> {
            Some(self.times[to] - self.times[from])
        }
    }

    #[test]
    fn overlapping_streams_count_once_and_idle_gaps_not_at_all() {
        let mut m = EventMeter::new(
            Scripted {
                now: 10_000,
                ..Scripted::default()
            },
            10_000,
        );
        // GPU axis = CPU time - 1000. Stream 1: submitted at 10 000, ends at 19 000
        // (runs 9 000..19 000 on the GPU axis... i.e. 10 000 ns from its submission).
        // Stream 2: submitted at 12 000, ends at 15 000 (inside stream 1's work).
        // Stream 1 again: submitted at 40 000 after an idle gap, ends at 44 000.
        m.timeline().next_record.extend([18_000, 14_000, 43_000]);
        assert!(m.after_launch(1, 10_000));
        assert!(m.after_launch(2, 12_000));
        assert!(m.after_launch(1, 40_000));
        m.timeline().now = 50_000;
        let h = m.harvest(50_000);
        // 9 000 + 0 (overlap) + 4 000: the gap between 19 000 and 40 000 is idle.
        assert_eq!(h.busy_ns, 9_000 + 4_000);
        assert_eq!(h.started_ns, 10_000);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn a_start_mark_on_a_drained_stream_times_the_start_of_the_work() {
        let mut m = EventMeter::new(
            Scripted {
                now: 10_000,
                ..Scripted::default()
            },
            10_000,
        );
        // Submitted at 10 000 (GPU axis 9 000), but the GPU reached it only at 15 000
        // (it was running another process's work): the start mark says so.
        m.timeline().next_record.extend([15_000, 18_000]);
        m.before_launch(3);
        assert!(m.after_launch(3, 10_000));
        m.timeline().now = 30_000;
        assert_eq!(m.harvest(30_000).busy_ns, 3_000);
        // The stream has drained again: the next launch gets a start mark too.
        m.timeline().next_record.extend([25_000, 26_000]);
        m.before_launch(3);
        assert!(m.after_launch(3, 24_000));
        m.timeline().now = 40_000;
        assert_eq!(m.harvest(40_000).busy_ns, 1_000);
    }

    #[test]
    fn a_stream_that_ran_dry_since_the_last_harvest_gets_a_start_mark() {
        let mut m = EventMeter::new(
            Scripted {
                now: 10_000,
                ..Scripted::default()
            },
            10_000,
        );
        // First launch: 10 000..12 000 on the GPU axis.
        m.timeline().next_record.extend([10_000, 12_000]);
        m.before_launch(4);
        assert!(m.after_launch(4, 11_000));
        // No harvest since, but that work has completed: the next launch, submitted at
        // 20 000, is reached by the GPU only at 30 000 (another process ran), and its
        // start mark says so. Without it the wait would be charged as busy.
        m.timeline().now = 20_000;
        m.timeline().next_record.extend([30_000, 31_000]);
        m.before_launch(4);
        assert!(m.after_launch(4, 20_000));
        m.timeline().now = 40_000;
        assert_eq!(m.harvest(40_000).busy_ns, 2_000 + 1_000);
    }

    #[test]
    fn work_queued_behind_other_work_starts_when_that_ends() {
        let mut m = EventMeter::new(
            Scripted {
                now: 10_000,
                ..Scripted::default()
            },
            10_000,
        );
        // Three launches submitted at once on one stream, 5 000 ns each.
        m.timeline().next_record.extend([14_000, 19_000, 24_000]);
        for _ in 0..3 {
            m.after_launch(7, 10_000);
        }
        // Only the first has completed.
        m.timeline().now = 16_000;
        assert_eq!(m.harvest(16_000).busy_ns, 5_000);
        assert_eq!(m.pending(), 2);
        m.timeline().now = 30_000;
        assert_eq!(m.harvest(30_000).busy_ns, 10_000);
        assert_eq!(m.pending(), 0);
    }
}
