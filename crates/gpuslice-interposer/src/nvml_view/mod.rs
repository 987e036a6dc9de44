//! The NVML view: inside a slice, NVML tells the truth about the slice on every driver
//! branch (see `docs/nvml-view.md`).
//!
//! * **Memory** (`nvmlDeviceGetMemoryInfo`, `_v2`): total = the slice's limit on that GPU,
//!   used = the slice's usage from its ledger (contexts included), free = what is left
//!   (never more than the GPU really has free); `reserved` is 0.
//! * **Processes, utilization samples, accounting, encoder/FBC sessions**: only the
//!   container's own processes, under the PIDs the container sees. With the host agent
//!   (`GPUSLICE_AGENT_SOCKET`) every answer comes from the agent, which read it on the
//!   host. Without it, the driver's own in-namespace answer is used, cut down to processes
//!   that are live members of this slice per its ledger; where the driver shows host PIDs
//!   (drivers before 535.113) nothing is shown rather than something wrong; per-process
//!   memory the driver reports as 0 or not available (535.x/550.x) is the ledger's charge.
//!   The two sources are never mixed in one answer, so nothing is translated twice.
//! * **GPU utilization** (`nvmlDeviceGetUtilizationRates`): the slice's own share: the sum
//!   of its processes' latest SM (and memory) utilization samples, at most 100.
//!
//! A process outside any slice gets the real functions (the exported hooks forward to
//! them); a process whose slice configuration is broken gets `NVML_ERROR_NO_PERMISSION`.

//!
//! Files: `source.rs` (the hooks' shared opening, and where an answer comes from),
//! `protocol.rs` (NVML's list protocols), and the hooks by subject: `memory.rs`,
//! `processes.rs`, `utilization.rs`, `accounting.rs`.

pub mod accounting;
pub mod memory;
pub mod processes;
mod protocol;
mod source;
pub mod utilization;
