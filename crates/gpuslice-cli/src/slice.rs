//! Owning a slice's ledger file for the length of a `gpuslice run`: creating it (or
//! replacing a stale one), refusing a name that is in use, and removing the file after
//! the program ends unless processes of the slice still run.
//!
//! "In use" means either that a `gpuslice run` holds the file (it keeps an exclusive
//! `flock` on it while it runs: the program may not have touched CUDA, and so not
//! registered in the ledger, yet), or that the ledger lists a process that is alive (or
//! that lives in another PID namespace, where this process cannot tell). A new ledger is
//! built under a private name, locked, and only then linked into place, so no other
//! `gpuslice run` can ever see it unlocked.
//!
//! Every file is opened with the ledger crate's checks (no link is followed, and the
//! file and its folder must be the caller's or root's): a file planted by another user
//! at the slice's name is refused, never joined, locked or removed.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use gpuslice_ledger::{Ledger, LedgerError, LedgerSpec, Liveness, Owners};
use nix::fcntl::{Flock, FlockArg};

/// How often a claim is retried when another run changes the file under us.
const ATTEMPTS: usize = 5;

/// What can go wrong with a slice's ledger file.
#[derive(Debug, thiserror::Error)]
pub enum SliceError {
    /// Another `gpuslice run` holds the slice.
    #[error(
        "slice '{name}' is in use by another gpuslice run (ledger {path}); choose another --name"
    )]
    HeldByRun {
        /// The slice.
        name: String,
        /// The ledger file.
        path: PathBuf,
    },
    /// Processes of an earlier run of the slice still run.
    #[error(
        "slice '{name}' still has running processes (PID {pids}) in ledger {path}; choose another --name"
    )]
    LiveProcesses {
        /// The slice.
        name: String,
        /// The ledger file.
        path: PathBuf,
        /// The processes, comma separated.
        pids: String,
    },
    /// The existing file is not a ledger this gpuslice can judge.
    #[error(
        "{source}; it was not replaced: remove it if nothing uses it, or choose another --name"
    )]
    Unreadable {
        /// Why it could not be read.
        source: LedgerError,
    },
    /// The ledger could not be created.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A file operation failed.
    #[error("ledger {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The file kept changing under us.
    #[error("ledger {path} keeps being replaced by someone else; choose another --name")]
    Contended {
        /// The file.
        path: PathBuf,
    },
}

/// A slice's ledger, held by this process.
#[derive(Debug)]
pub struct SliceClaim {
    path: PathBuf,
    name: String,
    lock: Flock<File>,
}

/// What became of the ledger after the program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// No process of the slice runs; the file was removed.
    Removed,
    /// These processes (PIDs) still run; the file was left in place.
    StillRunning(Vec<u32>),
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> SliceError {
    let path = path.to_path_buf();
    move |source| SliceError::Io { path, what, source }
}

