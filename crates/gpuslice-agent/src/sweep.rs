//! Frees the ledger entries of slice processes that are gone. A process's interposer
//! frees its entry when it exits, and processes of the same PID namespace sweep each
//! other's entries when they die; but a container killed as a whole leaves its entries
//! behind, and no process of a later container of the slice (another PID namespace) can
//! tell that they are dead. They would count against the slice for ever. The agent sees
//! every namespace from the host, so it sweeps them.
//!
//! A ledger entry names its process by PID in its own namespace, the namespace's inode
//! and the start time. The agent lists every process of the host by PID in its own
//! namespace and namespace inode, and frees an entry only when no process of that PID was
//! in that namespace in two lists, the second made after the entry was read, so that a
//! process registering meanwhile is never taken for dead. The start time is left out: a
//! process reads it from `/proc/<its PID>`, which names another process where a PID
//! namespace still has the host's `/proc` mounted. A PID reused within one namespace
//! keeps a dead entry until that process is gone too, which errs on the safe side.
//! It sweeps only from the host's PID namespace (elsewhere it would not see every
//! process). The ledgers are files the containers can write; what the agent does with
//! them is only ever to free entries of a slice's own ledger, which a process of the
//! slice could do itself. Nothing read from a ledger is trusted: a container can cut
//! its ledger short under the agent's mapping (the process installs the ledger's
//! truncation guard, `gpuslice_ledger::guard`, so that this voids the read instead of
//! killing the agent with SIGBUS; the sweep of that ledger is then skipped and reported),
//! sums of its numbers saturate, and damaged files are reported by name.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use gpuslice_config::format_size;
use gpuslice_ledger::Ledger;

use crate::procfs::Procfs;

/// The folder of the slices' ledgers below the state folder, and each ledger's name
/// (the host file layout, `gpuslice_host::layout`).
pub use gpuslice_host::layout::{LEDGER_FILE, SLICES_DIR};

/// Every process of the host, as ledger entries name them: PID in its own namespace and
/// namespace inode.
#[derive(Debug, Default)]
pub struct HostProcesses {
    known: HashSet<(u32, u64)>,
}

impl HostProcesses {
    /// Lists `/proc`.
    pub fn scan(procfs: &Procfs) -> Self {
        let mut known = HashSet::new();
        if let Ok(entries) = std::fs::read_dir(procfs.root()) {
            for e in entries.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let (Some(ns), Some(own)) = (procfs.pid_ns(pid), procfs.own_pid(pid)) else {
                    continue;
                };
                known.insert((own, ns));
            }
        }
        Self { known }
    }

    /// Whether a process with this PID runs in this namespace.
    pub fn has(&self, pid: u32, pid_ns: u64) -> bool {
        self.known.contains(&(pid, pid_ns))
    }

    /// How many processes were listed.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }
}

/// Whether the agent runs in the host's PID namespace (its `NSpid:` has one entry), where
/// it sees every process.
pub fn sees_every_process(procfs: &Procfs) -> bool {
    procfs
        .ns_pids(std::process::id())
        .is_some_and(|p| p.len() == 1)
}

/// The ledgers of the state folder: `<state_dir>/slices/<name>/ledger`, by slice name.
pub fn ledgers(state_dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(state_dir.join(SLICES_DIR)) else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let path = e.path().join(LEDGER_FILE);
            path.is_file().then_some((name, path))
        })
        .collect();
    out.sort();
    out
}

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// One line per ledger that had dead entries or could not be read.
    pub lines: Vec<String>,
    /// How many ledger entries were freed, in every ledger.
    pub entries: u64,
}

