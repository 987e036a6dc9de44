//! Measuring a process's GPU busy time with timing events.
//!
//! Launches on a stream are measured in groups: after the last launch of a group the
//! process records one event on the stream. When the event has completed, its timestamp
//! is the moment the group's work ended. The work began when the previous work on the
//! same stream ended, or, if the stream had run dry, when the GPU reached it: for a
//! launch into a stream that has drained (asked right before the launch), an event is
//! recorded just before the launch too, whose timestamp excludes the time the GPU spent
//! on other processes' work and switching to this one. Where neither is known, the
//! submission time from the CPU clock is used, mapped onto the GPU's event clock by
//! reference events recorded on a private idle stream (the mapping errs towards too
//! early, so busy time is never under-counted by it).
//! Busy intervals of several streams are merged, so overlapping streams count once.
//!
//! A timing event costs the GPU about two microseconds of a busy stream's time
//! (`bench/event_cost.py`) and the CPU about as much as half a launch
//! (`bench/driver_call_cost.cu`). So a group stays open for [`GROUP_SPAN_NS`] of CPU time
//! (at most [`GROUP_GPU_NS`] of GPU work at the usual time per launch, and at most
//! [`MAX_GROUP`] launches): a launch that joins an open group costs no driver
//! call at all ([`EventMeter::try_join`]), and only the first and the last launch of a
//! group are timed. The launch that closes a full group on a stream still fed (launched
//! on within [`FED_NS`]) opens the next group, empty, behind it: the stream's next
//! launch joins that one with no driver call either, so a stream launched on without
//! pause costs one driver call (the end event) per group, and no query whether it has
//! drained. A group still open when the process waits (the gate seals every open
//! group first) is closed then; if its stream has drained by then, its end is estimated
//! from the stream's measured time per launch, because the event recorded at that moment
//! would count the idle time since. After a wait that succeeded, the next launch records
//! its start mark without asking whether the stream still works
//! ([`EventMeter::note_idle`]).
//!
//! A long group on a stream the CPU only just keeps fed spans idle gaps between its
//! kernels. So groups are also probes: a group whose first launch is of a kind (a
//! kernel and its grid, or a graph: the caller's `kind` key) the meter has no time for
//! yet, and every [`PROBE_EVERY`]th group of a stream, is a single launch, timed alone,
//! and its time is kept for its kind ([`KindTimes`]). A group every launch of which is
//! of a kind with a known time is charged at most the sum of those times: gaps between
//! its kernels are left out. A group with any launch of an unknown kind is charged its
//! whole span, which errs towards charging too much. A kind's time follows its probes
//! up at once and down slowly, so a kind whose launches vary in length is charged
//! about its longest; a short kind's time follows them down at once and up slowly, as
//! its probes time the launch path too ([`KindTimes::learn`]). A probe timed from a
//! start mark counts the launch call's CPU time too (the mark runs as soon as it is
//! recorded, the kernel only once the call has submitted it): the part of that CPU time
//! after the mark is taken off the probe, at most half of it. A launch whose usual time
//! alone fills a group ([`GROUP_GPU_NS`]) is timed alone: its event costs little beside
//! it, and the gate then sees long work complete launch by launch.
//!
//! Event timestamps are read relative to a chain of reference events, re-based every
//! 100 ms, so that the millisecond floats of `cuEventElapsedTime` never lose precision.

use std::collections::VecDeque;

// Per-stream maps are read on every launch (`try_join`): keyed by small handles, they
// take the Fx hash, several times cheaper than std's SipHash, which guards against
// adversarial keys these are not.
use rustc_hash::FxHashMap as HashMap;
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
    /// Whether all work submitted to `stream` has completed; `None` on an error.
    fn stream_idle(&mut self, stream: Self::Stream) -> Option<bool>;
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

/// What the meter did since it was last asked ([`EventMeter::take_stats`]), for the
/// interposer's periodic report: where a charge came from, so that a share that misses
/// its limit can be traced to the spans, the kinds' bounds or the probes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MeterStats {
    /// Groups harvested.
    pub groups: u64,
    /// Of them, probes (single launches timed for their kind).
    pub probes: u64,
    /// Of them, groups closed on a stream that had drained (charged their usual time).
    pub drained: u64,
    /// Of them, groups bounded by their kinds' times.
    pub bounded: u64,
    /// The new part of the union of the harvested spans.
    pub union_ns: u64,
    /// The sum of the harvested groups' bounds (kinds' times, or spans).
    pub bound_ns: u64,
    /// The sum of the times the probes taught their kinds.
    pub probe_ns: u64,
    /// The sum of what the probes took off their spans for their launch calls.
    pub probe_call_ns: u64,
}

impl std::fmt::Display for MeterStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} groups ({} probes of {:.1} us less {:.1} us of call on average, {} closed drained, {} bounded by kinds), spans {:.1} ms, bounds {:.1} ms",
            self.groups,
            self.probes,
            self.probe_ns as f64 / 1e3 / self.probes.max(1) as f64,
            self.probe_call_ns as f64 / 1e3 / self.probes.max(1) as f64,
            self.drained,
            self.bounded,
            self.union_ns as f64 / 1e6,
            self.bound_ns as f64 / 1e6
        )
    }
}

/// A source of GPU busy time for the gate.
pub trait BusyMeter {
    /// Collects the busy time of work that has completed since the last harvest.
    fn harvest(&mut self, now_ns: u64) -> Harvest;
    /// Launches whose work has not been harvested yet.
    fn pending(&self) -> usize;
    /// Closes every open group of launches, so that all pending work can be waited
    /// for and harvested. Called before the process waits.
    fn seal(&mut self) {}
    /// An estimate of the GPU time still queued by this process.
    fn inflight_estimate_ns(&self) -> u64;
    /// How many more launches may be queued before the queue is full (an estimate).
    fn room(&self, max_inflight_ns: u64, max_pending: usize) -> usize;
    /// The longest GPU time one group of launches took (0 when unknown).
    fn longest_ns(&self) -> u64 {
        0
    }
    /// Blocks until the oldest pending launch has completed.
    fn wait_oldest(&mut self);
    /// Blocks until every pending launch has completed.
    fn wait_all(&mut self);
    /// Gives up on every pending launch without asking the driver again (its context
    /// is gone, or the process must exit now) and returns the GPU time to charge for
    /// them: their usual time each, or the time since the oldest of them was submitted
    /// if that is more (for a hard limit, overcharging is the safe error), plus anything
    /// unmeasured not yet charged. After it, nothing is pending.
    fn abandon(&mut self, _now_ns: u64) -> u64 {
        0
    }
}

/// A closed group of launches on one stream, timed by the event after its last.
struct Mark<T: Timeline> {
    event: T::Event,
    /// An event recorded just before the group's first launch, when the stream was
    /// drained.
    start: Option<T::Event>,
    stream: T::Stream,
    /// When the group's first launch was submitted (CPU clock).
    submitted_ns: u64,
    generation: u64,
    launches: u32,
    /// The most GPU time the group may be charged: for a group closed after its stream
    /// had drained (its event was recorded after the work, so it would count idle
    /// time), and for a long group, from the stream's probes.
    cap_ns: Option<u64>,
    /// For a probe: its launch's kind, and the CPU time of its launch call to be taken
    /// off its time (0 unless it was timed from a start mark).
    probe: Option<(u64, u64)>,
    /// When every launch of the group is of a kind with a known time: the sum of those
    /// times, the most the group's kernels can have kept the GPU busy.
    known_ns: Option<u64>,
}

