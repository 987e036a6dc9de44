//! The `gpuslice` command's work, as a library that the thin binary in `main.rs` calls:
//! `gpuslice run` runs a program in a new GPU memory slice (the interposer preloaded, a
//! ledger held for the slice, signals forwarded, the exit code passed through),
//! `gpuslice status` shows the slices of this host (`gpuslice top` live), `gpuslice cdi` offers slices to
//! containers as CDI devices, and `gpuslice doctor` checks the host. The node-level work (slices, the host file layout, GPU
//! resolution, CDI specs) is the `gpuslice-host` crate's; this crate parses flags and
//! prints.

pub mod agent;
pub mod cdi;
pub mod cli;
pub mod doctor;
pub mod node;
pub mod plan;
pub mod run;
pub mod slice;
pub mod status;
pub mod supervise;
pub mod top;
