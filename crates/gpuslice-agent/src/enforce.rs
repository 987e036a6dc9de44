//! Host-side enforcement of memory slices. Inside a container the interposer refuses
//! what would take a slice past its limit, but it runs in processes the container owns,
//! and its ledger is a file the container can write: a process that corrupts the ledger,
//! or reaches the driver without the interposer, is not held by it. The agent is. Every
//! [`EnforceOptions::interval`] it sums, per slice and GPU, the memory NVML on the host
//! reports for the slice's processes ([`crate::membership`] says which they are), and
//! when a slice holds more than its limit plus [`EnforceOptions::grace`], it kills the
//! slice's largest process on that GPU (then the next, until the rest fits) with
//! `SIGKILL` through a pidfd, so that a PID reused in between is never hit.
//!
//! Every [`SWEEP_EVERY`] looks it also frees the ledger entries of processes that are
//! gone ([`crate::sweep`]).
//!
//! Processes the interposer holds never get there: their memory, contexts included, stays
//! within the limit as NVML counts it (the GPU checks measure that). The grace covers
//! what the driver adds to a process's memory after the interposer has charged it.

use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpuslice_config::format_size;

use crate::host::{CachedHost, HostGpu};
use crate::membership::{Membership, SliceTable};
use crate::metrics::AgentCounters;
use crate::procfs::Procfs;
use crate::server::log;

/// What to do with a slice over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Kill its largest processes until the rest fits.
    Kill,
    /// Only log which processes would be killed.
    Report,
}

/// How the agent enforces memory slices.
#[derive(Debug, Clone)]
pub struct EnforceOptions {
    /// The state folder of `gpuslice cdi generate` (slices in `config/<name>.env`).
    pub state_dir: PathBuf,
    /// How far past its limit a slice may be before the agent acts.
    pub grace: u64,
    /// How often the agent looks.
    pub interval: Duration,
    /// Kill or report.
    pub action: Action,
}

/// The default grace: what a process's context may come to beyond what the interposer
/// charged for it.
pub const DEFAULT_GRACE: u64 = 128 << 20;

/// One GPU process of a slice, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceProcess {
    /// Host PID.
    pub pid: u32,
    /// Start time, ticks since boot: with the PID, the process's identity.
    pub start_time: u64,
    /// Its slice.
    pub slice: String,
    /// The GPU's index on the host.
    pub gpu_index: u32,
    /// The GPU's UUID.
    pub gpu_uuid: String,
    /// Memory it holds there.
    pub used: u64,
}

/// A slice over its limit on one GPU, and which of its processes must go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overrun {
    /// The slice.
    pub slice: String,
    /// The GPU.
    pub gpu_uuid: String,
    /// Its limit there.
    pub limit: u64,
    /// What its processes hold there.
    pub used: u64,
    /// The processes to kill, largest first (the newest of equals first).
    pub victims: Vec<SliceProcess>,
}

/// The slices over `limit + grace` among `processes`, each with the fewest of its largest
/// processes whose end brings it back within `limit + grace`. `limit_of(slice, index,
/// uuid)` is a slice's limit on a GPU (`None`: no limit there).
pub fn overruns(
    processes: &[SliceProcess],
    limit_of: impl Fn(&str, u32, &str) -> Option<u64>,
    grace: u64,
) -> Vec<Overrun> {
    let mut groups: BTreeMap<(&str, &str), Vec<&SliceProcess>> = BTreeMap::new();
    for p in processes {
        groups
            .entry((p.slice.as_str(), p.gpu_uuid.as_str()))
            .or_default()
            .push(p);
    }
    let mut out = Vec::new();
    for ((slice, uuid), mut procs) in groups {
        let Some(limit) = limit_of(slice, procs[0].gpu_index, uuid) else {
            continue;
        };
        let used: u64 = procs.iter().map(|p| p.used).sum();
        let allowed = limit.saturating_add(grace);
        if used <= allowed {
            continue;
        }
        procs.sort_by(|a, b| b.used.cmp(&a.used).then(b.start_time.cmp(&a.start_time)));
        let mut left = used;
        let victims: Vec<SliceProcess> = procs
            .into_iter()
            .take_while(|p| {
                let go = left > allowed;
                left -= p.used;
                go
            })
            .cloned()
            .collect();
        out.push(Overrun {
            slice: slice.to_string(),
            gpu_uuid: uuid.to_string(),
            limit,
            used,
            victims,
        });
    }
    out
}

