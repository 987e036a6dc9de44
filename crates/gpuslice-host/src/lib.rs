//! gpuslice's node-level logic, shared by the `gpuslice` CLI, the host agent and the
//! Kubernetes node plugin (`gpuslice node`). Everything here is synchronous; the async
//! device plugin lives in `gpuslice-node` and calls into this crate.
//!
//! * [`slice`]: **the one slice type, [`Slice`]** (name, GPUs, memory limit on each,
//!   compute share). A slice's ledger (`gpuslice_ledger::LedgerSpec`), its environment
//!   and pinned configuration (which the interposer reads into a
//!   `gpuslice_config::SliceConfig`) are derived from it by functions, never kept apart.
//! * [`layout`]: the host file layout, [`HostLayout`]: the state folder's ledgers, pinned
//!   configurations, per-GPU folder and `ld.so.preload`, the agent's socket, and their
//!   paths inside a container. Defined here only.
//! * [`gpus`]: the host's GPUs and resolving `--gpus`-style lists (indices, UUIDs, UUID
//!   prefixes) against them.
//! * [`listing`]: the host's slices as their ledgers hold them (`gpuslice status`, the
//!   agent's `/metrics`).
//! * [`library`]: finding the interposer, `libgpuslice.so`.
//! * [`cdi`]: the slice catalogue (`--slice`, `--slices-file`), CDI spec writing, and the
//!   state folder's files the specs mount.
//! * [`doctor`]: `gpuslice doctor`'s checks of a host (driver, container engines, CDI
//!   specs, agent, ledger folders) and its report.
//! * [`provision`]: making one slice ready for the node plugin (ledger, pinned
//!   configuration, a CDI spec of its own) and what a container given it gets.

pub mod cdi;
pub mod doctor;
pub mod gpus;
pub mod layout;
pub mod library;
pub mod listing;
pub mod provision;
pub mod slice;

pub use layout::HostLayout;
pub use slice::Slice;
