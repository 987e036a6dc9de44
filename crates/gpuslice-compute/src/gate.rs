//! The gate every launch of a compute-limited process passes: it charges the slice's
//! budget with the busy time the meter has harvested, makes the process rest while the
//! slice is over its share, bounds how much work the process may have queued, and takes
//! the GPU's turn before letting work through.
//!
//! The gate is a state machine: [`Gate::step`] says what to do next ([`Step`]), and the
//! caller does it (sleeps, waits for events) and asks again. The interposer loops over
//! it with the real clock ([`admit`]); the tests drive it with a virtual clock.

use crate::budget::Budget;
use crate::clock::Clock;
use crate::meter::BusyMeter;
use crate::turns::{GpuTurns, Hold};

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
/// The shortest time without any of its queued work completing after which a waiting
/// process lets its launch go (see [`Gate::step`]).
const OWN_WAIT_MIN_NS: u64 = 100 * MS;
/// How often [`Gate::settle`] looks for the completion of the exiting process's work.
const SETTLE_POLL_NS: u64 = 200 * US;

/// The gate's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateConfig {
    /// Hard limit, percent of the GPU's time.
    pub hard_percent: u32,
    /// Soft limit while no other slice wants the GPU.
    pub burst_percent: Option<u32>,
    /// How far (wall time) the slice may run ahead of its share before it rests, until
    /// it is back within the band. With the queue bound this sets the length of a duty
    /// cycle, and what a slice may run at full speed after an idle period.
    pub band_ns: u64,
    /// The most credit a process keeps for time it waited for another process's turn.
    pub max_credit_ns: u64,
    /// Length of a lease on the GPU's turn.
    pub lease_ns: u64,
    /// The longest a process keeps the turn while others wait for it.
    pub max_hold_ns: u64,
    /// The most GPU work (estimated) a process may have queued.
    pub max_inflight_ns: u64,
    /// The most launches a process may have queued and unmeasured.
    pub max_pending: usize,
    /// Between full checks, launches pass with one clock read.
    pub recheck_ns: u64,
    /// The longest time between full checks, while the slice is far enough below its
    /// band that the GPU's whole time until then could not take it over: a limit that
    /// does not bind costs fewer checks.
    pub max_recheck_ns: u64,
    /// How long to wait before asking again for a turn another process holds.
    pub poll_ns: u64,
    /// Other slices must have been quiet this long for the slice to use its burst.
    pub burst_quiet_ns: u64,
    /// For a slice alone on the GPU (no other slice busy for `burst_quiet_ns`): how far
    /// ahead of its share it may still be when it ends a rest. `None`: the band (no
    /// hysteresis, as while other slices are busy). Default half a millisecond: a slice
    /// alone rests until it is almost back on its share, so it runs and rests about a
    /// band at a time; the half millisecond left covers waking and launching again, which
    /// would otherwise be idle time the budget does not give back.
    pub alone_resume_ns: Option<u64>,
}

impl GateConfig {
    /// The defaults for a hard limit (and optional soft limit) in percent.
    pub fn new(hard_percent: u32, burst_percent: Option<u32>) -> Self {
        GateConfig {
            hard_percent: hard_percent.clamp(1, 100),
            burst_percent: burst_percent.map(|b| b.clamp(hard_percent.clamp(1, 100), 100)),
            band_ns: 5 * MS,
            max_credit_ns: 50 * MS,
            lease_ns: 10 * MS,
            max_hold_ns: 40 * MS,
            max_inflight_ns: 2 * MS,
            max_pending: 1024,
            recheck_ns: 250 * US,
            max_recheck_ns: MS,
            poll_ns: 200 * US,
            burst_quiet_ns: 100 * MS,
            alone_resume_ns: Some(500 * US),
        }
    }
}

/// What the caller must do before asking the gate again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Submit the work.
    Go,
    /// Sleep this many nanoseconds.
    Sleep(u64),
    /// Wait for the oldest pending launch of this process to complete.
    WaitOldest,
    /// Wait for every pending launch of this process to complete.
    WaitAll,
    /// Wait until another process releases the GPU's turn (the release count moves on
    /// from `seen`), or at most `timeout_ns`.
    WaitTurn {
        /// The release count when the turn was found taken.
        seen: u32,
        /// The longest wait.
        timeout_ns: u64,
    },
}

