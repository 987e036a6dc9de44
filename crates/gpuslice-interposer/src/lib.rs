//! `libgpuslice.so`: loaded into every process of a slice (by `LD_PRELOAD` or
//! `/etc/ld.so.preload`), it interposes the CUDA driver API so that all the slice's
//! processes together never use more GPU memory than the slice's limit, and so that the
//! memory queries report the slice instead of the whole GPU.
//!
//! No constructor, no threads: everything is built lazily by the first hook that needs
//! it. A process that belongs to no slice gets the real driver untouched.

mod agent_client;
mod books;
mod compute;
mod entry;
mod ffi;
mod hooks;
mod launch;
mod lock;
mod log;
mod meter;
mod nvml;
mod nvml_view;
mod presence;
mod process;
mod real;
mod slice;
mod smi_ioctl;
mod table;