/// Sends `SIGKILL` to host process `pid` if it is still the one that started at
/// `start_time`: through a pidfd, opened before the start time is checked, so the signal
/// cannot reach a process that took over the PID in between.
pub fn kill_exactly(procfs: &Procfs, pid: u32, start_time: u64) -> Result<(), String> {
    let Ok(raw_pid) = libc::pid_t::try_from(pid) else {
        return Err(format!("PID {pid} is out of range"));
    };
    // SAFETY: pidfd_open takes a PID and flags and returns a new descriptor or -1; it
    // touches no memory of this process.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw_pid, 0) };
    if fd < 0 {
        return Err(format!("pidfd_open: {}", std::io::Error::last_os_error()));
    }
    let Ok(fd) = i32::try_from(fd) else {
        return Err("pidfd_open returned an impossible descriptor".into());
    };
    // SAFETY: `fd` was just returned by pidfd_open and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if procfs.start_time(pid) != Some(start_time) {
        return Err("it exited (its PID now names another process)".into());
    }
    // SAFETY: pidfd_send_signal with a pidfd this function owns, a valid signal, no
    // siginfo (null is allowed) and no flags; it touches no memory of this process.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "pidfd_send_signal: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// The enforcement loop's state.
#[derive(Debug)]
pub struct Enforcer {
    options: EnforceOptions,
    procfs: Procfs,
    membership: Membership,
    table: SliceTable,
    /// Slice files already reported as broken, with the reason.
    reported_broken: HashSet<(String, String)>,
    /// Processes already reported (report only: each once).
    reported: HashSet<(u32, u64)>,
    /// Whether the agent sees every process (and so may sweep ledgers).
    sweeps: bool,
    /// Ledger errors already reported.
    ledger_errors: HashSet<String>,
    ticks: u64,
    /// What it counts for `/metrics`.
    counters: AgentCounters,
}

/// Ledgers are swept every this many looks.
pub const SWEEP_EVERY: u64 = 4;

impl Enforcer {
    /// An enforcer reading the host's `/proc` and `/sys/fs/cgroup`.
    pub fn new(options: EnforceOptions, procfs: Procfs) -> Self {
        let membership = Membership::new(procfs.clone(), "/sys/fs/cgroup");
        Self {
            options,
            procfs,
            membership,
            table: SliceTable::default(),
            reported_broken: HashSet::new(),
            reported: HashSet::new(),
            sweeps: false,
            ledger_errors: HashSet::new(),
            ticks: 0,
            counters: AgentCounters::default(),
        }
    }

    /// Counts its kills, reports and freed ledger entries in `counters`.
    pub fn counting(mut self, counters: AgentCounters) -> Self {
        self.counters = counters;
        self
    }

    /// The slice processes in `snapshot`.
    fn slice_processes(&mut self, snapshot: &[HostGpu]) -> Vec<SliceProcess> {
        let mut out = Vec::new();
        let mut alive = HashSet::new();
        for (index, gpu) in snapshot.iter().enumerate() {
            for p in &gpu.processes {
                alive.insert(p.pid);
                let Some(used) = p.used_memory else {
                    continue;
                };
                let Some(start_time) = self.procfs.start_time(p.pid) else {
                    continue;
                };
                let Some(slice) = self.membership.slice_of(&self.table, p.pid, start_time) else {
                    continue;
                };
                out.push(SliceProcess {
                    pid: p.pid,
                    start_time,
                    slice,
                    gpu_index: u32::try_from(index).unwrap_or(u32::MAX),
                    gpu_uuid: gpu.uuid.clone(),
                    used,
                });
            }
        }
        self.membership.forget_all_but(&alive);
        out
    }

    /// One look: reloads the slices, finds the overruns and acts on them. Returns what it
    /// did, one line each (also logged).
    pub fn tick(&mut self, snapshot: &[HostGpu]) -> Vec<String> {
        self.table = SliceTable::load(&self.options.state_dir, &self.procfs);
        let mut lines = Vec::new();
        for s in self.table.slices() {
            if let Err(reason) = &s.memory {
                let key = (s.name.clone(), reason.clone());
                if self.reported_broken.insert(key) {
                    lines.push(format!(
                        "slice '{}': {reason}; the slice is held to no memory",
                        s.name
                    ));
                }
            }
        }
        let processes = self.slice_processes(snapshot);
        self.reported
            .retain(|(pid, _)| processes.iter().any(|p| p.pid == *pid));
        let table = &self.table;
        let limit_of = |slice: &str, index: u32, uuid: &str| {
            table.get(slice).and_then(|s| s.memory_limit(index, uuid))
        };
        for o in overruns(&processes, limit_of, self.options.grace) {
            for v in &o.victims {
                let command = self.procfs.command(v.pid).unwrap_or_else(|| "?".into());
                let what = format!(
                    "slice '{}' holds {} on {}, over its limit of {} (grace {}): PID {} ({command}) holds {}",
                    o.slice,
                    format_size(o.used),
                    o.gpu_uuid,
                    format_size(o.limit),
                    format_size(self.options.grace),
                    v.pid,
                    format_size(v.used),
                );
                let line = match self.options.action {
                    Action::Report if !self.reported.insert((v.pid, v.start_time)) => continue,
                    Action::Report => {
                        self.counters.enforcement_reports.inc();
                        format!("{what}; would kill it (report only)")
                    }
                    Action::Kill => match kill_exactly(&self.procfs, v.pid, v.start_time) {
                        Ok(()) => {
                            self.counters.enforcement_kills.inc();
                            format!("{what}; killed it")
                        }
                        Err(e) => format!("{what}; could not kill it: {e}"),
                    },
                };
                lines.push(line);
            }
        }
        if self.sweeps && self.ticks.is_multiple_of(SWEEP_EVERY) {
            let swept = crate::sweep::sweep_ledgers(
                &self.options.state_dir,
                &self.procfs,
                &mut self.ledger_errors,
            );
            self.counters.reclaimed_entries.inc_by(swept.entries);
            lines.extend(swept.lines);
        }
        self.ticks += 1;
        for l in &lines {
            log(format_args!("{l}"));
        }
        lines
    }

