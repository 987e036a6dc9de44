//! The host-side files a spec mounts, created by `gpuslice cdi generate` before it writes
//! the spec (so a container started the moment the spec appears finds them):
//!
//! * `<state-dir>/ld.so.preload`: names the interposer's container path (mode 0644);
//! * `<state-dir>/slices/<name>/ledger`: each slice's ledger, created with the slice's
//!   memory and compute limits and mode 0666, so that processes of any user in any
//!   container can join it;
//!   its folder stays 0755, so only the host can create or remove ledgers;
//! * `<state-dir>/config/<name>.env`: each slice's pinned configuration (mode 0644),
//!   mounted read-only at `/run/gpuslice/slice.env`; outside the slices' folders,
//!   which containers mount read-write;
//! * `<state-dir>/gpus/`: the host-wide per-GPU folder, 1777 like `/tmp`, because the
//!   processes of every slice create their files there;
//! * the agent's folder, 0755, if missing (the agent owns it once it runs).
//!
//! A slice whose ledger exists with the same limits keeps it, and with it the usage of
//! the processes running in it. A ledger with other limits is replaced only when no
//! process entry is left in it after sweeping the dead; otherwise generation stops, since
//! replacing it would let old and new processes each use a full slice.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use gpuslice_ledger::{Ledger, LedgerSpec};

use super::edits::{pinned_config_text, preload_text};
use super::slices::Slice;
use super::spec::write_atomic;
use super::{CdiError, LEDGER_FILE};

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CdiError {
    let path = path.to_path_buf();
    move |source| CdiError::Io { path, what, source }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), CdiError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(io(path, "setting its mode"))
}

/// Creates `dir` (and its parents) if missing, giving a new folder `mode`.
fn ensure_dir(dir: &Path, mode: u32) -> Result<(), CdiError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io(dir, "creating the folder"))?;
    set_mode(dir, mode)
}

/// The ledger a slice needs: its name and the limit on each of its GPUs.
pub fn ledger_spec(slice: &Slice) -> LedgerSpec {
    LedgerSpec {
        name: slice.name.clone(),
        default_limit: None,
        devices: slice
            .gpus
            .iter()
            .map(|g| (g.uuid.clone(), slice.memory))
            .collect(),
        compute: slice.compute.map(|hard| (hard, slice.burst)),
    }
}

fn same_limits(ledger: &Ledger, spec: &LedgerSpec) -> bool {
    let mut have: Vec<(String, u64)> = ledger
        .devices()
        .into_iter()
        .map(|d| (d.uuid, d.limit))
        .collect();
    let mut want = spec.devices.clone();
    have.sort();
    want.sort();
    ledger.name() == spec.name
        && ledger.default_limit() == spec.default_limit
        && ledger.compute_limits() == spec.compute
        && have == want
}

/// What happened to a slice's ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LedgerOutcome {
    /// There was none; it was created.
    Created,
    /// It existed with the same limits and was kept.
    Kept,
    /// It existed with other limits and no processes, and was replaced.
    Replaced,
}

