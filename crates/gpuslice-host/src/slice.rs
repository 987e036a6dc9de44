//! The slice: THE one type that says what a slice is on a host ([`Slice`]: its name, its
//! GPUs, the memory limit on each, its compute share). Everything else a slice needs is
//! derived from it by the functions here: the ledger to create ([`Slice::ledger_spec`],
//! a `gpuslice_ledger::LedgerSpec`), the environment and pinned configuration its
//! processes read ([`Slice::env`], [`Slice::pinned_config_text`]; the interposer parses
//! them into a `gpuslice_config::SliceConfig`), and its line in reports.
//!
//! `gpuslice cdi generate` makes slices from its flags (`crate::cdi::slices`), the node
//! plugin from the concrete slices of its inventory (`crate::provision`).

use gpuslice_config::compute::{ENV_COMPUTE, ENV_COMPUTE_BURST};
use gpuslice_config::{
    ComputeShares, DeviceSelector, ENV_GPU_DIR, ENV_LEDGER, ENV_MEMORY, ENV_SLICE_NAME,
    MemoryLimits, format_size,
};
use gpuslice_ledger::LedgerSpec;

use crate::gpus::HostGpu;
use crate::layout::{
    CONTAINER_AGENT_SOCKET, CONTAINER_GPU_DIR, CONTAINER_LEDGER, CONTAINER_PINNED_CONFIG,
};

/// The longest slice name.
pub const MAX_NAME_LEN: usize = 63;

/// The CDI kind of gpuslice's slice devices.
pub const KIND: &str = "gpuslice.io/slice";

/// The variable that names the agent's socket.
pub const ENV_AGENT_SOCKET: &str = gpuslice_agent_protocol::ENV_SOCKET;

/// A slice with its GPUs found on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// The slice's name (its CDI device name, its folder and ledger name).
    pub name: String,
    /// Its GPUs (UUIDs canonical), in the order given.
    pub gpus: Vec<HostGpu>,
    /// Memory limit on each GPU, in bytes.
    pub memory: u64,
    /// Compute limits (`None`: none).
    pub compute: Option<ComputeShares>,
}

/// Whether `name` can name a slice: 1 to 63 characters of `A-Z a-z 0-9 . _ -`, starting
/// and ending with a letter or digit. That is a valid CDI device name (which also allows
/// ':'), a file name, and a `gpuslice run --name`.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Slice {
    /// The ledger the slice needs: its name and the limit on each of its GPUs.
    pub fn ledger_spec(&self) -> LedgerSpec {
        LedgerSpec {
            name: self.name.clone(),
            default_limit: None,
            devices: self
                .gpus
                .iter()
                .map(|g| (g.uuid.clone(), self.memory))
                .collect(),
            compute: self.compute.map(ComputeShares::to_pair),
        }
    }

    /// The `GPUSLICE_MEMORY` value: the limit keyed by each GPU's UUID, because the
    /// container numbers its GPUs from 0 whatever their host index.
    pub fn memory_env(&self) -> String {
        MemoryLimits {
            all_devices: None,
            per_device: self
                .gpus
                .iter()
                .map(|g| (DeviceSelector::Uuid(g.uuid.clone()), self.memory))
                .collect(),
        }
        .to_env_value()
    }

    /// The environment of the slice's containers, as `NAME=value`.
    pub fn env(&self) -> Vec<String> {
        let mut env = vec![
            format!("{ENV_SLICE_NAME}={}", self.name),
            format!("{ENV_MEMORY}={}", self.memory_env()),
        ];
        if let Some(c) = self.compute {
            env.push(format!("{ENV_COMPUTE}={}", c.hard));
            if let Some(b) = c.burst {
                env.push(format!("{ENV_COMPUTE_BURST}={b}"));
            }
        }
        env.extend([
            format!("{ENV_LEDGER}={CONTAINER_LEDGER}"),
            format!("{ENV_GPU_DIR}={CONTAINER_GPU_DIR}"),
            format!("{ENV_AGENT_SOCKET}={CONTAINER_AGENT_SOCKET}"),
        ]);
        env
    }

    /// The slice's pinned configuration file (`<state-dir>/config/<name>.env`, mounted
    /// read-only at [`CONTAINER_PINNED_CONFIG`]): the same variables as its environment,
    /// which the interposer then ignores, so that a process cannot drop or change its
    /// limits.
    pub fn pinned_config_text(&self) -> String {
        let mut text = format!(
            "# gpuslice slice {}: mounted read-only at {}\n",
            self.name, CONTAINER_PINNED_CONFIG
        );
        for line in self.env() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }

    /// One line for reports: name, GPUs and limits.
    pub fn describe(&self) -> String {
        let gpus = self
            .gpus
            .iter()
            .map(|g| format!("{} ({})", g.index, g.uuid))
            .collect::<Vec<_>>()
            .join(", ");
        let mut text = format!(
            "{KIND}={}: {} on GPU {gpus}",
            self.name,
            format_size(self.memory)
        );
        if let Some(c) = self.compute {
            text.push_str(&format!(", compute {c}"));
        }
        text
    }
}