/// Launches on a stream after its newest event: a group not yet closed. It takes the
/// reference it is timed against when it is closed: a reference is kept only while a
/// closed group needs it.
struct OpenGroup<T: Timeline> {
    start: Option<T::Event>,
    submitted_ns: u64,
    launches: u32,
    /// The sum of the known times of its launches' kinds.
    known_ns: u64,
    /// Whether a launch of a kind without a known time joined it.
    unknown: bool,
    /// The usual time per launch on its stream when it opened (for [`GROUP_GPU_NS`]).
    per_launch_ns: u64,
    /// When (CPU clock) its newest launch was submitted; for a group opened empty, when
    /// it was opened ([`FED_NS`]).
    last_ns: u64,
}

impl<T: Timeline> OpenGroup<T> {
    /// The GPU work the group holds, as far as the meter knows: its launches at the
    /// stream's usual time per launch, or, when every launch is of a kind with a known
    /// time, the sum of those times if less (a stream the CPU only just keeps fed spans
    /// gaps its kernels' times leave out).
    fn gpu_ns(&self) -> u64 {
        let by_stream = u64::from(self.launches).saturating_mul(self.per_launch_ns);
        if self.unknown || self.launches == 0 {
            by_stream
        } else {
            by_stream.min(self.known_ns)
        }
    }
}

/// How long (CPU time from its first launch) a group stays open for more launches.
pub const GROUP_SPAN_NS: u64 = 1_000_000;

/// How much GPU work (its launches at the usual time per launch) a group holds at
/// most: the gate sees queued work complete a group at a time, and must see a queue
/// drain well before it is empty.
pub const GROUP_GPU_NS: u64 = 250_000;

/// The most launches in one group.
pub const MAX_GROUP: u32 = 4096;

/// A stream counts as fed while its newest launch is at most this old (CPU time): a
/// group closed then is closed without asking the driver whether the stream has drained
/// (a `cuStreamQuery`, a tenth of a launch), and the empty group opened behind it takes
/// launches only this soon (later, the stream may have drained, and the next launch
/// takes the full path, with a start mark).
pub const FED_NS: u64 = 50_000;

/// One group in this many, per stream, is a probe of a single launch.
pub const PROBE_EVERY: u32 = 8;

/// How long the meter sums spans and bounds before it starts the sums again
/// ([`EventMeter::bounded`]).
const BOUND_WINDOW_NS: u64 = 50_000_000;

/// How much of each sum a window carries into the next ([`EventMeter::bounded`]).
const BOUND_CARRY_NS: u64 = 1_000_000;

/// Probes shorter than this time the launch path as much as their kernel
/// ([`KindTimes::learn`]): on the H200, a 2 µs kernel's probes took 8 to 20 µs.
const SHORT_PROBE_NS: u64 = 20_000;

/// Kinds of launches whose time the meter keeps (a direct-mapped table: a kind that
/// lands on another's place takes it, and the other is unknown again).
const KIND_SLOTS: usize = 512;

/// The GPU time of kinds of launches, learned from probes.
#[derive(Debug)]
pub struct KindTimes {
    slots: Box<[(u64, u64); KIND_SLOTS]>,
}

impl Default for KindTimes {
    fn default() -> Self {
        KindTimes {
            slots: Box::new([(0, 0); KIND_SLOTS]),
        }
    }
}

impl KindTimes {
    fn slot(kind: u64) -> usize {
        // Fibonacci hashing: the kinds are pointers and sizes, whose low bits repeat.
        (kind.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 55) as usize % KIND_SLOTS
    }

    /// The time of a launch of `kind`, if a probe measured one.
    pub fn get(&self, kind: u64) -> Option<u64> {
        let (k, ns) = self.slots[Self::slot(kind)];
        (k == kind && ns > 0).then_some(ns)
    }