/// One process's gate on one GPU.
#[derive(Debug)]
pub struct Gate<'a> {
    config: GateConfig,
    budget: Budget<'a>,
    turns: Option<GpuTurns>,
    resting: bool,
    holding_since: Option<u64>,
    next_check_ns: u64,
    /// Launches that may still pass before the next full check.
    allowance: usize,
    /// Since when this process has been waiting for a turn another process holds. That
    /// time is not idle time: the slice keeps the credit for it.
    waiting_since: Option<u64>,
    /// Credit the next charge starts from (the wait that preceded the turn).
    credit_from: Option<u64>,
    /// Since when this process has been without the turn (for the turn's fairness).
    without_turn_since: u64,
    /// The turn's release count when this process last asked for it.
    releases_seen: u32,
    /// How many times [`Gate::step`] made a full check (for reports and tests).
    full_checks: u64,
    /// How many rests the gate has begun (for reports and tests).
    rests: u64,
    /// Set by a full check that found the process's queue full.
    queue_full: bool,
    /// Since when, and with how many launches pending, the process has waited for its
    /// own queued work without any of it completing.
    own_wait: Option<(u64, usize)>,
    /// Launches let through because the process's own work stopped completing.
    unblocked: u64,
}

impl<'a> Gate<'a> {
    /// A gate charging `budget`, taking turns through `turns` (none: the process does
    /// not coordinate with other slices).
    pub fn new(config: GateConfig, budget: Budget<'a>, turns: Option<GpuTurns>) -> Self {
        Gate {
            config,
            budget,
            turns,
            resting: false,
            holding_since: None,
            next_check_ns: 0,
            allowance: 0,
            waiting_since: None,
            credit_from: None,
            without_turn_since: 0,
            releases_seen: 0,
            full_checks: 0,
            rests: 0,
            queue_full: false,
            own_wait: None,
            unblocked: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &GateConfig {
        &self.config
    }

    /// The share that applies now: the soft limit while no other slice wants the GPU.
    pub fn percent_now(&self, now_ns: u64) -> u32 {
        match (self.config.burst_percent, &self.turns) {
            (Some(burst), Some(turns))
                if !turns.other_slices_busy(now_ns, self.config.burst_quiet_ns) =>
            {
                burst
            }
            // Without the turn file nobody can tell whether others want the GPU.
            _ => self.config.hard_percent,
        }
    }

    /// Charges what the meter harvested.
    fn charge(&mut self, now_ns: u64, meter: &mut dyn BusyMeter) {
        let h = meter.harvest(now_ns);
        if h.busy_ns > 0 {
            let percent = self.percent_now(now_ns);
            // Time spent waiting for another process's turn is not idle time: it stays
            // credited (bounded) until the slice has used it up.
            let mut started = h.started_ns;
            if let Some(from) = self.credit_from {
                started = started
                    .min(from)
                    .max(now_ns.saturating_sub(self.config.max_credit_ns));
            }
            self.budget.charge(h.busy_ns, started, percent);
            if self.budget.debt_ns(now_ns) >= 0 {
                self.credit_from = None;
            }
            if let Some(t) = &self.turns {
                t.note_active(now_ns);
            }
        }
    }

    fn give_up_turn(&mut self, now_ns: u64) {
        if self.holding_since.take().is_some()
            && let Some(t) = &self.turns
        {
            t.release();
            self.without_turn_since = now_ns;
        }
    }

    /// Whether the next launch may go without a full check (it then counts against the
    /// launches allowed until the next check). No driver call, no shared memory.
    pub fn fast_go(&mut self, now_ns: u64) -> bool {
        if now_ns < self.next_check_ns
            && self.allowance > 0
            && !self.resting
            && self.holding_since.is_some()
        {
            self.allowance -= 1;
            return true;
        }
        false
    }

    /// What to do before submitting the next launch.
    pub fn step(&mut self, now_ns: u64, meter: &mut dyn BusyMeter) -> Step {
        if self.fast_go(now_ns) {
            return Step::Go;
        }
        self.queue_full = false;
        let mut step = self.check(now_ns, meter);
        if matches!(step, Step::WaitAll | Step::WaitOldest) || self.queue_full {
            step = self.unless_stuck(step, now_ns, meter);
        } else {
            self.own_wait = None;
        }
        if step != Step::Go {
            // The process is about to wait: its queued work must be measurable, and
            // nothing more of it may join a group that waits for a next launch.
            meter.seal();
        }
        step
    }

    /// A wait for the process's own queued work, unless that work has stopped
    /// completing: then the launch goes. Work on the GPU may wait for a later launch of
    /// the same process (a stream waiting on a value a later kernel writes), and a gate
    /// that held that launch until the work completed would wait for ever. Work counts as
    /// stopped when none of it has completed for [`OWN_WAIT_MIN_NS`], or four times the
    /// longest group of launches measured, if longer.
    fn unless_stuck(&mut self, step: Step, now_ns: u64, meter: &mut dyn BusyMeter) -> Step {
        let pending = meter.pending();
        match self.own_wait {
            Some((since, seen)) if pending >= seen => {
                let limit = OWN_WAIT_MIN_NS.max(meter.longest_ns().saturating_mul(4));
                if now_ns.saturating_sub(since) >= limit {
                    self.own_wait = None;
                    self.unblocked += 1;
                    self.allowance = 0;
                    return Step::Go;
                }
            }
            _ => self.own_wait = Some((now_ns, pending)),
        }
        step
    }

    /// Whether the slice is resting (over its share): a wait the gate asks for now
    /// holds the process back for its limit, not for a full queue.
    pub fn resting(&self) -> bool {
        self.resting
    }

    /// Launches let through because the process's own queued work stopped completing
    /// (for reports and tests).
    pub fn unblocked(&self) -> u64 {
        self.unblocked
    }

    /// A full check.
    fn check(&mut self, now_ns: u64, meter: &mut dyn BusyMeter) -> Step {
        self.full_checks += 1;
        let c = self.config;
        self.allowance = 0;
        self.charge(now_ns, meter);
        // While other slices use the GPU, no hysteresis: a slice rests exactly while it is
        // more than a band ahead of its share. With the shares of the slices on a GPU
        // adding up to at most 100, the share-weighted sum of their debts then never grows
        // while the GPU is busy, so they cannot all rest at once while any of them has
        // work: the GPU stays busy. A slice alone on the GPU may rest longer
        // (`alone_resume_ns`): nobody else could use the idle time, and its run and rest
        // periods become up to a band long rather than a queue long, so its queue drains
        // (and its concurrent streams lose their overlap) a few times less often.
        let debt = self.budget.debt_ns(now_ns);
        let band = c.band_ns as i64;
        let resume_at = match c.alone_resume_ns {
            Some(resume)
                if self
                    .turns
                    .as_ref()
                    .is_some_and(|t| !t.other_slices_busy(now_ns, c.burst_quiet_ns)) =>
            {
                (resume as i64).min(band)
            }
            _ => band,
        };
        let was_resting = self.resting;
        self.resting = if was_resting {
            debt > resume_at
        } else {
            debt > band
        };
        if self.resting && !was_resting {
            self.rests += 1;
        }
        if self.resting {
            // Finish (and charge) what is queued, give the GPU to others, and rest.
            if meter.pending() > 0 {
                return Step::WaitAll;
            }
            self.give_up_turn(now_ns);
            // Resting means debt > resume_at (see above), so this is positive.
            let rest = u64::try_from(debt - resume_at).unwrap_or(0);
            if let Some(t) = &self.turns {
                if self.without_turn_since == 0 {
                    self.without_turn_since = now_ns;
                }
                t.note_rest(now_ns + rest, self.without_turn_since);
            }
            return Step::Sleep(rest.clamp(c.poll_ns / 4, 2 * MS));
        }
        if let Some(turns) = &mut self.turns {
            if self.holding_since.is_none() && self.without_turn_since == 0 {
                self.without_turn_since = now_ns;
            }
            self.releases_seen = turns.releases();
            match turns.try_hold(now_ns, c.lease_ns, self.without_turn_since, 4 * c.poll_ns) {
                Hold::Acquired => {
                    self.holding_since = Some(now_ns);
                    self.without_turn_since = 0;
                    self.credit_from = self.waiting_since.take();
                    turns.note_active(now_ns);
                }
                Hold::Held => {
                    let since = *self.holding_since.get_or_insert(now_ns);
                    if now_ns.saturating_sub(since) > c.max_hold_ns
                        && turns.others_want(now_ns, 4 * c.poll_ns)
                    {
                        // Long enough: let a waiting process have the GPU.
                        if meter.pending() > 0 {
                            return Step::WaitAll;
                        }
                        self.give_up_turn(now_ns);
                        return Step::Sleep(c.poll_ns);
                    }
                }
                Hold::Busy { until_ns } => {
                    // Another process holds the GPU (if this one held it, its lease ran
                    // out while it was stopped), or has waited for it longer. Its own
                    // queued work goes first.
                    if self.holding_since.take().is_some() {
                        self.without_turn_since = now_ns;
                    }
                    if meter.pending() > 0 {
                        return Step::WaitAll;
                    }
                    turns.note_want(now_ns, self.without_turn_since.max(1));
                    self.waiting_since.get_or_insert(now_ns);
                    return Step::WaitTurn {
                        seen: self.releases_seen,
                        timeout_ns: until_ns.saturating_sub(now_ns).clamp(20 * US, c.poll_ns),
                    };
                }
            }
        } else {
            self.holding_since.get_or_insert(now_ns);
        }
        // The queue bound comes after the turn, so that a process waiting for its own
        // queued work keeps renewing its lease.
        let room = meter.room(c.max_inflight_ns, c.max_pending);
        if room == 0 {
            self.queue_full = true;
            return match meter.inflight_estimate_ns() {
                // Nothing measured yet: wait for the first work to complete.
                u64::MAX => Step::WaitOldest,
                // Wait until the queue has drained to half the bound, and refill it in
                // one go: launches then pass in batches through `fast_go`, instead of
                // one full check (and one wake-up) per completed launch, which a
                // GPU-bound process with short kernels cannot afford.
                inflight => Step::Sleep(
                    inflight
                        .saturating_sub(c.max_inflight_ns / 2)
                        .clamp(c.recheck_ns / 2, c.max_inflight_ns),
                ),
            };
        }
        self.next_check_ns = now_ns + self.recheck_after(now_ns, debt, band);
        // This launch takes one place in the queue; the rest may pass without a check.
        self.allowance = room - 1;
        Step::Go
    }

    /// How long launches may pass without a full check, for a slice `debt_ns` ahead of
    /// its share and not resting (its band is `band_ns`): [`GateConfig::recheck_ns`], or
    /// longer, up to [`GateConfig::max_recheck_ns`], while the slice is so far below its
    /// band that even a GPU busy with its work all the time until then would leave it
    /// within half of what it has left. At a share of `p` percent, a busy nanosecond
    /// moves the debt by `(100 - p) / p`.
    fn recheck_after(&self, now_ns: u64, debt_ns: i64, band_ns: i64) -> u64 {
        let c = &self.config;
        let percent = i128::from(self.percent_now(now_ns).clamp(1, 100));
        // Idle time earns no credit: a slice behind its share starts from none.
        let room = i128::from(band_ns) - i128::from(debt_ns.max(0));
        let safe = if percent >= 100 {
            i128::from(c.max_recheck_ns)
        } else {
            room.max(0) * percent / (100 - percent) / 2
        };
        u64::try_from(safe.clamp(0, i128::from(u64::MAX)))
            .unwrap_or(u64::MAX)
            .clamp(c.recheck_ns, c.max_recheck_ns.max(c.recheck_ns))
    }

    /// Before the process exits or its context is destroyed: closes its open groups,
    /// waits up to `max_wait_ns` for the work it still has queued to complete, charges
    /// it, and gives the turn up. What is still queued at the deadline is charged its
    /// usual time without waiting longer, so the wait is bounded whatever the GPU does.
    /// A process that queued work and exited would otherwise leave that work uncharged,
    /// and a loop of short processes could use the GPU without limit.
    pub fn settle(&mut self, meter: &mut dyn BusyMeter, clock: &dyn Clock, max_wait_ns: u64) {
        let start = clock.now_ns();
        meter.seal();
        loop {
            let now = clock.now_ns();
            self.charge(now, meter);
            if meter.pending() == 0 || now.saturating_sub(start) >= max_wait_ns {
                break;
            }
            clock.sleep_ns(SETTLE_POLL_NS);
        }
        self.abandon(meter, clock.now_ns());
    }

    /// After the context is gone (the driver destroyed it, and its events with it):
    /// charges what was still queued at its usual time, without a call to the driver,
    /// and gives the turn up.
    pub fn abandon(&mut self, meter: &mut dyn BusyMeter, now_ns: u64) {
        let busy_ns = meter.abandon(now_ns);
        if busy_ns > 0 {
            let percent = self.percent_now(now_ns);
            self.budget
                .charge(busy_ns, now_ns.saturating_sub(busy_ns), percent);
        }
        self.leave();
    }

    /// On exit: give the turn and the slot back.
    pub fn leave(&mut self) {
        self.holding_since = None;
        if let Some(t) = &self.turns {
            t.leave();
        }
    }

    /// Sleeps until the GPU's turn is released or `timeout_ns` passes (see
    /// [`Step::WaitTurn`]).
    pub fn wait_turn(&self, seen: u32, timeout_ns: u64, clock: &dyn Clock) {
        match &self.turns {
            Some(t) if clock.is_real() => t.wait_release(seen, timeout_ns),
            _ => clock.sleep_ns(timeout_ns),
        }
    }

    /// Whether the GPU's turn file was cut short under this process (by another
    /// process that can write it): the gate then takes turns with no one, and the slice
    /// is held to its share by its own budget alone.
    pub fn turns_truncated(&self) -> bool {
        self.turns.as_ref().is_some_and(GpuTurns::truncated)
    }

    /// How many launches went through a full check rather than `fast_go`.
    pub fn full_checks(&self) -> u64 {
        self.full_checks
    }

    /// How many rests the gate has begun.
    pub fn rests(&self) -> u64 {
        self.rests
    }

    /// The slice's budget.
    pub fn budget(&self) -> &Budget<'a> {
        &self.budget
    }
}

/// Loops over [`Gate::step`] with a real clock until the launch may go.
pub fn admit(gate: &mut Gate<'_>, clock: &dyn Clock, meter: &mut dyn BusyMeter) {
    loop {
        match gate.step(clock.now_ns(), meter) {
            Step::Go => return,
            Step::Sleep(ns) => clock.sleep_ns(ns),
            Step::WaitOldest => meter.wait_oldest(),
            Step::WaitAll => meter.wait_all(),
            Step::WaitTurn { seen, timeout_ns } => gate.wait_turn(seen, timeout_ns, clock),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU64;

    use super::*;
    use crate::meter::Harvest;

    /// Work that was queued and never completes (it waits for a later launch).
    struct Stuck {
        pending: usize,
        longest_ns: u64,
    }

    impl BusyMeter for Stuck {
        fn harvest(&mut self, _now_ns: u64) -> Harvest {
            Harvest::default()
        }
        fn pending(&self) -> usize {
            self.pending
        }
        fn inflight_estimate_ns(&self) -> u64 {
            u64::MAX
        }
        fn room(&self, _max_inflight_ns: u64, _max_pending: usize) -> usize {
            0
        }
        fn longest_ns(&self) -> u64 {
            self.longest_ns
        }
        fn wait_oldest(&mut self) {}
        fn wait_all(&mut self) {}
    }

    /// The time from the first step until the gate lets a launch go.
    fn time_to_go(meter: &mut Stuck, progress_every: Option<u64>) -> u64 {
        let tat = AtomicU64::new(0);
        let busy = AtomicU64::new(0);
        let mut gate = Gate::new(GateConfig::new(50, None), Budget::new(&tat, &busy), None);
        let t0 = 1_000 * MS;
        let mut now = t0;
        while now < t0 + 10_000 * MS {
            if gate.step(now, meter) == Step::Go {
                return now - t0;
            }
            now += MS;
            if let Some(every) = progress_every
                && (now - t0).is_multiple_of(every)
            {
                meter.pending -= 1;
            }
        }
        u64::MAX
    }

    #[test]
    fn a_launch_is_not_held_for_ever_behind_work_that_never_completes() {
        let mut stuck = Stuck {
            pending: 3,
            longest_ns: 0,
        };
        assert_eq!(time_to_go(&mut stuck, None), OWN_WAIT_MIN_NS);
        // Work known to take long is waited for longer.
        let mut slow = Stuck {
            pending: 3,
            longest_ns: 500 * MS,
        };
        assert_eq!(time_to_go(&mut slow, None), 2_000 * MS);
    }

    /// Queued work that never completes, and that usually takes `usual_ns` a launch.
    struct NeverDone {
        pending: usize,
        usual_ns: u64,
    }

    impl BusyMeter for NeverDone {
        fn harvest(&mut self, _now_ns: u64) -> Harvest {
            Harvest::default()
        }
        fn pending(&self) -> usize {
            self.pending
        }
        fn inflight_estimate_ns(&self) -> u64 {
            0
        }
        fn room(&self, _max_inflight_ns: u64, _max_pending: usize) -> usize {
            0
        }
        fn wait_oldest(&mut self) {}
        fn wait_all(&mut self) {}
        fn abandon(&mut self, _now_ns: u64) -> u64 {
            let ns = self.pending as u64 * self.usual_ns;
            self.pending = 0;
            ns
        }
    }

    /// A virtual clock that moves only when slept on.
    struct Virtual(std::cell::Cell<u64>);

    impl Clock for Virtual {
        fn now_ns(&self) -> u64 {
            self.0.get()
        }
        fn sleep_ns(&self, ns: u64) {
            self.0.set(self.0.get() + ns);
        }
    }

    #[test]
    fn settling_ends_at_its_deadline_and_charges_what_never_completed() {
        let tat = AtomicU64::new(0);
        let busy = AtomicU64::new(0);
        let mut gate = Gate::new(GateConfig::new(50, None), Budget::new(&tat, &busy), None);
        let clock = Virtual(std::cell::Cell::new(1_000 * MS));
        let mut meter = NeverDone {
            pending: 4,
            usual_ns: 10 * MS,
        };
        gate.settle(&mut meter, &clock, 300 * MS);
        let waited = clock.now_ns() - 1_000 * MS;
        assert!(
            (300 * MS..=301 * MS).contains(&waited),
            "settled after {waited} ns"
        );
        assert_eq!(meter.pending(), 0);
        assert_eq!(gate.budget().busy_total_ns(), 40 * MS);
    }

    #[test]
    fn abandoning_a_gone_context_charges_its_queue_without_waiting() {
        let tat = AtomicU64::new(0);
        let busy = AtomicU64::new(0);
        let mut gate = Gate::new(GateConfig::new(50, None), Budget::new(&tat, &busy), None);
        let mut meter = NeverDone {
            pending: 3,
            usual_ns: 2 * MS,
        };
        gate.abandon(&mut meter, 5_000 * MS);
        assert_eq!(meter.pending(), 0);
        assert_eq!(gate.budget().busy_total_ns(), 6 * MS);
    }

    /// A queue with room, whose work is charged `busy_ns` at the next harvest.
    struct Open {
        busy_ns: u64,
    }

    impl BusyMeter for Open {
        fn harvest(&mut self, now_ns: u64) -> Harvest {
            let busy_ns = std::mem::take(&mut self.busy_ns);
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
        fn room(&self, _max_inflight_ns: u64, _max_pending: usize) -> usize {
            1_000_000
        }
        fn wait_oldest(&mut self) {}
        fn wait_all(&mut self) {}
    }

    /// How long launches pass without a full check after one at `now_ns`.
    fn unchecked_after(gate: &mut Gate<'_>, meter: &mut Open, now_ns: u64) -> u64 {
        assert_eq!(gate.step(now_ns, meter), Step::Go);
        let mut t = now_ns;
        while gate.fast_go(t) {
            t += US;
        }
        t - now_ns
    }

    #[test]
    fn a_limit_far_from_binding_is_checked_less_often_and_a_binding_one_as_often() {
        let tat = AtomicU64::new(0);
        let busy = AtomicU64::new(0);
        let t0 = 1_000 * MS;
        // 99%: the debt grows a hundredth as fast as the GPU works; checks are the
        // longest apart.
        let mut gate = Gate::new(GateConfig::new(99, None), Budget::new(&tat, &busy), None);
        let mut meter = Open { busy_ns: MS };
        assert_eq!(unchecked_after(&mut gate, &mut meter, t0), MS);
        // 25%, with 1.5 ms just used: the debt (4.5 ms of wall time, from when that
        // work began) is within half a millisecond of the 5 ms band, which the GPU
        // could use up in a third of that: checks come at the shortest interval.
        let tat = AtomicU64::new(0);
        let mut gate = Gate::new(GateConfig::new(25, None), Budget::new(&tat, &busy), None);
        let mut meter = Open {
            busy_ns: 1_500 * US,
        };
        assert_eq!(unchecked_after(&mut gate, &mut meter, t0), 250 * US);
        // 25%, idle before (idle time earns no credit): the whole band, 5 ms, which the
        // GPU could use up in 5/3 ms; half that (833 µs) until the next check.
        let tat = AtomicU64::new(0);
        let mut gate = Gate::new(GateConfig::new(25, None), Budget::new(&tat, &busy), None);
        let mut meter = Open { busy_ns: 0 };
        let after = unchecked_after(&mut gate, &mut meter, t0);
        assert!((833 * US..=834 * US).contains(&after), "{after}");
    }

    #[test]
    fn work_that_keeps_completing_is_waited_for() {
        // Something completes every 50 ms: the process waits, as the queue bound says.
        let mut draining = Stuck {
            pending: 10_000,
            longest_ns: 0,
        };
        assert_eq!(time_to_go(&mut draining, Some(50 * MS)), u64::MAX);
    }
}
