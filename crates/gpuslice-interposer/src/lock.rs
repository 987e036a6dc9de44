//! Locking the interposer's own mutexes.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, recovering it if a panicking thread poisoned it (panics abort here,
/// so this only matters in theory).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
