//! The C ABI of the CUDA driver API (`cuda.h`) and of NVML (`nvml.h`) that gpuslice
//! reads and writes: handle and code types, the constants it compares against, the
//! `repr(C)` structures it reads through driver pointers, and the function-pointer types
//! of the entry points it calls.
//!
//! Driver codes are plain integers, never Rust enums: a driver newer than this crate may
//! return a value no enum here would know. Every structure's size and field offsets are
//! checked against the headers of CUDA 12 and 13 by the tests of its module.
//!
//! The interposer, the fake driver, the fake NVML, the test probe and the agent's probe
//! all take their definitions from here, so that one layout is written once.

pub mod cuda;
pub mod nvml;
