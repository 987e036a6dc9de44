//! The controller on the simulated GPU with a virtual clock: convergence to the limit,
//! no overshoot after idle periods, light work left alone, sharing between processes
//! and slices, bursts, and a process killed mid-window.

use std::sync::atomic::AtomicU64;

use crate::budget::Budget;
use crate::gate::{Gate, GateConfig, Step};
use crate::meter::{BusyMeter, EventMeter};
use crate::sim::{SharedGpu, SimGpu, SimTimeline};
use crate::turns::GpuTurns;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
/// The virtual clock starts here (the monotonic clock is never near zero either).
const T0: u64 = 1_000 * S;
const LAUNCH_COST: u64 = 4 * US;
/// How late a sleeping process wakes (Linux timer slack and scheduling).
const SLEEP_OVERSHOOT: u64 = 80 * US;

#[derive(Clone, Copy, Debug)]
enum Work {
    /// Kernels back to back, round robin over `streams` streams.
    Saturate { kernel_ns: u64, streams: u32 },
    /// Each iteration: CPU work, a few kernels, then waiting for them.
    Light {
        cpu_ns: u64,
        kernel_ns: u64,
        kernels: u32,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Phase {
    Cpu,
    Launch,
    Sync,
}

struct Proc {
    id: usize,
    gate: Option<Gate<'static>>,
    meter: Option<EventMeter<SimTimeline>>,
    work: Work,
    ready_at: u64,
    stop_at: u64,
    phase: Phase,
    launched: u32,
    iterations: u64,
    stream: u32,
}

struct Slice {
    tat: &'static AtomicU64,
    busy: &'static AtomicU64,
    tag: u64,
    hard: u32,
    burst: Option<u32>,
    alone_resume_ns: Option<u64>,
}

fn slice(tag: u64, hard: u32, burst: Option<u32>) -> Slice {
    Slice {
        tat: Box::leak(Box::new(AtomicU64::new(0))),
        busy: Box::leak(Box::new(AtomicU64::new(0))),
        tag,
        hard,
        burst,
        alone_resume_ns: GateConfig::new(hard, burst).alone_resume_ns,
    }
}

struct World {
    gpu: SharedGpu,
    dir: tempfile::TempDir,
    procs: Vec<Proc>,
}

impl World {
    fn new() -> Self {
        World {
            gpu: SimGpu::shared(5 * US, T0),
            dir: tempfile::tempdir().unwrap(),
            procs: Vec::new(),
        }
    }

    /// Adds a process of `slice` (none: no compute limit) running `work` from `start`.
    fn spawn(&mut self, slice: Option<&Slice>, work: Work, start: u64) -> usize {
        let id = self.procs.len();
        let gate = slice.map(|s| {
            let turns = GpuTurns::open(self.dir.path(), "GPU-sim", s.tag, id as u64 + 1, start)
                .expect("turn file");
            let mut config = GateConfig::new(s.hard, s.burst);
            config.alone_resume_ns = s.alone_resume_ns;
            Gate::new(config, Budget::new(s.tat, s.busy), Some(turns))
        });
        self.procs.push(Proc {
            id,
            gate,
            meter: None,
            work,
            ready_at: start,
            stop_at: u64::MAX,
            phase: if matches!(work, Work::Light { .. }) {
                Phase::Cpu
            } else {
                Phase::Launch
            },
            launched: 0,
            iterations: 0,
            stream: 0,
        });
        id
    }

    /// Stops stepping a process at `at` (SIGKILL: no cleanup, the turn stays held).
    fn kill_at(&mut self, id: usize, at: u64) {
        self.procs[id].stop_at = at;
    }

    fn run_until(&mut self, end: u64) {
        loop {
            let next = self
                .procs
                .iter()
                .enumerate()
                .filter(|(_, p)| p.ready_at < end && p.ready_at < p.stop_at)
                .min_by_key(|(_, p)| p.ready_at)
                .map(|(i, _)| i);
            let Some(i) = next else { break };
            let now = self.procs[i].ready_at;
            {
                let mut g = self.gpu.borrow_mut();
                g.now = g.now.max(now);
            }
            self.step(i, now);
        }
        let mut g = self.gpu.borrow_mut();
        g.now = g.now.max(end);
    }

    fn step(&mut self, i: usize, now: u64) {
        let gpu = self.gpu.clone();
        let p = &mut self.procs[i];
        // A process starts measuring when it starts (its first reference event).
        let meter = p
            .meter
            .get_or_insert_with(|| EventMeter::new(SimTimeline::new(gpu.clone(), i), now));
        match p.phase {
            Phase::Cpu => {
                if let Work::Light { cpu_ns, .. } = p.work {
                    p.ready_at = now + cpu_ns;
                }
                p.phase = Phase::Launch;
            }
            Phase::Sync => {
                let tail = (0..4)
                    .map(|s| gpu.borrow().stream_tail(p.id, s))
                    .max()
                    .unwrap_or(0);
                p.ready_at = now.max(tail) + US;
                p.iterations += 1;
                p.phase = Phase::Cpu;
            }
            Phase::Launch => {
                let step = match &mut p.gate {
                    Some(gate) => gate.step(now, meter),
                    None => Step::Go,
                };
                match step {
                    Step::Go => {
                        let (kernel_ns, streams) = match p.work {
                            Work::Saturate { kernel_ns, streams } => (kernel_ns, streams),
                            Work::Light { kernel_ns, .. } => (kernel_ns, 1),
                        };
                        let stream = p.stream % streams.max(1);
                        p.stream = p.stream.wrapping_add(1);
                        // The interposer's path: a launch joins its stream's open
                        // group with no driver call, or takes the full path.
                        let joined = p.gate.is_some() && meter.try_join(stream, kernel_ns, now);
                        if p.gate.is_some() && !joined {
                            meter.before_launch(stream, now);
                        }
                        gpu.borrow_mut().launch(p.id, stream, kernel_ns);
                        if p.gate.is_some() && !joined {
                            meter.after_launch(stream, kernel_ns, now, 0);
                        }
                        p.ready_at = now + LAUNCH_COST;
                        p.launched += 1;
                        if let Work::Light { kernels, .. } = p.work
                            && p.launched >= kernels
                        {
                            p.launched = 0;
                            p.phase = Phase::Sync;
                        }
                        if let Work::Saturate { .. } = p.work {
                            p.iterations += 1;
                        }
                    }
                    Step::Sleep(ns) => p.ready_at = now + ns.max(1) + SLEEP_OVERSHOOT,
                    // A futex wakes the waiter when the turn is released: a prompt
                    // re-check stands for it here.
                    Step::WaitTurn { timeout_ns, .. } => p.ready_at = now + timeout_ns.min(20 * US),
                    Step::WaitOldest | Step::WaitAll => {
                        if step == Step::WaitOldest {
                            meter.wait_oldest();
                        } else {
                            meter.wait_all();
                        }
                        let wake = gpu.borrow_mut().take_wake(p.id).unwrap_or(now);
                        p.ready_at = wake.max(now + US) + SLEEP_OVERSHOOT;
                    }
                }
            }
        }
    }

    fn share(&self, id: usize, from: u64, to: u64) -> f64 {
        self.gpu.borrow().busy_of(id, from, to) as f64 / (to - from) as f64 * 100.0
    }
}

#[test]
fn a_gpu_bound_process_converges_to_its_limit_for_every_kernel_size() {
    for limit in [10u32, 25, 50, 75] {
        for (kernel_ns, streams) in [(20 * US, 1), (20 * US, 3), (2 * MS, 1), (30 * MS, 1)] {
            let mut w = World::new();
            let s = slice(1, limit, None);
            let p = w.spawn(Some(&s), Work::Saturate { kernel_ns, streams }, T0);
            w.run_until(T0 + 6 * S);
            let share = w.share(p, T0 + S, T0 + 6 * S);
            assert!(
                (share - limit as f64).abs() <= 1.5,
                "limit {limit}%, kernels of {kernel_ns} ns on {streams} streams: {share:.2}%"
            );
        }
    }
}

#[test]
fn without_a_limit_the_gpu_stays_busy() {
    let mut w = World::new();
    let p = w.spawn(
        None,
        Work::Saturate {
            kernel_ns: 20 * US,
            streams: 1,
        },
        T0,
    );
    w.run_until(T0 + S);
    assert!(w.share(p, T0, T0 + S) > 99.0);
}

#[test]
fn no_overshoot_after_an_idle_period() {
    let mut w = World::new();
    let s = slice(1, 25, None);
    // Busy for a second, idle for two, then busy again.
    let a = w.spawn(
        Some(&s),
        Work::Saturate {
            kernel_ns: 100 * US,
            streams: 1,
        },
        T0,
    );
    w.kill_at(a, T0 + S);
    w.run_until(T0 + 3 * S);
    let b = w.spawn(
        Some(&s),
        Work::Saturate {
            kernel_ns: 100 * US,
            streams: 1,
        },
        T0 + 3 * S,
    );
    w.run_until(T0 + 5 * S);
    // The idle seconds earn no credit: right after the pause the slice gets at most a
    // period's worth more than its share, and over a second it is on its share.
    let first = w.share(b, T0 + 3 * S, T0 + 3 * S + 200 * MS);
    let second = w.share(b, T0 + 3 * S, T0 + 4 * S);
    assert!(first <= 25.0 + 10.0, "first 200 ms after idle: {first:.2}%");
    assert!(
        second <= 25.0 + 2.0,
        "first second after idle: {second:.2}%"
    );
    assert!(
        second >= 25.0 - 2.0,
        "first second after idle: {second:.2}%"
    );
}

#[test]
fn light_work_under_its_limit_is_not_slowed() {
    let light = Work::Light {
        cpu_ns: MS,
        kernel_ns: 50 * US,
        kernels: 3,
    };
    let mut free = World::new();
    let f = free.spawn(None, light, T0);
    free.run_until(T0 + 3 * S);
    let mut limited = World::new();
    let s = slice(1, 50, None);
    let l = limited.spawn(Some(&s), light, T0);
    limited.run_until(T0 + 3 * S);
    let (a, b) = (free.procs[f].iterations, limited.procs[l].iterations);
    assert!(
        b as f64 >= a as f64 * 0.99,
        "unlimited {a} iterations, limited {b}"
    );
}

#[test]
fn processes_of_one_slice_share_its_budget() {
    let mut w = World::new();
    let s = slice(1, 30, None);
    let work = Work::Saturate {
        kernel_ns: 500 * US,
        streams: 1,
    };
    let a = w.spawn(Some(&s), work, T0);
    let b = w.spawn(Some(&s), work, T0 + 7 * MS);
    w.run_until(T0 + 6 * S);
    let (sa, sb) = (
        w.share(a, T0 + S, T0 + 6 * S),
        w.share(b, T0 + S, T0 + 6 * S),
    );
    assert!(
        (sa + sb - 30.0).abs() <= 1.5,
        "together {:.2}% ({sa:.2} + {sb:.2})",
        sa + sb
    );
    assert!(sa > 5.0 && sb > 5.0, "both make progress: {sa:.2}, {sb:.2}");
}

#[test]
fn two_slices_at_30_and_70_share_3_to_7_and_keep_the_gpu_busy() {
    // With `alone_resume_ns` too: it applies only while no other slice is busy.
    for (kernel_ns, resume) in [(50 * US, None), (2 * MS, None), (50 * US, Some(0))] {
        let mut w = World::new();
        let (mut s30, mut s70) = (slice(1, 30, None), slice(2, 70, None));
        s30.alone_resume_ns = resume;
        s70.alone_resume_ns = resume;
        let work = Work::Saturate {
            kernel_ns,
            streams: 1,
        };
        let a = w.spawn(Some(&s30), work, T0);
        let b = w.spawn(Some(&s70), work, T0 + 3 * MS);
        w.run_until(T0 + 6 * S);
        let (sa, sb) = (
            w.share(a, T0 + S, T0 + 6 * S),
            w.share(b, T0 + S, T0 + 6 * S),
        );
        let ratio = sa / sb;
        assert!(
            (ratio / (3.0 / 7.0) - 1.0).abs() <= 0.05,
            "kernels of {kernel_ns} ns: {sa:.2}% and {sb:.2}%"
        );
        assert!(sa + sb >= 95.0, "together {:.2}%", sa + sb);
    }
}

#[test]
fn a_slice_bursts_while_alone_and_falls_back_when_another_wants_the_gpu() {
    for resume in [None, Some(0)] {
        bursts_and_falls_back(resume);
    }
}

fn bursts_and_falls_back(alone_resume_ns: Option<u64>) {
    let mut w = World::new();
    let (mut a_slice, mut b_slice) = (slice(1, 30, Some(80)), slice(2, 50, None));
    a_slice.alone_resume_ns = alone_resume_ns;
    b_slice.alone_resume_ns = alone_resume_ns;
    let work = Work::Saturate {
        kernel_ns: 200 * US,
        streams: 1,
    };
    let a = w.spawn(Some(&a_slice), work, T0);
    w.run_until(T0 + 2 * S);
    let alone = w.share(a, T0 + 500 * MS, T0 + 2 * S);
    assert!(
        (alone - 80.0).abs() <= 2.0,
        "{alone_resume_ns:?}: alone: {alone:.2}%"
    );
    let b = w.spawn(Some(&b_slice), work, T0 + 2 * S);
    w.run_until(T0 + 5 * S);
    let within_a_second = w.share(a, T0 + 2 * S + 500 * MS, T0 + 3 * S);
    let after = w.share(a, T0 + 3 * S, T0 + 5 * S);
    let other = w.share(b, T0 + 3 * S, T0 + 5 * S);
    assert!(
        within_a_second <= 35.0,
        "{alone_resume_ns:?}: {within_a_second:.2}%"
    );
    assert!(
        (after - 30.0).abs() <= 2.0,
        "with another slice: {after:.2}%"
    );
    assert!((other - 50.0).abs() <= 2.0, "the other slice: {other:.2}%");
}

#[test]
fn a_process_killed_mid_window_stops_no_one() {
    let mut w = World::new();
    let (s, t) = (slice(1, 30, None), slice(2, 40, None));
    let work = Work::Saturate {
        kernel_ns: 300 * US,
        streams: 1,
    };
    let a1 = w.spawn(Some(&s), work, T0);
    let a2 = w.spawn(Some(&s), work, T0 + MS);
    let b = w.spawn(Some(&t), work, T0 + 2 * MS);
    // Killed in the middle of its turn, with work queued: it never releases anything.
    w.kill_at(a1, T0 + S + 3 * MS);
    w.run_until(T0 + 5 * S);
    let slice_s = w.share(a1, T0 + 2 * S, T0 + 5 * S) + w.share(a2, T0 + 2 * S, T0 + 5 * S);
    let slice_t = w.share(b, T0 + 2 * S, T0 + 5 * S);
    assert!(
        (slice_s - 30.0).abs() <= 2.0,
        "slice of the killed process: {slice_s:.2}%"
    );
    assert!(
        (slice_t - 40.0).abs() <= 2.0,
        "the other slice: {slice_t:.2}%"
    );
}

#[test]
fn a_full_queue_is_refilled_in_batches_not_one_launch_per_check() {
    // Short kernels on four streams keep the queue at its bound. Were each completed
    // launch let through by a full check of its own (harvest, wake-up), a process with
    // short kernels would spend more CPU time per launch than the GPU spends on it.
    for limit in [50u32, 99] {
        let mut w = World::new();
        let s = slice(1, limit, None);
        let p = w.spawn(
            Some(&s),
            Work::Saturate {
                kernel_ns: 30 * US,
                streams: 4,
            },
            T0,
        );
        w.run_until(T0 + 3 * S);
        let launches = w.procs[p].iterations;
        let checks = w.procs[p].gate.as_ref().unwrap().full_checks();
        assert!(
            launches > 0 && checks * 8 < launches,
            "limit {limit}%: {checks} full checks for {launches} launches"
        );
        let share = w.share(p, T0 + S, T0 + 3 * S);
        assert!(
            (share - limit as f64).abs() <= 1.5,
            "limit {limit}%: {share:.2}%"
        );
    }
}

#[test]
fn a_slice_alone_runs_and_rests_a_band_at_a_time() {
    // Each rest drains the process's queue; the fewer rests, the less a process with
    // concurrent streams loses their overlap. With `alone_resume_ns` (by default half a
    // millisecond) a slice alone on the GPU rests until it is about back on its share, so
    // its busy periods last about a band (5 ms) of debt, not just the queue (2 ms).
    for (limit, hysteresis) in [(25u32, true), (50, true), (75, true), (50, false)] {
        let mut w = World::new();
        let mut s = slice(1, limit, None);
        // The default, or none.
        let resume = s.alone_resume_ns.filter(|_| hysteresis);
        s.alone_resume_ns = resume;
        let p = w.spawn(
            Some(&s),
            Work::Saturate {
                kernel_ns: 30 * US,
                streams: 4,
            },
            T0,
        );
        w.run_until(T0 + 3 * S);
        let g = w.gpu.borrow();
        let mut kernels: Vec<(u64, u64)> = g
            .kernels
            .iter()
            .filter(|k| k.0 == p && k.1 >= T0 + S)
            .map(|k| (k.1, k.2))
            .collect();
        kernels.sort_unstable();
        let mut runs = 1u64;
        let mut end = kernels[0].1;
        for &(start, stop) in &kernels[1..] {
            if start > end {
                runs += 1;
            }
            end = end.max(stop);
        }
        // Two seconds. Without the hysteresis (`None`, as while other slices are busy) a
        // slice rests each time it crosses the band's edge: about 330 periods a second.
        if resume.is_some() {
            assert!(runs < 2 * 120, "limit {limit}%: {runs} busy periods in 2 s");
        } else {
            assert!(runs > 2 * 200, "no hysteresis: {runs} busy periods in 2 s");
        }
        drop(g);
        let share = w.share(p, T0 + S, T0 + 3 * S);
        assert!(
            (share - limit as f64).abs() <= 1.5,
            "limit {limit}%: {share:.2}%"
        );
    }
}

#[test]
fn a_slice_that_rests_alone_loses_no_time_to_waking_late() {
    // Work that starts after the budget's arrival time earns nothing for the idle time
    // before it. A slice alone that rested until it was exactly back on its share would
    // lose, on every rest, the time it takes to wake and launch again: 0.3 points here
    // (the simulated wake is quick), 1 to 2 points of a real GPU's time. It resumes with a
    // little debt left instead.
    for limit in [25u32, 50, 75, 90] {
        let mut w = World::new();
        let s = slice(1, limit, None);
        let p = w.spawn(
            Some(&s),
            Work::Saturate {
                kernel_ns: 30 * US,
                streams: 4,
            },
            T0,
        );
        w.run_until(T0 + 3 * S);
        let share = w.share(p, T0 + S, T0 + 3 * S);
        assert!(
            (share - limit as f64).abs() <= 0.12,
            "limit {limit}%: {share:.3}%"
        );
    }
}

#[test]
fn short_kernels_on_a_deep_queue_share_timing_events_and_are_charged_exactly() {
    // A timing event costs the GPU time of its stream (bench/event_cost.py): the meter
    // times a deep stream's launches in groups of about 100 µs of work. What it charges
    // must still be what the GPU did, whether the process saturates the GPU or stops
    // after a few launches without telling anyone (a synchronisation the gate does not
    // see), leaving a group open that is closed only when its stream has drained.
    let cases = [
        (
            Work::Saturate {
                kernel_ns: 25 * US,
                streams: 4,
            },
            50u32,
        ),
        (
            Work::Saturate {
                kernel_ns: 25 * US,
                streams: 1,
            },
            75,
        ),
        (
            Work::Light {
                cpu_ns: 300 * US,
                kernel_ns: 30 * US,
                kernels: 7,
            },
            95,
        ),
    ];
    for (work, limit) in cases {
        let mut w = World::new();
        let s = slice(1, limit, None);
        let p = w.spawn(Some(&s), work, T0);
        w.run_until(T0 + 3 * S);
        let truth = w.gpu.borrow().busy_of(p, 0, u64::MAX);
        let charged = s.busy.load(std::sync::atomic::Ordering::Relaxed);
        let launches = w.gpu.borrow().kernels.len() as f64;
        let events = w.procs[p].meter.as_ref().unwrap().events_recorded() as f64;
        let error = (charged as f64 - truth as f64) / truth as f64 * 100.0;
        assert!(
            error.abs() <= 2.0,
            "{work:?}: charged {charged} ns for {truth} ns of work ({error:+.2}%)"
        );
        if let Work::Saturate { .. } = work {
            assert!(
                events / launches <= 0.4,
                "{work:?}: {events} timing events for {launches} launches"
            );
        }
    }
}
