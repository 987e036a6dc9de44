//! The seam between the DRA plugin and the code that makes slices on the host: a
//! [`ClaimSliceProvider`] makes the slice of one claim on one GPU (its ledger, pinned
//! `slice.env` and CDI spec) and names its CDI devices, and removes it again. The real
//! provider comes from the shared host crate; [`TestClaimSlices`] stands in for it in
//! tests, writing one small file per slice so that tests can see what exists.

use std::path::{Path, PathBuf};

use super::claims::ClaimSlice;
use crate::provider::ProviderError;

/// Makes and removes the slices of claims. Called from a blocking thread. Both calls
/// must be idempotent: the kubelet retries, and the plugin may restart in between.
pub trait ClaimSliceProvider: Send + Sync + std::fmt::Debug {
    /// Makes `slice` ready on the host (or finds it made) and returns the fully qualified
    /// CDI device IDs a container using it gets.
    fn make(&self, slice: &ClaimSlice) -> Result<Vec<String>, ProviderError>;
    /// Removes `slice` from the host; a slice that does not exist is no error.
    fn remove(&self, slice: &ClaimSlice) -> Result<(), ProviderError>;
}

/// The CDI kind of the test provider's devices.
pub const TEST_CDI_KIND: &str = "gpuslice.io/claim";

/// A [`ClaimSliceProvider`] for tests: each slice is a JSON file
/// `<dir>/<claim uid>_<gpu uuid>.json` holding the [`ClaimSlice`].
#[derive(Debug, Clone)]
pub struct TestClaimSlices {
    dir: PathBuf,
}

impl TestClaimSlices {
    /// A provider keeping its slices in `dir` (created if needed).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, slice: &ClaimSlice) -> PathBuf {
        self.dir
            .join(format!("{}_{}.json", slice.claim_uid, slice.gpu_uuid))
    }

    /// The slices that exist now.
    pub fn slices(&self) -> Vec<ClaimSlice> {
        let mut all: Vec<ClaimSlice> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read(e.path()).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        all.sort_by(|a, b| (&a.claim_uid, &a.gpu_uuid).cmp(&(&b.claim_uid, &b.gpu_uuid)));
        all
    }
}

impl ClaimSliceProvider for TestClaimSlices {
    fn make(&self, slice: &ClaimSlice) -> Result<Vec<String>, ProviderError> {
        let path = self.path(slice);
        let body = serde_json::to_vec(slice)
            .map_err(|e| ProviderError::with_source("cannot encode the slice", e))?;
        std::fs::write(&path, body).map_err(|e| {
            ProviderError::with_source(format!("cannot write {}", path.display()), e)
        })?;
        Ok(vec![format!(
            "{TEST_CDI_KIND}={}-{}",
            slice.claim_uid, slice.gpu_uuid
        )])
    }

    fn remove(&self, slice: &ClaimSlice) -> Result<(), ProviderError> {
        let path = self.path(slice);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ProviderError::with_source(
                format!("cannot remove {}", path.display()),
                e,
            )),
        }
    }
}
