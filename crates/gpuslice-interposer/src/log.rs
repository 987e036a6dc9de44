//! Logging to standard error with a `gpuslice:` prefix, filtered by the slice's log
//! level. Nothing here runs on a hot path except the level check.

use std::io::Write;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering::Relaxed};

use gpuslice_config::LogLevel;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Warn as u8);

/// Sets the level (from the configuration).
pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Relaxed);
}

/// Whether lines of `level` are shown.
pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Relaxed) && level != LogLevel::Off
}

/// Writes one line if `level` is enabled.
pub fn line(level: LogLevel, message: std::fmt::Arguments<'_>) {
    if !enabled(level) {
        return;
    }
    let text = format!("gpuslice: {message}\n");
    // One write call, so lines from several processes do not interleave.
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

static LAST_REFUSAL_SEC: AtomicU64 = AtomicU64::new(0);
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Logs a refusal, at most one line per second; the next line counts the ones skipped.
pub fn refusal(message: std::fmt::Arguments<'_>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let last = LAST_REFUSAL_SEC.load(Relaxed);
    if last == now
        || LAST_REFUSAL_SEC
            .compare_exchange(last, now, Relaxed, Relaxed)
            .is_err()
    {
        SUPPRESSED.fetch_add(1, Relaxed);
        return;
    }
    let skipped = SUPPRESSED.swap(0, Relaxed);
    if skipped > 0 {
        line(
            LogLevel::Warn,
            format_args!("{message} ({skipped} similar refusals not shown)"),
        );
    } else {
        line(LogLevel::Warn, message);
    }
}

macro_rules! log_at {
    ($level:ident, $($arg:tt)*) => {
        if $crate::log::enabled(gpuslice_config::LogLevel::$level) {
            $crate::log::line(gpuslice_config::LogLevel::$level, format_args!($($arg)*));
        }
    };
}
pub(crate) use log_at;

static BROKEN_REPORTED: AtomicU32 = AtomicU32::new(0);

/// Reports, once per process, that the slice's configuration or ledger is unusable and
/// the GPU is refused.
pub fn report_broken_once(message: &str) {
    let pid = std::process::id();
    if BROKEN_REPORTED.swap(pid, Relaxed) != pid {
        line(
            LogLevel::Error,
            format_args!(
                "{message}; refusing to use the GPU rather than run without the slice's limits"
            ),
        );
    }
}
