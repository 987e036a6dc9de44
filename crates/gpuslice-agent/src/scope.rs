//! Who may see what: a caller's *container* is the set of processes that share its PID
//! namespace and, when the caller is in a cgroup other than the root, whose cgroup v2 is
//! the caller's or below it. A caller can narrow its own view (by moving into a deeper
//! cgroup) but never widen it. Without cgroup v2 only the namespace counts.
//!
//! [`Scope::view`] turns the host's snapshot into the caller's view: only members, under
//! the PID they have in the caller's namespace (the last `NSpid:` entry, which for a
//! process in the caller's namespace is its PID there).

use gpuslice_agent_protocol::{DriverMode, GpuView, Process, SampleNumbering, View};

use crate::host::HostGpu;
use crate::procfs::{Procfs, cgroup_within};

/// The container of a caller, identified from the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// The caller's host PID (from `SO_PEERCRED`).
    pub caller: u32,
    /// Inode of the caller's PID namespace.
    pub pid_ns: u64,
    /// The caller's cgroup v2 path; `None`: no cgroup v2, namespace only.
    pub cgroup: Option<String>,
}

/// Why a caller's scope could not be established.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScopeError {
    /// The caller is gone, or `/proc/<pid>` cannot be read.
    #[error("cannot read /proc/{pid}/ns/pid of the caller")]
    NoNamespace {
        /// The caller's host PID.
        pid: u32,
    },
    /// The caller's cgroup file cannot be read (it is gone).
    #[error("cannot read /proc/{pid}/cgroup of the caller")]
    NoCgroup {
        /// The caller's host PID.
        pid: u32,
    },
}

impl Scope {
    /// Reads the scope of host process `pid`.
    pub fn of(procfs: &Procfs, pid: u32) -> Result<Self, ScopeError> {
        let pid_ns = procfs.pid_ns(pid).ok_or(ScopeError::NoNamespace { pid })?;
        // The kernel writes /proc/<pid>/cgroup; without a `0::` line the host has no
        // cgroup v2 hierarchy and only the namespace counts.
        let cgroup = match procfs.cgroup(pid) {
            Some(c) => Some(c),
            None if !procfs.has_cgroup_file(pid) => return Err(ScopeError::NoCgroup { pid }),
            None => None,
        };
        Ok(Self {
            caller: pid,
            pid_ns,
            cgroup,
        })
    }

    /// The PID of host process `host_pid` in the caller's namespace, if it belongs to the
    /// caller's container.
    pub fn member(&self, procfs: &Procfs, host_pid: u32) -> Option<u32> {
        if host_pid == 0 || procfs.pid_ns(host_pid)? != self.pid_ns {
            return None;
        }
        if let Some(scope) = &self.cgroup
            && scope != "/"
        {
            let theirs = procfs.cgroup(host_pid)?;
            if !cgroup_within(&theirs, scope) {
                return None;
            }
        }
        procfs.own_pid(host_pid)
    }

