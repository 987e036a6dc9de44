//! The host file layout, defined in this one place: where the state folder keeps the
//! slices' ledgers, their pinned configurations, the per-GPU folder and the
//! `ld.so.preload` file that CDI specs mount, where the agent's socket is, where CDI specs
//! go, and where each of these appears inside a container. The CLI (`gpuslice cdi`,
//! `gpuslice agent`), the agent (sweeping and enforcing the state folder's slices) and the
//! node plugin all take their paths from [`HostLayout`] and these names.

use std::path::{Path, PathBuf};

/// Default state folder (`--state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/gpuslice";
/// Default folder of the agent's socket (`--agent-dir`).
pub const DEFAULT_AGENT_DIR: &str = "/run/gpuslice/agent";
/// The folder `gpuslice cdi generate` writes its spec to by default.
pub const DEFAULT_OUTPUT_DIR: &str = "/etc/cdi";
/// The other folder runtimes read specs from, by default (the node plugin's).
pub const DYNAMIC_OUTPUT_DIR: &str = "/var/run/cdi";

/// Below the state folder: one folder per slice, holding its ledger.
pub const SLICES_DIR: &str = "slices";
/// A slice's ledger file, in its folder.
pub const LEDGER_FILE: &str = "ledger";
/// Below the state folder: each slice's pinned configuration, `<name>.env`.
pub const CONFIG_DIR: &str = "config";
/// Below the state folder: the host-wide per-GPU folder.
pub const GPUS_DIR: &str = "gpus";
/// Below the state folder: the `ld.so.preload` file mounted into containers.
pub const PRELOAD_FILE: &str = "ld.so.preload";
/// Below the state folder: the interposer, copied there by the node plugin so that a
/// container runtime on the host can mount it.
pub const LIB_DIR: &str = "lib";
/// The agent's socket, in the agent's folder.
pub const AGENT_SOCKET_FILE: &str = "agent.sock";

/// The interposer in the container.
pub const CONTAINER_LIB: &str = "/usr/local/lib/gpuslice/libgpuslice.so";
/// The dynamic loader's preload list in the container.
pub const CONTAINER_PRELOAD: &str = "/etc/ld.so.preload";
/// The slice's folder in the container (the ledger lives there).
pub const CONTAINER_SLICE_DIR: &str = "/run/gpuslice/slice";
/// The slice's ledger in the container.
pub const CONTAINER_LEDGER: &str = "/run/gpuslice/slice/ledger";
/// The agent's folder in the container.
pub const CONTAINER_AGENT_DIR: &str = "/run/gpuslice/agent";
/// The agent's socket in the container.
pub const CONTAINER_AGENT_SOCKET: &str = gpuslice_agent_protocol::DEFAULT_SOCKET;
/// The host-wide per-GPU folder in the container.
pub const CONTAINER_GPU_DIR: &str = "/run/gpuslice/gpus";
/// The pinned configuration in the container.
pub const CONTAINER_PINNED_CONFIG: &str = gpuslice_config::PINNED_CONFIG;

/// The host folders and files of gpuslice's slices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLayout {
    /// The state folder (`--state-dir`).
    pub state_dir: PathBuf,
    /// The agent's folder (`--agent-dir`).
    pub agent_dir: PathBuf,
}

impl Default for HostLayout {
    fn default() -> Self {
        Self::new(DEFAULT_STATE_DIR, DEFAULT_AGENT_DIR)
    }
}

impl HostLayout {
    /// The layout of these folders.
    pub fn new(state_dir: impl Into<PathBuf>, agent_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            agent_dir: agent_dir.into(),
        }
    }

    /// `<state-dir>/ld.so.preload`.
    pub fn preload(&self) -> PathBuf {
        self.state_dir.join(PRELOAD_FILE)
    }
    /// `<state-dir>/slices`.
    pub fn slices_dir(&self) -> PathBuf {
        slices_dir(&self.state_dir)
    }
    /// `<state-dir>/slices/<name>`.
    pub fn slice_dir(&self, slice: &str) -> PathBuf {
        self.slices_dir().join(slice)
    }
    /// `<state-dir>/slices/<name>/ledger`.
    pub fn ledger(&self, slice: &str) -> PathBuf {
        self.slice_dir(slice).join(LEDGER_FILE)
    }
    /// `<state-dir>/config`.
    pub fn configs_dir(&self) -> PathBuf {
        configs_dir(&self.state_dir)
    }
    /// `<state-dir>/config/<name>.env`.
    pub fn pinned_config(&self, slice: &str) -> PathBuf {
        self.configs_dir().join(format!("{slice}.env"))
    }
    /// `<state-dir>/gpus`.
    pub fn gpus_dir(&self) -> PathBuf {
        self.state_dir.join(GPUS_DIR)
    }
    /// `<state-dir>/lib`.
    pub fn lib_dir(&self) -> PathBuf {
        self.state_dir.join(LIB_DIR)
    }
    /// `<agent-dir>/agent.sock`.
    pub fn agent_socket(&self) -> PathBuf {
        self.agent_dir.join(AGENT_SOCKET_FILE)
    }
}

/// `<state_dir>/slices`, for readers that know only the state folder (the agent).
pub fn slices_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SLICES_DIR)
}

/// `<state_dir>/config`, for readers that know only the state folder (the agent).
pub fn configs_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(CONFIG_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_below_its_folder() {
        let l = HostLayout::default();
        assert_eq!(
            l.ledger("a"),
            Path::new("/var/lib/gpuslice/slices/a/ledger")
        );
        assert_eq!(
            l.pinned_config("a"),
            Path::new("/var/lib/gpuslice/config/a.env")
        );
        assert_eq!(l.preload(), Path::new("/var/lib/gpuslice/ld.so.preload"));
        assert_eq!(l.gpus_dir(), Path::new("/var/lib/gpuslice/gpus"));
        assert_eq!(
            l.agent_socket(),
            Path::new(gpuslice_agent_protocol::DEFAULT_SOCKET)
        );
        // The pinned configuration stays out of the slices' (read-write) folders.
        assert!(!l.pinned_config("a").starts_with(l.slices_dir()));
    }
}
