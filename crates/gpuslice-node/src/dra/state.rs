//! What the DRA plugin has prepared, on disk: one small JSON file per claim,
//! `<state dir>/<claim uid>.json`, written (atomically, through a temporary file and a
//! rename) once the claim's slices exist and removed once they are gone. It lets
//! `NodePrepareResources` and `NodeUnprepareResources` answer again, the same, after a
//! restart of the plugin, as the kubelet expects.

use std::io;
use std::path::{Path, PathBuf};

use super::claims::{AllocatedDevice, ClaimSlice};

/// A prepared claim.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PreparedClaim {
    /// The claim's namespace.
    pub namespace: String,
    /// The claim's name.
    pub name: String,
    /// The claim's UID.
    pub uid: String,
    /// The allocation results, as given back to the kubelet.
    pub devices: Vec<AllocatedDevice>,
    /// The slices made, one per GPU.
    pub slices: Vec<ClaimSlice>,
    /// The CDI device IDs of each slice, in the order of `slices`.
    pub cdi_device_ids: Vec<Vec<String>>,
}

impl PreparedClaim {
    /// The CDI device IDs of the slice on `gpu_uuid`.
    pub fn cdi_ids_of(&self, gpu_uuid: &str) -> Vec<String> {
        self.slices
            .iter()
            .zip(&self.cdi_device_ids)
            .filter(|(s, _)| s.gpu_uuid == gpu_uuid)
            .flat_map(|(_, ids)| ids.clone())
            .collect()
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("DRA state file {path}: {detail}")]
pub struct StateError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub detail: String,
}

/// The state folder.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

/// Whether `uid` is safe as a file name (UIDs are UUIDs; anything else is refused).
fn safe(uid: &str) -> bool {
    !uid.is_empty()
        && uid.len() <= 128
        && uid
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl StateDir {
    /// The state kept in `dir` (created if needed).
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(|e| StateError {
            path: dir.display().to_string(),
            detail: format!("cannot create the folder: {e}"),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, uid: &str) -> Result<PathBuf, StateError> {
        if !safe(uid) {
            return Err(StateError {
                path: self.dir.display().to_string(),
                detail: format!("claim UID {uid:?} is not a UID"),
            });
        }
        Ok(self.dir.join(format!("{uid}.json")))
    }

    /// Every claim prepared in the folder `dir` (none when it does not exist): what an
    /// earlier run left, read without creating anything.
    pub fn prepared_in(dir: &Path) -> Result<Vec<PreparedClaim>, StateError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(StateError {
                    path: dir.display().to_string(),
                    detail: e.to_string(),
                });
            }
        };
        let state = Self {
            dir: dir.to_path_buf(),
        };
        let mut claims = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(uid) = name.strip_suffix(".json")
                && let Some(claim) = state.load(uid)?
            {
                claims.push(claim);
            }
        }
        claims.sort_by(|a, b| a.uid.cmp(&b.uid));
        Ok(claims)
    }

    /// The prepared claim `uid`, if any.
    pub fn load(&self, uid: &str) -> Result<Option<PreparedClaim>, StateError> {
        let path = self.path(uid)?;
        let err = |detail: String| StateError {
            path: path.display().to_string(),
            detail,
        };
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| err(format!("unreadable: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Records `claim` as prepared.
    pub fn store(&self, claim: &PreparedClaim) -> Result<(), StateError> {
        let path = self.path(&claim.uid)?;
        let err = |detail: String| StateError {
            path: path.display().to_string(),
            detail,
        };
        let body = serde_json::to_vec_pretty(claim).map_err(|e| err(e.to_string()))?;
        let tmp = path.with_extension("json.tmp");
        // On disk before the rename, and the rename on disk before the answer: after a
        // power loss the kubelet's next call must find the claim whole, or not at all.
        let write = || -> io::Result<()> {
            let mut file = std::fs::File::create(&tmp)?;
            io::Write::write_all(&mut file, &body)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e.to_string())
        })
    }

    /// Forgets claim `uid`.
    pub fn remove(&self, uid: &str) -> Result<(), StateError> {
        let path = self.path(uid)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError {
                path: path.display().to_string(),
                detail: e.to_string(),
            }),
        }
    }
}
