//! A simulated GPU on a virtual clock, for testing the controller without a GPU.
//!
//! The GPU runs one kernel at a time, in the order kernels were submitted, each after
//! the previous work of its stream, never earlier than its submission plus a launch
//! latency. Events complete when the work before them on their stream has completed.
//! Every process of a test shares one [`SimGpu`]; the test advances the clock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::meter::Timeline;

/// The stream id of a process's private stream.
pub const PRIVATE_STREAM: u32 = u32::MAX;

/// The simulated GPU and the virtual clock.
#[derive(Debug, Default)]
pub struct SimGpu {
    /// Virtual now, in nanoseconds.
    pub now: u64,
    /// Time from submission to the earliest start of work on an idle GPU.
    pub latency_ns: u64,
    free_at: u64,
    tails: HashMap<(usize, u32), u64>,
    events: Vec<u64>,
    /// Every kernel that ran: (process, start, end).
    pub kernels: Vec<(usize, u64, u64)>,
    wake: HashMap<usize, u64>,
}

/// A shared handle to the simulated GPU.
pub type SharedGpu = Rc<RefCell<SimGpu>>;

impl SimGpu {
    /// A GPU with the given launch latency, at time `start_ns`.
    pub fn shared(latency_ns: u64, start_ns: u64) -> SharedGpu {
        Rc::new(RefCell::new(SimGpu {
            now: start_ns,
            latency_ns,
            ..SimGpu::default()
        }))
    }

    /// Submits a kernel of `duration_ns` for `process` on `stream`; returns its start
    /// and end.
    pub fn launch(&mut self, process: usize, stream: u32, duration_ns: u64) -> (u64, u64) {
        let tail = self.tails.get(&(process, stream)).copied().unwrap_or(0);
        let start = (self.now + self.latency_ns).max(tail).max(self.free_at);
        let end = start + duration_ns;
        self.free_at = end;
        self.tails.insert((process, stream), end);
        self.kernels.push((process, start, end));
        (start, end)
    }

    /// When the work queued on a stream completes.
    pub fn stream_tail(&self, process: usize, stream: u32) -> u64 {
        self.tails.get(&(process, stream)).copied().unwrap_or(0)
    }

    /// GPU time `process` used between `from` and `to`.
    pub fn busy_of(&self, process: usize, from: u64, to: u64) -> u64 {
        self.kernels
            .iter()
            .filter(|(p, _, _)| *p == process)
            .map(|&(_, s, e)| e.min(to).saturating_sub(s.max(from)))
            .sum()
    }

    /// When a process that waited for an event may go on (and forgets it).
    pub fn take_wake(&mut self, process: usize) -> Option<u64> {
        self.wake.remove(&process)
    }

    fn record(&mut self, process: usize, event: usize, stream: u32) {
        let tail = self.stream_tail(process, stream);
        let at = tail.max(self.now + self.latency_ns);
        self.tails.insert((process, stream), at);
        if let Some(slot) = self.events.get_mut(event) {
            *slot = at;
        }
    }
}

/// One simulated process's view of the GPU, as a [`Timeline`].
#[derive(Debug)]
pub struct SimTimeline {
    gpu: SharedGpu,
    process: usize,
}

impl SimTimeline {
    /// The timeline of `process`.
    pub fn new(gpu: SharedGpu, process: usize) -> Self {
        SimTimeline { gpu, process }
    }
}

impl Timeline for SimTimeline {
    type Event = usize;
    type Stream = u32;

    fn new_event(&mut self) -> Option<usize> {
        let mut g = self.gpu.borrow_mut();
        g.events.push(u64::MAX);
        Some(g.events.len() - 1)
    }

    fn record(&mut self, event: usize, stream: u32) -> bool {
        self.gpu.borrow_mut().record(self.process, event, stream);
        true
    }

    fn record_private(&mut self, event: usize) -> bool {
        self.gpu
            .borrow_mut()
            .record(self.process, event, PRIVATE_STREAM);
        true
    }

    fn is_done(&mut self, event: usize) -> Option<bool> {
        let g = self.gpu.borrow();
        g.events.get(event).map(|&at| at <= g.now)
    }

    fn stream_idle(&mut self, stream: u32) -> Option<bool> {
        let g = self.gpu.borrow();
        Some(g.stream_tail(self.process, stream) <= g.now)
    }

    fn wait(&mut self, event: usize) -> bool {
        let mut g = self.gpu.borrow_mut();
        let Some(&at) = g.events.get(event) else {
            return false;
        };
        let process = self.process;
        let wake = g.wake.entry(process).or_insert(0);
        *wake = (*wake).max(at);
        true
    }

    fn elapsed_ns(&mut self, from: usize, to: usize) -> Option<i64> {
        let g = self.gpu.borrow();
        let (a, b) = (*g.events.get(from)?, *g.events.get(to)?);
        (a <= g.now && b <= g.now).then(|| b as i64 - a as i64)
    }
}