fn lock(file: File) -> Result<Option<Flock<File>>, std::io::Error> {
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// Whether `file` is still the one at `path` (a link at `path` never is).
fn is_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// PIDs of the entries that are (or may be) alive.
fn live_pids(ledger: &Ledger) -> Vec<u32> {
    ledger
        .processes()
        .into_iter()
        .filter(|p| p.liveness != Liveness::Dead)
        .map(|p| p.pid)
        .collect()
}

fn join_pids(pids: &[u32]) -> String {
    pids.iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl SliceClaim {
    /// Creates the ledger at `path` from `spec` and holds it. An existing ledger whose
    /// processes are all gone is replaced; one that is held or has live processes is
    /// refused.
    pub fn claim(path: &Path, spec: &LedgerSpec) -> Result<Self, SliceError> {
        for _ in 0..ATTEMPTS {
            match Ledger::open_file(path, Owners::Mine) {
                Ok(file) => Self::remove_stale(file, path, &spec.name)?,
                Err(LedgerError::Io { source, .. }) if source.kind() == ErrorKind::NotFound => {
                    if let Some(claim) = Self::create(path, spec)? {
                        return Ok(claim);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(SliceError::Contended {
            path: path.to_path_buf(),
        })
    }

    /// Removes the existing ledger `file` (at `path`) if nothing uses it.
    fn remove_stale(file: File, path: &Path, name: &str) -> Result<(), SliceError> {
        let Some(held) = lock(file).map_err(io(path, "locking"))? else {
            return Err(SliceError::HeldByRun {
                name: name.into(),
                path: path.to_path_buf(),
            });
        };
        if !is_at(&held, path) {
            return Ok(()); // Replaced meanwhile: look again.
        }
        let ledger = Ledger::open(path).map_err(|source| SliceError::Unreadable { source })?;
        let pids = live_pids(&ledger);
        // Cut short while read (a process of the slice did it): the list is void.
        ledger
            .intact()
            .map_err(|source| SliceError::Unreadable { source })?;
        if !pids.is_empty() {
            return Err(SliceError::LiveProcesses {
                name: name.into(),
                path: path.to_path_buf(),
                pids: join_pids(&pids),
            });
        }
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(path, "removing the stale ledger")(e)),
        }
    }

    /// Builds the ledger under a private name, locks it, and links it into place.
    /// `None` when someone else's file appeared at `path` first.
    fn create(path: &Path, spec: &LedgerSpec) -> Result<Option<Self>, SliceError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let private = dir.join(format!(".{file_name}.claim.{}", std::process::id()));
        let _ = fs::remove_file(&private);
        let result = (|| {
            drop(Ledger::create_or_open(&private, spec)?);
            let file = Ledger::open_file(&private, Owners::Mine)?;
            let lock = lock(file)
                .map_err(io(&private, "locking"))?
                .ok_or_else(|| SliceError::Contended {
                    path: path.to_path_buf(),
                })?;
            match fs::hard_link(&private, path) {
                Ok(()) => Ok(Some(Self {
                    path: path.to_path_buf(),
                    name: spec.name.clone(),
                    lock,
                })),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(io(path, "publishing")(e)),
            }
        })();
        let _ = fs::remove_file(&private);
        result
    }

    /// The ledger file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The slice's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Called after the program ended: sweeps dead processes, then removes the ledger
    /// unless some process of the slice still runs.
    pub fn finish(self) -> Result<Finish, SliceError> {
        if !is_at(&self.lock, &self.path) {
            // Someone removed or replaced the file; it is not ours to touch any more.
            return Ok(Finish::Removed);
        }
        let ledger = Ledger::open(&self.path)?;
        ledger.sweep_dead();
        let pids = live_pids(&ledger);
        // Cut short while read (a process of the slice did it): the list is void, and
        // the file is left where it is.
        ledger.intact()?;
        drop(ledger);
        if !pids.is_empty() {
            return Ok(Finish::StillRunning(pids));
        }
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(Finish::Removed),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Finish::Removed),
            Err(e) => Err(io(&self.path, "removing")(e)),
        }
    }

    /// Removes the ledger without looking at it (the program never started).
    pub fn abandon(self) {
        if is_at(&self.lock, &self.path) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn spec(name: &str) -> LedgerSpec {
        LedgerSpec {
            name: name.into(),
            default_limit: Some(4 * GIB),
            devices: Vec::new(),
            compute: None,
        }
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn claim_creates_and_finish_removes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.ledger");
        // A folder that is not the default one is never created.
        let err = SliceClaim::claim(&path, &spec("a"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sub") && err.contains("does not exist"),
            "{err}"
        );
        assert!(!dir.path().join("sub").exists());
        fs::create_dir(dir.path().join("sub")).unwrap();
        let claim = SliceClaim::claim(&path, &spec("a")).unwrap();
        assert_eq!(claim.name(), "a");
        let ledger = Ledger::open(claim.path()).unwrap();
        assert_eq!(ledger.name(), "a");
        assert_eq!(ledger.default_limit(), Some(4 * GIB));
        drop(ledger);
        // Only the ledger itself is in the folder: no private file is left.
        assert_eq!(entries(&dir.path().join("sub")), ["a.ledger"]);
        assert_eq!(claim.finish().unwrap(), Finish::Removed);
        assert!(!path.exists());
    }

    #[test]
    fn a_link_at_the_slices_name_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = dir.path().join("elsewhere.ledger");
        drop(Ledger::create_or_open(&elsewhere, &spec("x")).unwrap());
        let path = dir.path().join("a.ledger");
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        let err = SliceClaim::claim(&path, &spec("a"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a.ledger") && err.contains("symbolic link"),
            "{err}"
        );
        assert!(
            fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(elsewhere.exists());
    }

    #[test]
    fn a_held_slice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ledger");
        let first = SliceClaim::claim(&path, &spec("a")).unwrap();
        let err = SliceClaim::claim(&path, &spec("a")).unwrap_err();
        assert!(matches!(err, SliceError::HeldByRun { .. }), "{err}");
        assert!(err.to_string().contains("--name"), "{err}");
        first.abandon();
        assert!(!path.exists());
        SliceClaim::claim(&path, &spec("a")).unwrap().abandon();
    }

    #[test]
    fn live_processes_keep_the_ledger_and_block_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ledger");
        let claim = SliceClaim::claim(&path, &spec("a")).unwrap();
        // This test process joins the slice, as a descendant of the program would.
        let ledger = Ledger::open(&path).unwrap();
        let slot = ledger.register().unwrap();
        let me = std::process::id();
        assert_eq!(claim.finish().unwrap(), Finish::StillRunning(vec![me]));
        assert!(path.exists());

        let err = SliceClaim::claim(&path, &spec("a")).unwrap_err();
        assert!(matches!(err, SliceError::LiveProcesses { .. }), "{err}");
        assert!(err.to_string().contains(&me.to_string()), "{err}");

        // Once the process is gone, the stale ledger is replaced by a fresh one.
        ledger.unregister(slot);
        let mut fresh = spec("a");
        fresh.default_limit = Some(GIB);
        let claim = SliceClaim::claim(&path, &fresh).unwrap();
        assert_eq!(Ledger::open(&path).unwrap().default_limit(), Some(GIB));
        claim.abandon();
    }

    #[test]
    fn a_foreign_file_is_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.ledger");
        fs::write(&path, b"not a ledger at all").unwrap();
        let err = SliceClaim::claim(&path, &spec("a")).unwrap_err();
        assert!(matches!(err, SliceError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("a.ledger"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"not a ledger at all");
    }
}