/// Makes sure `path` is a ledger for `spec` (see the module documentation).
pub fn ensure_ledger(
    slice: &str,
    path: &Path,
    spec: &LedgerSpec,
) -> Result<LedgerOutcome, CdiError> {
    let ledger_error = |source| CdiError::Ledger {
        slice: slice.to_string(),
        source,
    };
    let outcome = if path.exists() {
        let existing = Ledger::open(path).map_err(ledger_error)?;
        let same = same_limits(&existing, spec);
        // A ledger cut short while read (by a process of the slice) is void: refuse
        // rather than judge it.
        existing.intact().map_err(ledger_error)?;
        if same {
            return Ok(LedgerOutcome::Kept);
        }
        existing.sweep_dead();
        let processes = existing.processes();
        existing.intact().map_err(ledger_error)?;
        if !processes.is_empty() {
            return Err(CdiError::LedgerInUse {
                slice: slice.to_string(),
                path: path.to_path_buf(),
                processes: processes
                    .iter()
                    .map(|p| p.pid.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        drop(existing);
        LedgerOutcome::Replaced
    } else {
        LedgerOutcome::Created
    };
    // Build the new ledger under a private name and move it into place in one step.
    let tmp: PathBuf = path.with_file_name(format!(".{LEDGER_FILE}.{}.new", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let built = Ledger::create_or_open(&tmp, spec)
        .map_err(ledger_error)
        .and_then(|ledger| {
            drop(ledger);
            set_mode(&tmp, 0o666)?;
            fs::rename(&tmp, path).map_err(io(path, "moving the new ledger into place"))
        });
    if built.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    built.map(|()| outcome)
}

/// The host folders and files of a generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateLayout {
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--agent-dir`.
    pub agent_dir: PathBuf,
}

impl StateLayout {
    /// `<state-dir>/ld.so.preload`.
    pub fn preload(&self) -> PathBuf {
        self.state_dir.join("ld.so.preload")
    }
    /// `<state-dir>/slices`.
    pub fn slices_dir(&self) -> PathBuf {
        self.state_dir.join("slices")
    }
    /// `<state-dir>/config`.
    pub fn configs_dir(&self) -> PathBuf {
        self.state_dir.join("config")
    }
    /// `<state-dir>/config/<name>.env`.
    pub fn pinned_config(&self, slice: &str) -> PathBuf {
        self.configs_dir().join(format!("{slice}.env"))
    }
    /// `<state-dir>/gpus`.
    pub fn gpus_dir(&self) -> PathBuf {
        self.state_dir.join("gpus")
    }
    /// `<state-dir>/slices/<name>/ledger`.
    pub fn ledger(&self, slice: &str) -> PathBuf {
        self.slices_dir().join(slice).join(LEDGER_FILE)
    }
}

/// Creates everything the spec mounts; returns one line per slice ledger for the report.
pub fn prepare(layout: &StateLayout, slices: &[Slice]) -> Result<Vec<String>, CdiError> {
    ensure_dir(&layout.state_dir, 0o755)?;
    write_atomic(&layout.preload(), &preload_text(), 0o644)?;
    ensure_dir(&layout.gpus_dir(), 0o1777)?;
    // A folder that existed keeps its owner's mode, but this one must stay shared.
    set_mode(&layout.gpus_dir(), 0o1777)?;
    ensure_dir(&layout.agent_dir, 0o755)?;
    ensure_dir(&layout.slices_dir(), 0o755)?;
    ensure_dir(&layout.configs_dir(), 0o755)?;
    let mut report = Vec::new();
    for slice in slices {
        write_atomic(
            &layout.pinned_config(&slice.name),
            &pinned_config_text(slice),
            0o644,
        )?;
        let dir = layout.slices_dir().join(&slice.name);
        ensure_dir(&dir, 0o755)?;
        let path = layout.ledger(&slice.name);
        let outcome = ensure_ledger(&slice.name, &path, &ledger_spec(slice))?;
        let verb = match outcome {
            LedgerOutcome::Created => "created",
            LedgerOutcome::Kept => "kept",
            LedgerOutcome::Replaced => "replaced (the limits changed)",
        };
        report.push(format!(
            "ledger of {}: {} {verb}",
            slice.name,
            path.display()
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdi::host::HostGpu;
    use std::os::unix::fs::MetadataExt;

    const GIB: u64 = 1 << 30;
    const U0: &str = "GPU-aaaa1111-0000-4000-8000-000000000000";

    fn slice(memory: u64) -> Slice {
        Slice {
            name: "s1".into(),
            gpus: vec![HostGpu {
                index: 0,
                uuid: U0.into(),
                minor: 0,
            }],
            memory,
            compute: None,
            burst: None,
        }
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn prepare_creates_every_mounted_path_with_its_mode() {
        let root = tempfile::tempdir().unwrap();
        let layout = StateLayout {
            state_dir: root.path().join("state"),
            agent_dir: root.path().join("run/agent"),
        };
        let report = prepare(&layout, &[slice(8 * GIB)]).unwrap();
        assert_eq!(
            fs::read_to_string(layout.preload()).unwrap(),
            "/usr/local/lib/gpuslice/libgpuslice.so\n"
        );
        assert_eq!(mode(&layout.preload()), 0o644);
        assert_eq!(mode(&layout.gpus_dir()), 0o1777);
        assert_eq!(mode(&layout.agent_dir), 0o755);
        assert_eq!(mode(&layout.slices_dir().join("s1")), 0o755);
        // The pinned configuration: read-only for containers, outside the slice's
        // (read-write) folder.
        let pinned = layout.pinned_config("s1");
        assert_eq!(mode(&pinned), 0o644);
        assert!(!pinned.starts_with(layout.slices_dir()));
        let text = fs::read_to_string(&pinned).unwrap();
        assert!(
            text.contains("\nGPUSLICE_MEMORY=") && text.contains("GPUSLICE_LEDGER="),
            "{text}"
        );
        let ledger_path = layout.ledger("s1");
        assert_eq!(mode(&ledger_path), 0o666);
        let ledger = Ledger::open(&ledger_path).unwrap();
        assert_eq!(ledger.name(), "s1");
        assert_eq!(ledger.default_limit(), None);
        let devices = ledger.devices();
        assert_eq!(devices.len(), 1);
        assert_eq!((devices[0].uuid.as_str(), devices[0].limit), (U0, 8 * GIB));
        assert!(report[0].contains("created"), "{report:?}");
        // Nothing else is left in the slice's folder.
        assert_eq!(
            fs::read_dir(ledger_path.parent().unwrap()).unwrap().count(),
            1
        );

        // Running again keeps the ledger (and its usage).
        let slot = ledger.register().unwrap();
        ledger.try_charge(slot, 0, GIB).unwrap();
        let report = prepare(&layout, &[slice(8 * GIB)]).unwrap();
        assert!(report[0].contains("kept"), "{report:?}");
        assert_eq!(Ledger::open(&ledger_path).unwrap().used(0), GIB);

        // Other limits while a process is registered: refused, naming the slice.
        let err = prepare(&layout, &[slice(4 * GIB)]).unwrap_err().to_string();
        assert!(
            err.contains("s1") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        assert_eq!(
            Ledger::open(&ledger_path).unwrap().devices()[0].limit,
            8 * GIB
        );

        // Once the process left, the ledger is replaced with the new limits.
        ledger.unregister(slot);
        drop(ledger);
        let report = prepare(&layout, &[slice(4 * GIB)]).unwrap();
        assert!(report[0].contains("replaced"), "{report:?}");
        let ledger = Ledger::open(&ledger_path).unwrap();
        assert_eq!(ledger.devices()[0].limit, 4 * GIB);
        assert_eq!(ledger.used(0), 0);
        assert_eq!(mode(&ledger_path), 0o666);
    }

    #[test]
    fn compute_limits_are_part_of_the_ledger() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("ledger");
        let mut s = slice(GIB);
        s.compute = Some(30);
        s.burst = Some(60);
        let outcome = ensure_ledger("s1", &path, &ledger_spec(&s)).unwrap();
        assert_eq!(outcome, LedgerOutcome::Created);
        assert_eq!(
            Ledger::open(&path).unwrap().compute_limits(),
            Some((30, Some(60)))
        );
        assert_eq!(
            ensure_ledger("s1", &path, &ledger_spec(&s)).unwrap(),
            LedgerOutcome::Kept
        );
        s.burst = None;
        assert_eq!(
            ensure_ledger("s1", &path, &ledger_spec(&s)).unwrap(),
            LedgerOutcome::Replaced
        );
        assert_eq!(
            Ledger::open(&path).unwrap().compute_limits(),
            Some((30, None))
        );
    }

    #[test]
    fn a_foreign_file_in_the_ledgers_place_is_not_replaced() {
        let root = tempfile::tempdir().unwrap();
        let path = root.path().join("ledger");
        fs::write(&path, "not a ledger at all, but long enough").unwrap();
        let err = ensure_ledger("s1", &path, &ledger_spec(&slice(GIB)))
            .unwrap_err()
            .to_string();
        assert!(err.contains("s1") && err.contains("ledger"), "{err}");
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "not a ledger at all, but long enough"
        );
    }
}