    /// The caller's view of `gpus`: only members, under their PIDs in the caller's
    /// namespace.
    pub fn view(
        &self,
        procfs: &Procfs,
        gpus: &[HostGpu],
        mode: DriverMode,
        own_samples: SampleNumbering,
    ) -> View {
        let mut cache: Vec<(u32, Option<u32>)> = Vec::new();
        let mut member = |pid: u32| match cache.iter().find(|(p, _)| *p == pid) {
            Some(&(_, m)) => m,
            None => {
                let m = self.member(procfs, pid);
                cache.push((pid, m));
                m
            }
        };
        let gpus_in = gpus;
        let gpus = gpus_in
            .iter()
            .map(|g| GpuView {
                uuid: g.uuid.clone(),
                processes: g
                    .processes
                    .iter()
                    .filter_map(|p| {
                        Some(Process {
                            pid: member(p.pid)?,
                            kind: p.kind,
                            used_memory: p.used_memory,
                        })
                    })
                    .collect(),
                samples: g
                    .samples
                    .iter()
                    .filter_map(|s| {
                        let mut s = *s;
                        s.pid = member(s.pid)?;
                        Some(s)
                    })
                    .collect(),
                accounting: g
                    .accounting
                    .iter()
                    .filter_map(|a| {
                        let mut a = *a;
                        a.pid = member(a.pid)?;
                        Some(a)
                    })
                    .collect(),
                encoder_sessions: g
                    .encoder_sessions
                    .iter()
                    .filter_map(|e| {
                        let mut e = *e;
                        e.pid = member(e.pid)?;
                        Some(e)
                    })
                    .collect(),
                fbc_sessions: g
                    .fbc_sessions
                    .iter()
                    .filter_map(|f| {
                        let mut f = *f;
                        f.pid = member(f.pid)?;
                        Some(f)
                    })
                    .collect(),
            })
            .collect();
        // The container's GPU processes with their host PIDs, for a caller that must
        // translate what a driver showing host PIDs says.
        let mut pids: Vec<(u32, u32)> = Vec::new();
        for p in gpus_in.iter().flat_map(|g| g.processes.iter()) {
            if let Some(own) = member(p.pid)
                && !pids.iter().any(|&(_, host)| host == p.pid)
            {
                pids.push((own, p.pid));
            }
        }
        View {
            mode,
            own_samples,
            gpus,
            pids,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostProcess;
    use gpuslice_agent_protocol::{Accounting, EncoderSession, FbcSession, ProcessKind, Sample};
    use std::path::Path;

    /// A fake /proc: `procs` are (host pid, namespace name, NSpid list, cgroup).
    fn fake_proc(root: &Path, procs: &[(u32, &str, &[u32], &str)]) -> Procfs {
        for (pid, ns, ns_pids, cgroup) in procs {
            let dir = root.join(pid.to_string());
            std::fs::create_dir_all(dir.join("ns")).unwrap();
            let ns_file = root.join(format!("ns-{ns}"));
            if !ns_file.exists() {
                std::fs::write(&ns_file, ns).unwrap();
            }
            // Hard links: every process of a namespace shares the inode, as in /proc.
            std::fs::hard_link(&ns_file, dir.join("ns/pid")).unwrap();
            let list: Vec<String> = ns_pids.iter().map(u32::to_string).collect();
            std::fs::write(
                dir.join("status"),
                format!("Name:\tx\nNSpid:\t{}\n", list.join("\t")),
            )
            .unwrap();
            std::fs::write(dir.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
        }
        Procfs::new(root)
    }

    fn host_gpu(pids: &[u32]) -> HostGpu {
        HostGpu {
            uuid: "GPU-1".into(),
            processes: pids
                .iter()
                .map(|&pid| HostProcess {
                    pid,
                    kind: ProcessKind::Compute,
                    used_memory: Some(u64::from(pid) << 20),
                })
                .collect(),
            samples: pids
                .iter()
                .map(|&pid| Sample {
                    pid,
                    timestamp: 5,
                    sm: pid % 100,
                    mem: 1,
                    enc: 0,
                    dec: 0,
                })
                .collect(),
            accounting: pids
                .iter()
                .map(|&pid| Accounting {
                    pid,
                    gpu_util: 1,
                    mem_util: 2,
                    max_memory: 3,
                    time: 4,
                    start_time: 5,
                    is_running: true,
                })
                .collect(),
            encoder_sessions: pids
                .iter()
                .map(|&pid| EncoderSession {
                    session_id: pid * 10,
                    pid,
                    codec: 0,
                    h_res: 1,
                    v_res: 1,
                    average_fps: 1,
                    average_latency: 1,
                })
                .collect(),
            fbc_sessions: pids
                .iter()
                .map(|&pid| FbcSession {
                    session_id: pid * 10,
                    pid,
                    display_ordinal: 0,
                    session_type: 0,
                    flags: 0,
                    h_max: 1,
                    v_max: 1,
                    h_res: 1,
                    v_res: 1,
                    average_fps: 1,
                    average_latency: 1,
                })
                .collect(),
            memory: None,
            utilization: None,
        }
    }

    #[test]
    fn only_the_callers_namespace_and_cgroup_with_its_pids() {
        let dir = tempfile::tempdir().unwrap();
        let procfs = fake_proc(
            dir.path(),
            &[
                // Container A: caller 300 (ns pid 5), GPU processes 301 and 302.
                (300, "a", &[300, 5], "/pods/a"),
                (301, "a", &[301, 1], "/pods/a"),
                (302, "a", &[302, 2], "/pods/a/sub"),
                // Same namespace, other cgroup (a sibling container sharing the PID ns).
                (303, "a", &[303, 3], "/pods/b"),
                // Container B and a host process.
                (400, "b", &[400, 1], "/pods/b"),
                (500, "host", &[500], "/"),
            ],
        );
        let scope = Scope::of(&procfs, 300).unwrap();
        assert_eq!(scope.cgroup.as_deref(), Some("/pods/a"));
        let gpus = [host_gpu(&[301, 302, 303, 400, 500, 999])];
        let view = scope.view(
            &procfs,
            &gpus,
            DriverMode::Translated,
            SampleNumbering::Translated,
        );
        let g = &view.gpus[0];
        let pids: Vec<(u32, Option<u64>)> =
            g.processes.iter().map(|p| (p.pid, p.used_memory)).collect();
        assert_eq!(pids, vec![(1, Some(301 << 20)), (2, Some(302 << 20))]);
        let sample_pids: Vec<(u32, u32)> = g.samples.iter().map(|s| (s.pid, s.sm)).collect();
        assert_eq!(sample_pids, vec![(1, 1), (2, 2)]);
        assert_eq!(
            g.accounting.iter().map(|a| a.pid).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(
            g.encoder_sessions
                .iter()
                .map(|e| (e.session_id, e.pid))
                .collect::<Vec<_>>(),
            [(3010, 1), (3020, 2)]
        );
        assert_eq!(g.fbc_sessions.len(), 2);
        assert_eq!(view.mode, DriverMode::Translated);
        // Host PIDs of the container's GPU processes, for translating a driver's answer.
        assert_eq!(view.pids, vec![(1, 301), (2, 302)]);

        // From the root cgroup of namespace A, the sibling is visible too.
        let wide = Scope {
            cgroup: Some("/".into()),
            ..scope.clone()
        };
        assert_eq!(wide.member(&procfs, 303), Some(3));
        // A caller in a deeper cgroup sees less.
        let narrow = Scope::of(&procfs, 302).unwrap();
        assert_eq!(narrow.member(&procfs, 301), None);
        assert_eq!(narrow.member(&procfs, 302), Some(2));
        // Without cgroup v2 only the namespace counts.
        let ns_only = Scope {
            cgroup: None,
            ..scope
        };
        assert_eq!(ns_only.member(&procfs, 303), Some(3));
        assert_eq!(ns_only.member(&procfs, 400), None);
        assert_eq!(ns_only.member(&procfs, 999), None);
        assert_eq!(ns_only.member(&procfs, 0), None);
        // The host process sees only the host namespace.
        let host = Scope::of(&procfs, 500).unwrap();
        assert_eq!(host.member(&procfs, 500), Some(500));
        assert_eq!(host.member(&procfs, 301), None);
        assert_eq!(
            Scope::of(&procfs, 12345),
            Err(ScopeError::NoNamespace { pid: 12345 })
        );
    }
}
