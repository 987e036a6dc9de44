//! The ledgers' side of the mapping guard (`gpuslice-mapguard`): a host-side tool calls
//! [`install`] once, explicitly, and every ledger it maps from then on is registered, so
//! that a ledger cut short under the tool reads as empty instead of killing it with
//! `SIGBUS`, and [`crate::Ledger::intact`] reports it.
//!
//! The interposer never calls [`install`]: in a slice's own processes a ledger read as
//! zeros would lift the slice's limits, so a slice member that truncates its ledger kills
//! its own slice's processes instead (docs/design.md, "What a slice member can do"). The
//! interposer installs the mapping guard's handler in compute-limited processes for the
//! per-GPU turn files only, which leaves ledgers unregistered here.
//!
//! The alternative, reading ledgers with `pread` into a private copy, was not taken: the
//! agent and `gpuslice status` must also free dead entries, which takes a
//! compare-and-swap on the shared owner word, so they need the mapping anyway, and a copy
//! would be a second shape of the ledger.

use std::sync::atomic::{AtomicBool, Ordering::Acquire, Ordering::Release};

pub use gpuslice_mapguard::{CAPACITY, GuardError, Registered, Registration};

static LEDGERS_GUARDED: AtomicBool = AtomicBool::new(false);

/// Installs the `SIGBUS` handler and guards every ledger this process maps from now on
/// (ledgers mapped before the first call are not guarded). For host-side tools only.
/// Idempotent.
pub fn install() -> Result<(), GuardError> {
    gpuslice_mapguard::install()?;
    LEDGERS_GUARDED.store(true, Release);
    Ok(())
}

/// Whether [`install`] has run in this process.
pub fn installed() -> bool {
    LEDGERS_GUARDED.load(Acquire)
}

/// Registers a ledger mapping when this process guards its ledgers.
pub(crate) fn register(start: *const u8, len: usize) -> Registered {
    if installed() {
        gpuslice_mapguard::register(start, len)
    } else {
        Registered::Unguarded
    }
}