/// Sweeps the ledgers of `state_dir`. Returns one line per ledger that had dead entries
/// or could not be read (`errors_seen` keeps the latter from repeating), and how many
/// entries were freed.
pub fn sweep_ledgers(
    state_dir: &Path,
    procfs: &Procfs,
    errors_seen: &mut HashSet<String>,
) -> Swept {
    let mut lines = Vec::new();
    let mut entries: u64 = 0;
    let mut before: Option<HostProcesses> = None;
    for (name, path) in ledgers(state_dir) {
        let ledger = match Ledger::open(&path) {
            Ok(l) => l,
            Err(e) => {
                let line = format!("slice '{name}': cannot sweep {}: {e}", path.display());
                if errors_seen.insert(line.clone()) {
                    lines.push(line);
                }
                continue;
            }
        };
        let before = before.get_or_insert_with(|| HostProcesses::scan(procfs));
        let candidates: Vec<_> = ledger
            .processes()
            .into_iter()
            .filter(|p| !before.has(p.pid, p.pid_ns))
            .collect();
        if candidates.is_empty() {
            continue;
        }
        let now = HostProcesses::scan(procfs);
        let dead: HashSet<(u32, u64, u64)> = candidates
            .iter()
            .map(|p| (p.pid, p.pid_ns, p.start_time))
            .filter(|&(pid, ns, _)| !now.has(pid, ns))
            .collect();
        if dead.is_empty() {
            continue;
        }
        let swept = ledger.sweep_identities(|pid, ns, start| dead.contains(&(pid, ns, start)));
        if let Err(e) = ledger.intact() {
            // Cut short while the agent read it: whatever was read or swept is void.
            let line = format!("slice '{name}': sweep skipped: {e}");
            if errors_seen.insert(line.clone()) {
                lines.push(line);
            }
            continue;
        }
        if swept > 0 {
            entries = entries.saturating_add(u64::try_from(swept).unwrap_or(u64::MAX));
            let freed: u64 = candidates
                .iter()
                .filter(|p| dead.contains(&(p.pid, p.pid_ns, p.start_time)))
                .flat_map(|p| p.charges.iter().copied())
                .fold(0, u64::saturating_add);
            let who: Vec<String> = candidates
                .iter()
                .filter(|p| dead.contains(&(p.pid, p.pid_ns, p.start_time)))
                .map(|p| format!("PID {} of PID namespace {}", p.pid, p.pid_ns))
                .collect();
            lines.push(format!(
                "slice '{name}': freed {swept} ledger entr{} of processes that are gone ({}; {} charged)",
                if swept == 1 { "y" } else { "ies" },
                who.join(", "),
                format_size(freed),
            ));
        }
    }
    Swept { lines, entries }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_host_lists_this_process_under_its_ledger_identity() {
        let procfs = Procfs::default();
        let me = std::process::id();
        let list = HostProcesses::scan(&procfs);
        let ns = procfs.pid_ns(me).unwrap();
        let own = procfs.own_pid(me).unwrap();
        assert!(list.has(own, ns));
        assert!(!list.has(own, ns + 1));
        assert!(list.len() > 1 && !list.is_empty());
    }

    #[test]
    fn dead_entries_are_freed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let slice = dir.path().join("slices/a");
        std::fs::create_dir_all(&slice).unwrap();
        let path = slice.join(LEDGER_FILE);
        let spec = gpuslice_ledger::LedgerSpec {
            name: "a".into(),
            default_limit: Some(1 << 30),
            ..Default::default()
        };
        let ledger = Ledger::create_or_open(&path, &spec).unwrap();
        let dev = ledger.device_slot("GPU-x", Some(1 << 30)).unwrap().unwrap();
        // This process: alive.
        let mine = ledger.register().unwrap();
        ledger.try_charge(mine, dev, 100 << 20).unwrap();
        // A child that charges and is killed without unregistering.
        let child = a_killed_process_that_charged(&path);
        assert_eq!(ledger.used(dev), 300 << 20, "both charged");
        let mut seen = HashSet::new();
        let swept = sweep_ledgers(dir.path(), &Procfs::default(), &mut seen);
        assert_eq!(swept.entries, 1);
        let lines = swept.lines;
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("slice 'a'")
                && lines[0].contains(&format!("PID {child} "))
                && lines[0].contains("200MiB"),
            "{}",
            lines[0]
        );
        assert_eq!(ledger.used(dev), 100 << 20, "only the live charge is left");
        assert_eq!(
            sweep_ledgers(dir.path(), &Procfs::default(), &mut seen),
            Swept::default()
        );
        // A file that is not a ledger is named once.
        std::fs::create_dir_all(dir.path().join("slices/b")).unwrap();
        std::fs::write(dir.path().join("slices/b/ledger"), b"not a ledger").unwrap();
        let lines = sweep_ledgers(dir.path(), &Procfs::default(), &mut seen).lines;
        assert!(
            lines.len() == 1 && lines[0].contains("slices/b/ledger"),
            "{lines:?}"
        );
        assert_eq!(
            sweep_ledgers(dir.path(), &Procfs::default(), &mut seen),
            Swept::default()
        );
    }

    /// A process (this test binary, as `helper_charges_and_waits`) that registers in the
    /// ledger at `path`, charges 200 MiB and is killed. Returns its PID.
    fn a_killed_process_that_charged(path: &Path) -> u32 {
        use std::io::BufRead;
        let exe = std::env::current_exe().unwrap();
        let mut child = std::process::Command::new(exe)
            .args([
                "--exact",
                "sweep::tests::helper_charges_and_waits",
                "--nocapture",
            ])
            .env("GPUSLICE_SWEEP_HELPER_LEDGER", path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        let charged = out.lines().map_while(Result::ok).any(|l| l == "CHARGED");
        assert!(charged, "the helper never charged");
        child.kill().unwrap();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn helper_charges_and_waits() {
        let Some(path) = std::env::var_os("GPUSLICE_SWEEP_HELPER_LEDGER") else {
            return; // only a helper of the test above
        };
        let ledger = Ledger::open(Path::new(&path)).unwrap();
        let dev = ledger.device_slot("GPU-x", None).unwrap().unwrap();
        let slot = ledger.register().unwrap();
        ledger.try_charge(slot, dev, 200 << 20).unwrap();
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(b"\nCHARGED\n").unwrap();
        out.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}