    /// Takes a probe's time for `kind`. A probe of [`SHORT_PROBE_NS`] or more times its
    /// kernel: the time follows it up at once and down by a quarter, so a kind whose
    /// launches vary in length is charged about its longest. A shorter probe mostly
    /// times the launch path: the start mark runs as soon as it is recorded, and a
    /// kernel shorter than the launch call and the recording of the end event behind it
    /// has ended before that event arrives, so the probe is its kernel's time plus some
    /// of that path, never less. Short times follow their probes down at once and up by
    /// a quarter: the least of a kind's recent probes is the nearest to its kernel.
    pub fn learn(&mut self, kind: u64, ns: u64) {
        let ns = ns.max(1);
        let slot = &mut self.slots[Self::slot(kind)];
        slot.1 = match (slot.0 == kind, slot.1) {
            (true, old) if ns >= SHORT_PROBE_NS && old > ns => (old * 3 + ns) / 4,
            (true, old) if ns < SHORT_PROBE_NS && old < ns => old + (ns - old) / 4,
            _ => ns,
        };
        slot.0 = kind;
    }
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
/// How many charged busy intervals the meter remembers, and for how long before the newest.
const CHARGED_KEEP: usize = 256;
const CHARGED_KEEP_NS: i64 = 1_000_000_000;

/// Busy time from events, for one CUDA context.
pub struct EventMeter<T: Timeline> {
    timeline: T,
    free: Vec<T::Event>,
    pending: VecDeque<Mark<T>>,
    references: VecDeque<Reference<T>>,
    next_generation: u64,
    last_rebase_ns: u64,
    last_end: HashMap<T::Stream, i64>,
    /// For each stream with pending launches, the event of its newest group.
    newest: HashMap<T::Stream, T::Event>,
    /// The process has just waited for all its work ([`EventMeter::note_idle`]): the
    /// next launch needs not ask whether other streams still work.
    idle_all: bool,
    /// The start event recorded before the launch in progress.
    starting: Option<(T::Stream, T::Event)>,
    /// Open groups, by stream.
    open: HashMap<T::Stream, OpenGroup<T>>,
    /// Launches in pending marks and open groups.
    pending_launches: usize,
    offsets: VecDeque<i64>,
    /// Busy time already charged, as disjoint intervals on the GPU axis, oldest first:
    /// a later harvest charges only what lies outside them. (A single horizon, the end of
    /// the newest charged interval, erased busy time: a long kernel harvested after a
    /// short one that ran in its middle on another stream was charged only from the
    /// short one's end.)
    charged: VecDeque<(i64, i64)>,
    /// GPU time charged for launches that could not be measured, at the usual time per
    /// launch: added to the next harvest, so that a driver error never lets work through
    /// free.
    unmeasured_ns: u64,
    /// The longest GPU time one group took.
    longest_ns: u64,
    /// GPU busy time per launch (overlapping streams counted once), a moving average.
    average_ns: u64,
    /// Per stream: the time from one launch's end to the next one's, a moving average.
    stream_average_ns: HashMap<T::Stream, u64>,
    /// Per stream: groups opened on it (every [`PROBE_EVERY`]th is a probe).
    groups_opened: HashMap<T::Stream, u32>,
    /// The time of each kind of launch.
    kinds: KindTimes,
    /// Since `window_start_ns`: the union of the harvested spans (new parts only), the
    /// sum of their bounds (their kinds' times, or their spans), and what was charged:
    /// the lesser of the first two (see [`EventMeter::bounded`]).
    union_total_ns: u64,
    bound_total_ns: u64,
    charged_total_ns: u64,
    window_start_ns: u64,
    lost: u64,
    events_recorded: u64,
    stats: MeterStats,
}

impl<T: Timeline> std::fmt::Debug for EventMeter<T> {
    /// The meter's counts and estimates; its queues by length.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventMeter")
            .field("pending", &self.pending.len())
            .field("references", &self.references.len())
            .field("open", &self.open.len())
            .field("pending_launches", &self.pending_launches)
            .field("unmeasured_ns", &self.unmeasured_ns)
            .field("longest_ns", &self.longest_ns)
            .field("average_ns", &self.average_ns)
            .field("lost", &self.lost)
            .field("events_recorded", &self.events_recorded)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
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
            last_end: HashMap::default(),
            newest: HashMap::default(),
            idle_all: false,
            starting: None,
            open: HashMap::default(),
            pending_launches: 0,
            offsets: VecDeque::new(),
            charged: VecDeque::new(),
            unmeasured_ns: 0,
            longest_ns: 0,
            average_ns: 0,
            stream_average_ns: HashMap::default(),
            groups_opened: HashMap::default(),
            kinds: KindTimes::default(),
            union_total_ns: 0,
            bound_total_ns: 0,
            charged_total_ns: 0,
            window_start_ns: now_ns,
            lost: 0,
            events_recorded: 0,
            stats: MeterStats::default(),
        };
        meter.rebase(now_ns);
        meter
    }

    /// Starts over after the driver lost events (a destroyed context, a sticky error):
    /// pending launches are dropped as unmeasurable and a new time axis begins.
    fn reset(&mut self, now_ns: u64) {
        self.note_lost(self.pending_launches as u64);
        self.pending_launches = 0;
        self.pending.clear();
        self.open.clear();
        self.references.clear();
        self.free.clear();
        self.last_end.clear();
        self.newest.clear();
        self.starting = None;
        self.offsets.clear();
        self.charged.clear();
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

    /// Timing events recorded on the process's streams (ends and start marks).
    pub fn events_recorded(&self) -> u64 {
        self.events_recorded
    }

    /// What the meter did since the last call (see [`MeterStats`]).
    pub fn take_stats(&mut self) -> MeterStats {
        std::mem::take(&mut self.stats)
    }

    /// After the process waited for `stream` (`None`: for all its work) and the wait
    /// succeeded: what it had queued there is done, so the next launch's start mark is
    /// recorded without asking the driver whether the stream (or another) still works.
    pub fn note_idle(&mut self, stream: Option<T::Stream>) {
        match stream {
            Some(stream) => {
                self.newest.remove(&stream);
            }
            None => {
                self.newest.clear();
                self.idle_all = true;
            }
        }
    }

    /// As [`BusyMeter::seal`], at `now_ns` (CPU clock): a group whose newest launch is
    /// less than [`FED_NS`] old is closed without asking whether its stream has drained.
    pub fn seal_at(&mut self, now_ns: u64) {
        self.seal_streams(Some(now_ns));
    }

    fn seal_streams(&mut self, now_ns: Option<u64>) {
        let streams: Vec<T::Stream> = self.open.keys().copied().collect();
        for stream in streams {
            let Some(group) = self.open.get(&stream) else {
                continue;
            };
            if group.launches == 0 {
                self.open.remove(&stream);
                continue;
            }
            let fed = now_ns.is_some_and(|now| now.saturating_sub(group.last_ns) < FED_NS);
            // A stream the process stopped using long ago (a side stream used once)
            // has drained: an event recorded now would time the idle since.
            let drained = !fed && self.timeline.stream_idle(stream) == Some(true);
            self.close(stream, drained);
        }
    }

    /// Before `stream` is destroyed: closes its open group with an event recorded while
    /// the stream still exists, and forgets what was learned about the stream (its
    /// handle may be given to a new stream).
    pub fn forget_stream(&mut self, stream: T::Stream) {
        if self.open.contains_key(&stream) {
            self.close(stream, false);
        }
        self.stream_average_ns.remove(&stream);
        self.groups_opened.remove(&stream);
        if !self.pending.iter().any(|m| m.stream == stream) {
            self.last_end.remove(&stream);
            self.newest.remove(&stream);
        }
    }

    /// The usual time per launch on `stream` (the process's, where the stream has none
    /// yet).
    fn usual_ns(&self, stream: T::Stream) -> u64 {
        self.stream_average_ns
            .get(&stream)
            .copied()
            .unwrap_or(self.average_ns)
    }

    /// Counts `launches` as unmeasured and charges them their usual time.
    fn note_lost(&mut self, launches: u64) {
        self.lost += launches;
        self.unmeasured_ns = self
            .unmeasured_ns
            .saturating_add(self.average_ns.saturating_mul(launches));
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

    /// A launch on `stream` at `now_ns` joins the stream's open group, if it has one
    /// that is neither full nor older than [`GROUP_SPAN_NS`]: then the launch needs no
    /// driver call from the meter (no [`EventMeter::before_launch`] or
    /// [`EventMeter::after_launch`]). False if the launch must take the full path.
    pub fn try_join(&mut self, stream: T::Stream, kind: u64, now_ns: u64) -> bool {
        match self.open.get_mut(&stream) {
            Some(g)
                if g.launches < MAX_GROUP
                    && now_ns.saturating_sub(g.submitted_ns) < GROUP_SPAN_NS
                    && (g.launches > 0 || now_ns.saturating_sub(g.last_ns) < FED_NS)
                    && g.gpu_ns() < GROUP_GPU_NS =>
            {
                g.launches += 1;
                g.last_ns = now_ns;
                match self.kinds.get(kind) {
                    Some(ns) => g.known_ns = g.known_ns.saturating_add(ns),
                    None => g.unknown = true,
                }
                self.pending_launches += 1;
                true
            }
            _ => false,
        }
    }

    /// Right before a launch on `stream` that did not join an open group: if the stream
    /// has no open group and is known to be drained, records the event that will time
    /// the start of the launch's work.
    pub fn before_launch(&mut self, stream: T::Stream, now_ns: u64) {
        if let Some((_, event)) = self.starting.take() {
            self.free.push(event);
        }
        let idle_all = std::mem::take(&mut self.idle_all);
        if let Some(group) = self.open.get(&stream) {
            if group.launches == 0 {
                // The empty group opened behind the stream's last one, too long ago
                // (the stream may have drained): dropped, and the launch opens a group
                // of its own.
                self.open.remove(&stream);
            } else {
                // A group too old or too full for more. While its stream still works,
                // the launch joins it and closes it; a stream launched on within
                // [`FED_NS`] is taken to still work. A stream that has drained (the
                // process stopped launching on it without a wait the gate saw: a
                // synchronous copy, polling, CPU work) closes the group now, charged at
                // most its launches' usual time, and the launch opens a group of its
                // own: an event recorded after it would count the whole pause as busy.
                if now_ns.saturating_sub(group.last_ns) < FED_NS
                    || self.timeline.stream_idle(stream) != Some(true)
                {
                    return;
                }
                self.close(stream, true);
            }
        }
        // Whether an earlier group of this stream is still running (asked now, so that
        // a stream that ran dry since the last harvest is caught).
        let deep = match self.newest.get(&stream) {
            None => false,
            Some(&event) => self.timeline.is_done(event) == Some(false),
        };
        if deep {
            return;
        }
        // While other work of this process runs, the GPU is busy from this process's
        // point of view whenever this launch starts: its start may be taken from the
        // submission time (the busy intervals are merged), and the start mark, which
        // costs as much CPU time as a fifth of a launch, is not needed.
        if !idle_all
            && let Some(other) = self.pending.back()
            && other.stream != stream
            && self.timeline.is_done(other.event) == Some(false)
        {
            return;
        }
        let Some(event) = self.take_event() else {
            return;
        };
        if self.timeline.record(event, stream) {
            self.events_recorded += 1;
            self.starting = Some((stream, event));
        } else {
            self.free.push(event);
        }
    }

    /// After a launch of `kind` on `stream` that did not join an open group, submitted
    /// at `submitted_ns` (CPU clock) by a launch call that took `call_ns` of CPU time:
    /// the launch joins and closes the stream's open group if it has one, else opens a
    /// group (a probe, closed at once, when its kind has no known time and every
    /// [`PROBE_EVERY`]th time). False if it could not be measured.
    pub fn after_launch(
        &mut self,
        stream: T::Stream,
        kind: u64,
        submitted_ns: u64,
        call_ns: u64,
    ) -> bool {
        let start = match self.starting.take() {
            Some((s, event)) if s == stream => Some(event),
            Some((_, event)) => {
                self.free.push(event);
                None
            }
            None => None,
        };
        if self.references.is_empty() {
            if let Some(e) = start {
                self.free.push(e);
            }
            self.note_lost(1);
            return false;
        }
        let known = self.kinds.get(kind);
        if let Some(group) = self.open.get_mut(&stream) {
            if let Some(e) = start {
                self.free.push(e);
            }
            group.launches += 1;
            match known {
                Some(ns) => group.known_ns = group.known_ns.saturating_add(ns),
                None => group.unknown = true,
            }
            self.pending_launches += 1;
            let closed = self.close(stream, false);
            if closed {
                self.open_behind(stream, submitted_ns.saturating_add(call_ns));
            }
            return closed;
        }
        let opened = self.groups_opened.entry(stream).or_insert(0);
        let probe = known.is_none() || opened.is_multiple_of(PROBE_EVERY);
        *opened = opened.wrapping_add(1);
        let per_launch_ns = self.usual_ns(stream);
        self.open.insert(
            stream,
            OpenGroup {
                start,
                submitted_ns,
                launches: 1,
                known_ns: known.unwrap_or(0),
                unknown: known.is_none(),
                per_launch_ns,
                last_ns: submitted_ns,
            },
        );
        self.pending_launches += 1;
        if !probe {
            // A launch that alone fills a group is timed alone: its event costs little
            // beside it, and the gate sees such work complete launch by launch (two
            // slices handing the GPU back and forth drain and refill their queues at
            // every turn).
            if per_launch_ns >= GROUP_GPU_NS {
                return self.close(stream, false);
            }
            return true;
        }
        let call_ns = if start.is_some() { call_ns } else { 0 };
        let closed = self.close(stream, false);
        if closed
            && let Some(m) = self.pending.back_mut()
            && m.stream == stream
        {
            m.cap_ns = None;
            m.known_ns = None;
            m.probe = Some((kind, call_ns));
        }
        closed
    }

    /// After a full group of `stream` was closed at `now_ns` while the stream was fed:
    /// opens an empty group behind it, so that the stream's next launch joins it with no
    /// driver call, as launches join any open group. Its work begins where the closed
    /// group's ended (the stream is deep, and needs no start mark). Not when the next
    /// group of the stream is due to be a probe, nor for a stream whose launches are
    /// each timed alone ([`GROUP_GPU_NS`]): those take the full path.
    fn open_behind(&mut self, stream: T::Stream, now_ns: u64) {
        let per_launch_ns = self.usual_ns(stream);
        let opened = self.groups_opened.entry(stream).or_insert(0);
        if opened.is_multiple_of(PROBE_EVERY) || per_launch_ns >= GROUP_GPU_NS {
            return;
        }
        *opened = opened.wrapping_add(1);
        self.open.insert(
            stream,
            OpenGroup {
                start: None,
                submitted_ns: now_ns,
                launches: 0,
                known_ns: 0,
                unknown: false,
                per_launch_ns,
                last_ns: now_ns,
            },
        );
    }

    /// Closes the open group of `stream` with an event recorded now (an empty group is
    /// dropped). `estimated`: the stream has drained, so the group's charge is capped by
    /// its launches' usual time. False if the group could not be measured.
    fn close(&mut self, stream: T::Stream, estimated: bool) -> bool {
        let Some(group) = self.open.remove(&stream) else {
            return true;
        };
        if group.launches == 0 {
            return true;
        }
        let lose = |me: &mut Self, group: OpenGroup<T>| {
            if let Some(e) = group.start {
                me.free.push(e);
            }
            me.note_lost(u64::from(group.launches));
            me.pending_launches = me.pending_launches.saturating_sub(group.launches as usize);
            false
        };
        let Some(generation) = self.references.back().map(|r| r.generation) else {
            return lose(self, group);
        };
        let Some(event) = self.take_event() else {
            return lose(self, group);
        };
        if !self.timeline.record(event, stream) {
            self.free.push(event);
            return lose(self, group);
        }
        self.events_recorded += 1;
        let drained_cap = estimated.then(|| {
            let per_launch = self.usual_ns(stream);
            per_launch.saturating_mul(u64::from(group.launches))
        });
        // The kinds' times bound a group of several launches, whose span may hold idle
        // gaps between them; a single launch's span holds none.
        let known_ns =
            (group.launches > 1 && !group.unknown && group.known_ns > 0).then_some(group.known_ns);
        let cap_ns = drained_cap;
        self.newest.insert(stream, event);
        self.pending.push_back(Mark {
            event,
            start: group.start,
            stream,
            submitted_ns: group.submitted_ns,
            generation,
            launches: group.launches,
            cap_ns: cap_ns.filter(|&c| c > 0),
            probe: None,
            known_ns,
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

    /// The part of `intervals` (sorted by start) not already charged, in nanoseconds;
    /// records it as charged. Intervals ending more than [`CHARGED_KEEP_NS`] before the
    /// newest, or beyond the newest [`CHARGED_KEEP`], are forgotten: work overlapping them
    /// would be charged twice, never left out.
    fn charge_new(&mut self, intervals: Vec<(i64, i64)>) -> u64 {
        let mut merged: Vec<(i64, i64)> = Vec::with_capacity(intervals.len());
        for (start, end) in intervals {
            if end <= start {
                continue;
            }
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        let total: i64 = merged.iter().map(|(s, e)| e - s).sum();
        let mut already: i64 = 0;
        for &(s, e) in &merged {
            for &(cs, ce) in &self.charged {
                let overlap = e.min(ce) - s.max(cs);
                if overlap > 0 {
                    already += overlap;
                }
            }
        }
        // Union of the two sorted disjoint lists.
        let mut all: Vec<(i64, i64)> = self.charged.drain(..).chain(merged).collect();
        all.sort_unstable();
        for (start, end) in all {
            match self.charged.back_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => self.charged.push_back((start, end)),
            }
        }
        let newest = self.charged.back().map_or(i64::MIN, |c| c.1);
        while self.charged.len() > CHARGED_KEEP
            || self
                .charged
                .front()
                .is_some_and(|c| c.1 < newest.saturating_sub(CHARGED_KEEP_NS))
        {
            self.charged.pop_front();
        }
        u64::try_from(total - already).unwrap_or(0)
    }

    /// What a harvest charges, given the new part of the union of its spans and the sum
    /// of its groups' bounds. Over a window of [`BOUND_WINDOW_NS`], the meter charges
    /// the lesser of the union and the bounds, each summed over the window: spans overlap
    /// across streams (the union counts concurrent kernels once) and span idle gaps
    /// between a shallow stream's kernels (the kinds' times leave them out), and the
    /// lesser of the two is right in either case. Summed rather than taken per harvest,
    /// because a harvest holds the groups that happen to have completed: a group whose
    /// span another stream's earlier group already covered adds nothing to the union,
    /// but its kernels may have run in that group's gaps. What is charged never goes
    /// back; at the end of a window both sums restart from what was charged.
    fn bounded(&mut self, union_ns: u64, bound_ns: u64, now_ns: u64) -> u64 {
        if now_ns.saturating_sub(self.window_start_ns) >= BOUND_WINDOW_NS {
            // What each sum holds beyond the charge is carried over, up to a group's
            // length (1 ms): a group harvested just after the window may still be one
            // whose kernels ran in an earlier group's gaps. (It may also be gaps: at
            // most 1 ms per window is charged that should not be.)
            self.window_start_ns = now_ns;
            self.union_total_ns = self
                .union_total_ns
                .saturating_sub(self.charged_total_ns)
                .min(BOUND_CARRY_NS);
            self.bound_total_ns = self
                .bound_total_ns
                .saturating_sub(self.charged_total_ns)
                .min(BOUND_CARRY_NS);
            self.charged_total_ns = 0;
        }
        self.union_total_ns = self.union_total_ns.saturating_add(union_ns);
        self.bound_total_ns = self.bound_total_ns.saturating_add(bound_ns);
        let target = self.union_total_ns.min(self.bound_total_ns);
        let busy = target.saturating_sub(self.charged_total_ns);
        self.charged_total_ns = self.charged_total_ns.max(target);
        busy
    }

    fn reference_at(&self, generation: u64) -> Option<(T::Event, i64)> {
        self.references
            .iter()
            .find(|r| r.generation == generation)
            .and_then(|r| r.at.map(|at| (r.event, at)))
    }

    /// For each stream with pending launches, how many of its oldest are complete.
    fn completed_per_stream(&mut self) -> HashMap<T::Stream, usize> {
        let mut by_stream: HashMap<T::Stream, Vec<T::Event>> = HashMap::default();
        for m in &self.pending {
            by_stream.entry(m.stream).or_default().push(m.event);
        }
        let mut done = HashMap::default();
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

impl<T: Timeline> EventMeter<T> {
    /// What completed since the last harvest, measured by its events.
    fn harvest_measured(&mut self, now_ns: u64) -> Harvest {
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
        let mut launches: u64 = 0;
        let mut bound_ns: u64 = 0;
        for m in marks {
            let left = budget.get_mut(&m.stream);
            let complete = matches!(left, Some(n) if *n > 0);
            if !complete || blocked_streams.contains(&m.stream) {
                keep.push_back(m);
                continue;
            }
            let Some((reference, reference_at)) = self.reference_at(m.generation) else {
                if self
                    .references
                    .front()
                    .is_none_or(|r| r.generation > m.generation)
                {
                    // Its reference is gone (it never should be): unmeasurable, rather
                    // than waited for forever. It was one of its stream's completed marks.
                    if let Some(n) = budget.get_mut(&m.stream) {
                        *n -= 1;
                    }
                    self.note_lost(u64::from(m.launches));
                    self.pending_launches =
                        self.pending_launches.saturating_sub(m.launches as usize);
                    self.free.push(m.event);
                    if let Some(se) = m.start {
                        self.free.push(se);
                    }
                    continue;
                }
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
                self.note_lost(u64::from(m.launches));
                self.pending_launches = self.pending_launches.saturating_sub(m.launches as usize);
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
            if let Some((kind, call_ns)) = m.probe {
                let span = u64::try_from(end - start).unwrap_or(0);
                // Off a probe timed from a start mark: the part of its launch call that
                // ran after the mark (the GPU reached the mark, then waited for the
                // call to submit the kernel), on the GPU's axis, at most half of the
                // probe. A mark the GPU reached late (busy with other work) had the
                // kernel queued behind it already: nothing is taken off. With no clock
                // mapping yet, nothing either (the error that charges more).
                let after_mark = match offset {
                    Some(o) if call_ns > 0 => {
                        let call_end = (m.submitted_ns + call_ns) as i64 - o;
                        u64::try_from((call_end - start).min(call_ns as i64)).unwrap_or(0)
                    }
                    _ => 0,
                };
                let learned = span.saturating_sub(after_mark).max(span / 2);
                self.stats.probe_ns = self.stats.probe_ns.saturating_add(learned);
                self.stats.probe_call_ns = self.stats.probe_call_ns.saturating_add(span - learned);
                self.kinds.learn(kind, learned);
            }
            // The stream's next work cannot begin before this group's event, whatever
            // part of the group is charged.
            self.last_end.insert(m.stream, end);
            let end = match m.cap_ns {
                Some(cap) => end.min(start.saturating_add(cap as i64)),
                None => {
                    let per_launch =
                        u64::try_from(end - start).unwrap_or(0) / u64::from(m.launches.max(1));
                    let avg = self.stream_average_ns.entry(m.stream).or_insert(per_launch);
                    *avg = (*avg * 7 + per_launch) / 8;
                    end
                }
            };
            let span = u64::try_from(end - start).unwrap_or(0);
            self.longest_ns = self.longest_ns.max(span);
            bound_ns = bound_ns.saturating_add(m.known_ns.map_or(span, |k| k.min(span)));
            self.stats.groups += 1;
            self.stats.probes += u64::from(m.probe.is_some());
            self.stats.drained += u64::from(m.cap_ns.is_some());
            self.stats.bounded += u64::from(m.known_ns.is_some_and(|k| k < span));
            intervals.push((start, end));
            launches += u64::from(m.launches);
            self.pending_launches = self.pending_launches.saturating_sub(m.launches as usize);
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
        intervals.sort_unstable();
        let first_start = intervals[0].0;
        let union_ns = self.charge_new(intervals);
        self.stats.union_ns = self.stats.union_ns.saturating_add(union_ns);
        self.stats.bound_ns = self.stats.bound_ns.saturating_add(bound_ns);
        let busy = self.bounded(union_ns, bound_ns, now_ns);
        let per_launch = busy / launches.max(1);
        self.average_ns = if self.average_ns == 0 {
            per_launch.max(1)
        } else {
            ((self.average_ns * 7 + per_launch) / 8).max(1)
        };
        let started_ns = match offset {
            Some(o) => u64::try_from(first_start + o).unwrap_or(0),
            None => now_ns.saturating_sub(busy),
        };
        Harvest {
            busy_ns: busy,
            started_ns,
        }
    }
}

impl<T: Timeline> BusyMeter for EventMeter<T> {
    fn harvest(&mut self, now_ns: u64) -> Harvest {
        let mut h = self.harvest_measured(now_ns);
        let unmeasured = std::mem::take(&mut self.unmeasured_ns);
        if unmeasured > 0 {
            if h.busy_ns == 0 {
                h.started_ns = now_ns.saturating_sub(unmeasured);
            }
            h.busy_ns = h.busy_ns.saturating_add(unmeasured);
        }
        h
    }

    fn pending(&self) -> usize {
        self.pending_launches
    }

    fn abandon(&mut self, now_ns: u64) -> u64 {
        let oldest = self
            .pending
            .iter()
            .map(|m| m.submitted_ns)
            .chain(self.open.values().map(|g| g.submitted_ns))
            .min();
        let usual = self.average_ns.saturating_mul(self.pending_launches as u64);
        if let Some(oldest) = oldest {
            let waited = now_ns.saturating_sub(oldest);
            self.unmeasured_ns = self.unmeasured_ns.saturating_add(waited.max(usual));
            self.lost += self.pending_launches as u64;
        }
        self.pending_launches = 0;
        self.pending.clear();
        self.open.clear();
        self.starting = None;
        self.newest.clear();
        std::mem::take(&mut self.unmeasured_ns)
    }

    fn longest_ns(&self) -> u64 {
        self.longest_ns
    }

    fn seal(&mut self) {
        self.seal_streams(None);
    }

    fn inflight_estimate_ns(&self) -> u64 {
        if self.average_ns == 0 && self.pending_launches > UNMEASURED_PENDING {
            // Nothing measured yet: the work may be long, so queue little until it is.
            return u64::MAX;
        }
        self.average_ns.saturating_mul(self.pending_launches as u64)
    }

    fn room(&self, max_inflight_ns: u64, max_pending: usize) -> usize {
        let by_count = max_pending.saturating_sub(self.pending_launches);
        // One launch more than the bound allows is always let through, so that the next
        // work is queued before the running work ends: the GPU never waits for the CPU
        // to notice a completion, however long each launch's work is.
        let by_time = match (max_inflight_ns + self.average_ns)
            .saturating_sub(self.inflight_estimate_ns())
            .checked_div(self.average_ns)
        {
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => UNMEASURED_PENDING.saturating_sub(self.pending_launches),
        };
        // With nothing queued, one launch may always go, however long it is.
        let by_time = if self.pending_launches == 0 {
            by_time.max(1)
        } else {
            by_time
        };
        by_count.min(by_time)
    }

    fn wait_oldest(&mut self) {
        if self.pending.is_empty() {
            self.seal();
        }
        if let Some((event, launches)) = self.pending.front().map(|m| (m.event, m.launches))
            && !self.timeline.wait(event)
        {
            // Unmeasurable: forget it rather than wait for it again.
            self.note_lost(u64::from(launches));
            self.pending_launches = self.pending_launches.saturating_sub(launches as usize);
            self.pending.pop_front();
        }
    }

    fn wait_all(&mut self) {
        self.seal();
        let mut newest: HashMap<T::Stream, T::Event> = HashMap::default();
        for m in &self.pending {
            newest.insert(m.stream, m.event);
        }
        let mut failed = false;
        for (_, event) in newest {
            failed |= !self.timeline.wait(event);
        }
        if failed {
            self.note_lost(self.pending_launches as u64);
            self.pending_launches = 0;
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
        /// What `stream_idle` answers.
        idle: bool,
        times: Vec<i64>,
        next_record: VecDeque<i64>,
        /// Records on the process's streams fail (a driver error).
        fail_records: bool,
        /// How often `stream_idle` was asked.
        idle_queries: u32,
        /// How often `is_done` was asked.
        done_queries: u32,
    }

    impl Timeline for Scripted {
        type Event = usize;
        type Stream = u8;
        fn new_event(&mut self) -> Option<usize> {
            self.times.push(i64::MAX);
            Some(self.times.len() - 1)
        }
        fn record(&mut self, event: usize, _stream: u8) -> bool {
            if self.fail_records {
                return false;
            }
            self.times[event] = self.next_record.pop_front().unwrap();
            true
        }
        fn record_private(&mut self, event: usize) -> bool {
            // References complete at once, at CPU time minus 1000 (the clock offset).
            self.times[event] = self.now - 1000;
            true
        }
        fn is_done(&mut self, event: usize) -> Option<bool> {
            self.done_queries += 1;
            Some(self.times[event] <= self.now - 1000)
        }
        fn stream_idle(&mut self, _stream: u8) -> Option<bool> {
            self.idle_queries += 1;
            Some(self.idle)
        }
        fn wait(&mut self, _event: usize) -> bool {
            true
        }
        fn elapsed_ns(&mut self, from: usize, to: usize) -> Option<i64> {
            Some(self.times[to] - self.times[from])
        }
    }

    /// A meter over a scripted timeline at 10 000 ns (GPU axis = CPU time - 1000).
    fn meter_at_10_000() -> EventMeter<Scripted> {
        EventMeter::new(
            Scripted {
                now: 10_000,
                ..Scripted::default()
            },
            10_000,
        )
    }

    /// One launch of 2 000 ns on `stream` (10 000..12 000), harvested at 20 000: the
    /// meter has learned the time per launch.
    fn learn_a_launch(m: &mut EventMeter<Scripted>, stream: u8) {
        m.timeline().next_record.extend([10_000, 12_000]);
        m.before_launch(stream, 10_000);
        assert!(m.after_launch(stream, 10_000, 10_000, 0));
        m.timeline().now = 20_000;
        assert_eq!(m.harvest(20_000).busy_ns, 2_000);
    }

    #[test]
    fn launches_that_cannot_be_measured_are_charged_their_usual_time() {
        let mut m = meter_at_10_000();
        learn_a_launch(&mut m, 1);
        m.timeline().fail_records = true;
        for _ in 0..3 {
            m.before_launch(1, 21_000);
            assert!(!m.after_launch(1, 21_000, 21_000, 0));
        }
        assert_eq!(m.lost(), 3);
        m.timeline().now = 30_000;
        let h = m.harvest(30_000);
        assert_eq!(h.busy_ns, 3 * 2_000);
        assert_eq!(h.started_ns, 30_000 - 6_000);
        assert_eq!(m.harvest(40_000).busy_ns, 0, "charged once");
    }

    #[test]
    fn a_long_kernel_harvested_after_a_short_one_inside_it_is_charged_whole() {
        // Stream 1 runs 10 000..110 000; a short kernel on stream 2 runs 59 000..61 000,
        // in its middle, and completes first. Together they kept the GPU busy 100 000 ns.
        let mut m = meter_at_10_000();
        m.timeline().next_record.extend([10_000, 110_000, 61_000]);
        m.before_launch(1, 10_000);
        assert!(m.after_launch(1, 10_000, 10_000, 0));
        m.timeline().now = 60_000;
        m.before_launch(2, 60_000);
        assert!(m.after_launch(2, 60_000, 60_000, 0));
        m.timeline().now = 70_000;
        let first = m.harvest(70_000).busy_ns;
        assert_eq!(first, 2_000);
        m.timeline().now = 200_000;
        let second = m.harvest(200_000).busy_ns;
        assert_eq!(first + second, 100_000);
        // Charged work is not charged again by a later harvest that overlaps it.
        m.timeline().next_record.extend([150_000, 160_000]);
        m.before_launch(2, 200_000);
        assert!(m.after_launch(2, 200_000, 200_000, 0));
        m.timeline().now = 300_000;
        assert_eq!(m.harvest(300_000).busy_ns, 10_000);
    }

    #[test]
    fn overlapping_streams_count_once_and_idle_gaps_not_at_all() {
        let mut m = meter_at_10_000();
        // GPU axis = CPU time - 1000. Stream 1: submitted at 10 000, ends at 19 000
        // (runs 9 000..19 000 on the GPU axis... i.e. 10 000 ns from its submission).
        // Stream 2: submitted at 12 000, ends at 15 000 (inside stream 1's work).
        // Stream 1 again: submitted at 40 000 after an idle gap, ends at 44 000.
        m.timeline().next_record.extend([18_000, 14_000, 43_000]);
        assert!(m.after_launch(1, 10_000, 10_000, 0));
        assert!(m.after_launch(2, 12_000, 12_000, 0));
        assert!(m.after_launch(1, 40_000, 40_000, 0));
        m.timeline().now = 50_000;
        let h = m.harvest(50_000);
        // 9 000 + 0 (overlap) + 4 000: the gap between 19 000 and 40 000 is idle.
        assert_eq!(h.busy_ns, 9_000 + 4_000);
        assert_eq!(h.started_ns, 10_000);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn a_start_mark_on_a_drained_stream_times_the_start_of_the_work() {
        let mut m = meter_at_10_000();
        // Submitted at 10 000 (GPU axis 9 000), but the GPU reached it only at 15 000
        // (it was running another process's work): the start mark says so.
        m.timeline().next_record.extend([15_000, 18_000]);
        m.before_launch(3, 10_000);
        assert!(m.after_launch(3, 10_000, 10_000, 0));
        m.timeline().now = 30_000;
        assert_eq!(m.harvest(30_000).busy_ns, 3_000);
        // The stream has drained again: the next launch gets a start mark too.
        m.timeline().next_record.extend([25_000, 26_000]);
        m.before_launch(3, 24_000);
        assert!(m.after_launch(3, 24_000, 24_000, 0));
        m.timeline().now = 40_000;
        assert_eq!(m.harvest(40_000).busy_ns, 1_000);
    }

    #[test]
    fn a_stream_that_ran_dry_since_the_last_harvest_gets_a_start_mark() {
        let mut m = meter_at_10_000();
        // First launch: 10 000..12 000 on the GPU axis.
        m.timeline().next_record.extend([10_000, 12_000]);
        m.before_launch(4, 11_000);
        assert!(m.after_launch(4, 11_000, 11_000, 0));
        // No harvest since, but that work has completed: the next launch, submitted at
        // 20 000, is reached by the GPU only at 30 000 (another process ran), and its
        // start mark says so. Without it the wait would be charged as busy.
        m.timeline().now = 20_000;
        m.timeline().next_record.extend([30_000, 31_000]);
        m.before_launch(4, 20_000);
        assert!(m.after_launch(4, 20_000, 20_000, 0));
        m.timeline().now = 40_000;
        assert_eq!(m.harvest(40_000).busy_ns, 2_000 + 1_000);
    }

    #[test]
    fn work_queued_behind_other_work_starts_when_that_ends() {
        let mut m = meter_at_10_000();
        // Three launches submitted at once on one stream, 5 000 ns each.
        m.timeline().next_record.extend([14_000, 19_000, 24_000]);
        for _ in 0..3 {
            m.after_launch(7, 10_000, 10_000, 0);
        }
        // Only the first has completed.
        m.timeline().now = 16_000;
        assert_eq!(m.harvest(16_000).busy_ns, 5_000);
        assert_eq!(m.pending(), 2);
        m.timeline().now = 30_000;
        assert_eq!(m.harvest(30_000).busy_ns, 10_000);
        assert_eq!(m.pending(), 0);
    }

    /// The kind of launch the tests below make (a kernel of 2 000 ns).
    const KIND: u64 = 7;

    /// A launch the way the interposer makes it: it joins its stream's open group, or
    /// takes the full path.
    fn launch(m: &mut EventMeter<Scripted>, stream: u8, at: u64) {
        if !m.try_join(stream, KIND, at) {
            m.before_launch(stream, at);
            assert!(m.after_launch(stream, KIND, at, 0));
        }
    }

    /// A probe of `KIND` on `stream` (10 000..12 000), harvested at 20 000.
    fn learn_the_kind(m: &mut EventMeter<Scripted>, stream: u8) {
        m.timeline().next_record.extend([10_000, 12_000]);
        let before = m.events_recorded();
        launch(m, stream, 10_000);
        assert_eq!(m.events_recorded() - before, 2, "a probe is timed alone");
        m.timeline().now = 20_000;
        assert_eq!(m.harvest(20_000).busy_ns, 2_000);
    }

    #[test]
    fn launches_joining_an_open_group_make_no_driver_call_and_the_idle_between_is_not_charged() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        // A group opens on the drained stream with a start mark (20 000); three more
        // launches join it, the last 40 µs later, after the stream ran dry.
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        assert_eq!(m.events_recorded(), 3);
        for at in [20_100, 20_200, 60_000] {
            assert!(m.try_join(1, KIND, at), "joins the open group");
        }
        assert_eq!(m.events_recorded(), 3, "joining records nothing");
        assert_eq!(m.pending(), 4);
        // Sealed before a wait: its event (62 000) ends a span of 42 000 ns, of which
        // its four launches of a known kind are charged 4 x 2 000.
        m.timeline().next_record.extend([62_000]);
        m.seal();
        m.timeline().now = 70_000;
        assert_eq!(m.harvest(70_000).busy_ns, 8_000);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn a_group_with_a_launch_of_an_unknown_kind_is_charged_its_whole_span() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        assert!(m.try_join(1, 99, 20_100), "an unknown kind joins too");
        m.timeline().next_record.extend([30_000]);
        m.seal();
        m.timeline().now = 40_000;
        assert_eq!(m.harvest(40_000).busy_ns, 10_000);
    }

    #[test]
    fn a_group_older_than_its_span_is_closed_by_the_next_launch() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        let late = 20_000 + GROUP_SPAN_NS;
        assert!(!m.try_join(1, KIND, late), "too old to join");
        m.timeline().next_record.extend([late as i64 + 2_000]);
        launch(&mut m, 1, late);
        assert_eq!(m.events_recorded(), 4, "the late launch closed the group");
        m.timeline().now = late as i64 + 10_000;
        // Two launches of 2 000 ns, the idle between them left out.
        assert_eq!(m.harvest(late + 10_000).busy_ns, 4_000);
    }

    #[test]
    fn a_group_left_open_on_a_stream_that_drained_is_charged_its_usual_time_not_the_pause() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        // The process stops launching on the stream without a wait the gate sees, and
        // comes back a second later: the stream has drained. Its group is closed now
        // (its event lands at 1 019 000 on the GPU's axis) and charged one launch's
        // usual 2 000 ns; the new launch opens a group of its own with a start mark.
        let late = 1_020_000u64;
        m.timeline().now = late as i64;
        m.timeline().idle = true;
        assert!(!m.try_join(1, KIND, late));
        m.timeline()
            .next_record
            .extend([late as i64 - 1_000, late as i64]);
        launch(&mut m, 1, late);
        m.timeline().idle = false;
        m.timeline().next_record.extend([late as i64 + 2_000]);
        m.seal();
        m.timeline().now = late as i64 + 10_000;
        assert_eq!(m.harvest(late + 10_000).busy_ns, 4_000);
        assert_eq!(m.events_recorded(), 6);
    }

    #[test]
    fn a_probe_whose_mark_the_gpu_reached_late_keeps_its_whole_time() {
        // The clock offset is 1 000 (references complete at CPU time minus 1 000).
        let mut m = meter_at_10_000();
        m.timeline().now = 10_000;
        m.harvest(10_000);
        // A probe submitted at CPU 20 000 by a call of 1 500 ns (it ended at CPU
        // 21 500, GPU 20 500). Its mark ran at GPU 20 000: 500 ns of the call came
        // after it, and the kernel ran to 23 000: the kind learns 2 500.
        m.timeline().next_record.extend([20_000, 23_000]);
        m.before_launch(1, 20_000);
        assert!(m.after_launch(1, KIND, 20_000, 1_500));
        m.timeline().now = 30_000;
        m.harvest(30_000);
        assert_eq!(m.kinds.get(KIND), Some(2_500));
        // Another kind, whose mark the GPU reached only at 21 000, after the call had
        // submitted the kernel (busy with other work): nothing is taken off.
        m.timeline().next_record.extend([41_000, 44_000]);
        m.before_launch(2, 40_000);
        assert!(m.after_launch(2, KIND + 1, 40_000, 1_500));
        m.timeline().now = 50_000;
        m.harvest(50_000);
        assert_eq!(m.kinds.get(KIND + 1), Some(3_000));
    }

    #[test]
    fn a_short_kinds_time_follows_its_least_probes_and_a_long_kinds_its_longest() {
        let mut kinds = KindTimes::default();
        // Short probes time the launch path too: down at once, up by a quarter.
        kinds.learn(1, 10_000);
        kinds.learn(1, 4_000);
        assert_eq!(kinds.get(1), Some(4_000));
        kinds.learn(1, 8_000);
        assert_eq!(kinds.get(1), Some(5_000));
        // Long probes time their kernels: up at once, down by a quarter.
        kinds.learn(2, 100_000);
        kinds.learn(2, 200_000);
        assert_eq!(kinds.get(2), Some(200_000));
        kinds.learn(2, 100_000);
        assert_eq!(kinds.get(2), Some(175_000));
    }

    #[test]
    fn a_launch_that_alone_fills_a_group_is_timed_alone() {
        let mut m = meter_at_10_000();
        // A probe of 300 µs: the stream's usual time per launch is above GROUP_GPU_NS.
        m.timeline().next_record.extend([10_000, 310_000]);
        launch(&mut m, 1, 10_000);
        m.timeline().now = 400_000;
        assert_eq!(m.harvest(400_000).busy_ns, 300_000);
        // The next launch is no probe, and its group is closed at once (its start mark
        // and its end event): the launch after it opens a group of its own.
        let before = m.events_recorded();
        m.timeline().next_record.extend([400_000, 700_000]);
        launch(&mut m, 1, 400_000);
        assert_eq!(m.events_recorded() - before, 2);
        assert!(!m.try_join(1, KIND, 400_100));
        m.timeline().now = 800_000;
        assert_eq!(m.harvest(800_000).busy_ns, 300_000);
    }

    #[test]
    fn every_eighth_group_of_a_stream_is_a_probe() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        let mut at = 20_000;
        let mut probes = 0;
        for _ in 0..(2 * PROBE_EVERY) {
            let before = m.events_recorded();
            m.timeline()
                .next_record
                .extend([at as i64, at as i64 + 2_000]);
            launch(&mut m, 1, at);
            if m.events_recorded() - before == 2 {
                probes += 1;
            }
            m.timeline().next_record.clear();
            m.timeline().next_record.extend([at as i64 + 2_000]);
            m.seal();
            m.timeline().next_record.clear();
            at += 10_000;
            m.timeline().now = at as i64;
            m.harvest(at);
        }
        assert_eq!(probes, 2);
    }

    #[test]
    fn across_streams_the_union_counts_concurrent_work_once_and_the_kinds_leave_gaps_out() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        // A launch on another stream (its first group: a probe, 20 500..22 500), then
        // stream 1's group goes on.
        m.timeline().next_record.extend([20_500, 22_500]);
        launch(&mut m, 2, 20_500);
        assert!(m.try_join(1, KIND, 21_000));
        m.timeline().next_record.extend([30_000]);
        m.seal();
        m.timeline().now = 40_000;
        // Stream 1's span is 20 000..30 000, but its two launches of a known kind make
        // 4 000; the probe on stream 2 adds its 2 000.
        assert_eq!(m.harvest(40_000).busy_ns, 6_000);
        // A window later: two streams whose kernels overlap completely, 5 launches
        // each, 10 000 ns of known kinds per stream, in the same 10 000 ns: charged once.
        let t = 60_000_000;
        m.timeline().next_record.extend([t, t]);
        let t_ns = u64::try_from(t).unwrap();
        launch(&mut m, 1, t_ns);
        launch(&mut m, 2, t_ns);
        for at in 1..5 {
            assert!(m.try_join(1, KIND, t_ns + at * 100));
            assert!(m.try_join(2, KIND, t_ns + at * 100));
        }
        m.timeline().next_record.extend([t + 10_000, t + 10_000]);
        m.seal();
        m.timeline().now = t + 20_000;
        // 10 000 (not the 20 000 of the two streams' kinds), and the 4 000 of the
        // earlier window's union its kinds did not explain (carried over, up to 1 ms).
        assert_eq!(m.harvest(t_ns + 20_000).busy_ns, 14_000);
    }

    #[test]
    fn a_group_open_across_rebases_is_still_measured() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        assert!(m.try_join(1, KIND, 20_100));
        // The group stays open while the meter re-bases twice and drops the references
        // no closed group needs (the first version timed a group against the reference
        // of its first launch, which could be dropped meanwhile: the group then waited
        // for it forever, and a process resting until its queue drained hung).
        for now in [200_000_000, 400_000_000] {
            m.timeline().now = now;
            m.harvest(u64::try_from(now).unwrap());
        }
        // The stream has long drained: the seal's event (at 300 000 000) is capped at
        // the group's usual time.
        m.timeline().idle = true;
        m.timeline().next_record.extend([300_000_000]);
        m.seal();
        m.timeline().now = 500_000_000;
        assert_eq!(m.harvest(500_000_000).busy_ns, 4_000);
        assert_eq!(m.pending(), 0);
        assert_eq!(m.lost(), 0);
    }

    #[test]
    fn a_stream_kept_fed_opens_each_group_as_it_closes_the_last_with_no_query() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().now = 20_000;
        m.harvest(20_000);
        assert_eq!(m.kinds.get(KIND), Some(2_000));
        // 1 000 launches of 2 000 ns kernels, one every 1 000 ns of CPU time: the GPU
        // runs them back to back from 20 000 on; the first has a start mark.
        m.timeline().next_record.push_back(20_000);
        let (mut full_paths, mut events) = (0_u64, m.events_recorded());
        for i in 0..1_000_u64 {
            let at = 20_000 + i * 1_000;
            if m.try_join(1, KIND, at) {
                continue;
            }
            full_paths += 1;
            let end = 20_000 + (i as i64 + 1) * 2_000;
            m.timeline().next_record.push_back(end);
            m.before_launch(1, at);
            assert!(m.after_launch(1, KIND, at, 0));
            m.timeline().next_record.clear();
        }
        events = m.events_recorded() - events;
        // A group is full at 250 µs of known work (125 launches); the next launch joins
        // and closes it, and opens the next group: one full path and one event per
        // group of 126, none to open one, and no query whether the stream drained. The
        // stream's eighth group (the first was the probe that taught the kind) is a
        // probe again, by the full path, and so is the launch after it, which opens a
        // group (the stream is deep: no start mark).
        let closed: u64 = 7;
        assert_eq!(full_paths, 1 + closed + 2, "{full_paths} full paths");
        assert_eq!(events, 1 + closed + 1, "{events} events");
        assert_eq!(m.timeline().idle_queries, 0);
        // Charged in full: each group starts where the one before it ended.
        m.timeline().next_record.push_back(20_000 + 1_000 * 2_000);
        m.seal();
        m.timeline().now = 5_000_000;
        let charged = m.harvest(5_000_000).busy_ns;
        assert_eq!(charged, 1_000 * 2_000);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn an_empty_group_behind_a_closed_one_is_dropped_and_a_late_launch_gets_a_start_mark() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().now = 20_000;
        m.harvest(20_000);
        m.timeline().next_record.push_back(20_000);
        let mut at = 20_000;
        // Fill one group and close it with the next launch.
        loop {
            if !m.try_join(1, KIND, at) {
                m.timeline()
                    .next_record
                    .push_back(i64::try_from(at).unwrap() + 2_000);
                m.before_launch(1, at);
                assert!(m.after_launch(1, KIND, at, 0));
                if m.open.get(&1).is_some_and(|g| g.launches == 0) {
                    break;
                }
            }
            at += 1_000;
        }
        // A seal finds the empty group behind it: no event, no query.
        let events = m.events_recorded();
        m.seal();
        assert_eq!(m.events_recorded(), events);
        assert_eq!(m.timeline().idle_queries, 0);
        assert!(m.open.is_empty());
        // Again, and this time the next launch comes after the stream has drained: it
        // does not join the empty group; it gets a start mark.
        let at = at + 1_000;
        m.timeline()
            .next_record
            .push_back(i64::try_from(at).unwrap());
        m.before_launch(1, at);
        assert!(m.after_launch(1, KIND, at, 0));
        m.timeline().now = 10_000_000;
        m.harvest(10_000_000);
        let late = at + 10 * FED_NS;
        assert!(!m.try_join(1, KIND, late) || m.open.get(&1).is_some_and(|g| g.launches > 1));
    }

    #[test]
    fn a_wait_right_after_launching_and_the_launch_after_a_wait_ask_the_driver_nothing() {
        let mut m = meter_at_10_000();
        learn_the_kind(&mut m, 1);
        m.timeline().now = 20_000;
        m.harvest(20_000);
        m.timeline().next_record.extend([20_000]);
        launch(&mut m, 1, 20_000);
        assert!(m.try_join(1, KIND, 21_000));
        // Sealed 10 µs after the last launch: the stream is fed, no query.
        m.timeline().next_record.extend([25_000]);
        m.seal_at(31_000);
        assert_eq!(m.timeline().idle_queries, 0);
        assert!(m.open.is_empty());
        // The wait succeeded: the next launch records its start mark without asking
        // whether the stream (or another) still works.
        m.note_idle(None);
        let asked = m.timeline().done_queries;
        m.timeline().next_record.extend([40_000]);
        m.before_launch(1, 40_000);
        assert_eq!(m.timeline().done_queries, asked);
        assert!(m.after_launch(1, KIND, 40_000, 0));
        // Sealed long after its last launch: the stream may have drained, and is asked.
        m.timeline().idle = true;
        m.timeline().next_record.extend([45_000]);
        m.seal_at(40_000 + 2 * FED_NS);
        assert_eq!(m.timeline().idle_queries, 1);
        m.timeline().now = 1_000_000;
        // 2 launches of 2 000 ns (20 000..25 000 bounded by the kind), and the last one,
        // capped at its usual time (its stream had drained when it was sealed).
        assert_eq!(m.harvest(1_000_000).busy_ns, 4_000 + 2_000);
    }
}
