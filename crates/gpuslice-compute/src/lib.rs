//! Compute slices: holding a slice to its share of a GPU's time.
//!
//! The slice's GPU busy time is measured from timing events recorded after each launch
//! on the launch's stream ([`meter`]), charged to a budget shared by every process of
//! the slice ([`budget`], a virtual-scheduling bucket over one atomic word in the
//! slice's ledger), and launches wait at a [`gate`] while the slice is over its share.
//! Slices on one GPU take turns through a host-wide per-GPU file ([`turns`]), so that
//! one slice's busy time never includes another's, and so that a slice may burst to its
//! soft limit only while no other slice wants the GPU.
//!
//! The logic is written against a [`clock::Clock`] and a [`meter::Timeline`] of events,
//! so it runs unchanged on the CUDA driver, the project's fake driver, and the
//! simulated GPU in [`sim`] that the tests drive with a virtual clock.

pub mod budget;
pub mod clock;
pub mod gate;
pub mod meter;
#[cfg(test)]
pub mod sim;
#[cfg(test)]
mod sim_tests;
pub mod turns;

pub use budget::Budget;
pub use clock::{Clock, MonotonicClock};
pub use gate::{Gate, GateConfig, Step, admit};
pub use meter::{BusyMeter, EventMeter, Harvest, MeterStats, Timeline};
pub use turns::{GpuTurns, Hold, TurnError};