    /// Looks every interval, for ever.
    pub fn run(mut self, host: Arc<CachedHost>) {
        log(format_args!(
            "enforcing the memory slices of {} every {} ms ({}, grace {})",
            self.options
                .state_dir
                .join(crate::membership::CONFIG_DIR)
                .display(),
            self.options.interval.as_millis(),
            match self.options.action {
                Action::Kill => "killing what goes over",
                Action::Report => "reporting only",
            },
            format_size(self.options.grace),
        ));
        self.sweeps = crate::sweep::sees_every_process(&self.procfs);
        if self.sweeps {
            log(format_args!(
                "sweeping the slices' ledgers of processes that are gone every {} ms",
                self.options.interval.as_millis() * u128::from(SWEEP_EVERY)
            ));
        } else {
            log(format_args!(
                "not in the host's PID namespace: the ledgers are not swept (dead containers' entries stay)"
            ));
        }
        let mut last_error = String::new();
        loop {
            match host.fresh() {
                Ok(snapshot) => {
                    last_error.clear();
                    self.tick(&snapshot);
                }
                Err(e) => {
                    let e = e.to_string();
                    if e != last_error {
                        log(format_args!("enforcement: {e}"));
                        last_error = e;
                    }
                }
            }
            std::thread::sleep(self.options.interval);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn p(pid: u32, slice: &str, gpu: u32, used_mib: u64) -> SliceProcess {
        SliceProcess {
            pid,
            start_time: u64::from(pid) * 10,
            slice: slice.into(),
            gpu_index: gpu,
            gpu_uuid: format!("GPU-{gpu}"),
            used: used_mib * MIB,
        }
    }

    fn limits(slice: &str, index: u32, _uuid: &str) -> Option<u64> {
        match (slice, index) {
            ("a", _) => Some(1024 * MIB),
            ("b", 0) => Some(2048 * MIB),
            _ => None,
        }
    }

    #[test]
    fn a_slice_within_its_limit_and_grace_is_left_alone() {
        let procs = [p(1, "a", 0, 600), p(2, "a", 0, 500), p(3, "b", 0, 2000)];
        // 1100 MiB against 1024 + 128.
        assert!(overruns(&procs, limits, 128 * MIB).is_empty());
        // Another GPU is another budget; no limit there, nothing to hold.
        let procs = [p(1, "a", 0, 1000), p(2, "a", 1, 1000), p(3, "b", 1, 9000)];
        assert!(overruns(&procs, limits, 0).is_empty());
    }

    #[test]
    fn the_largest_processes_go_until_the_rest_fits() {
        let procs = [
            p(1, "a", 0, 300),
            p(2, "a", 0, 3000),
            p(3, "a", 0, 500),
            p(4, "b", 0, 500),
        ];
        let o = overruns(&procs, limits, 128 * MIB);
        assert_eq!(o.len(), 1);
        assert_eq!((o[0].slice.as_str(), o[0].used), ("a", 3800 * MIB));
        let victims: Vec<u32> = o[0].victims.iter().map(|v| v.pid).collect();
        assert_eq!(victims, [2], "800 MiB are left, within the limit");
        // Several when one is not enough; the newest of equals first.
        let procs = [p(1, "a", 0, 700), p(2, "a", 0, 700), p(3, "a", 0, 700)];
        let o = overruns(&procs, limits, 0);
        let victims: Vec<u32> = o[0].victims.iter().map(|v| v.pid).collect();
        assert_eq!(victims, [3, 2]);
    }

    #[test]
    fn a_slice_without_a_readable_limit_is_held_to_nothing() {
        let procs = [p(1, "broken", 0, 1)];
        let o = overruns(&procs, |_, _, _| Some(0), 0);
        assert_eq!(o[0].victims.len(), 1);
    }

    #[test]
    fn a_pid_that_names_another_process_now_is_not_killed() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let procfs = Procfs::default();
        let pid = child.id();
        let start = procfs.start_time(pid).unwrap();
        let err = kill_exactly(&procfs, pid, start + 1).unwrap_err();
        assert!(err.contains("exited"), "{err}");
        assert!(child.try_wait().unwrap().is_none(), "still running");
        kill_exactly(&procfs, pid, start).unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(kill_exactly(&procfs, pid, start).is_err(), "gone");
    }
}
