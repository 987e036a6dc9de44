//! The two flows of the `fake-kubelet` binary, which stands in for a kubelet (and, for
//! DRA, an API server) on a real GPU node with no cluster, for the node checks in
//! `tests/gpu/`: [`device_plugin`] (register, allocate one device per resource, serve
//! until a signal) and [`dra`] (publish-wait, prepare claims, unprepare them at a
//! signal). This module owns what both share: their error type, the deadline and
//! signal handling around every wait, and writing their JSON results atomically.

pub mod device_plugin;
pub mod dra;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::FakeKubeletError;

/// Why a flow failed.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// A flag's value cannot work (beyond what the flag's own parser checks).
    #[error("{0}")]
    Usage(String),
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The fake kubelet or its DRA client failed.
    #[error(transparent)]
    Kubelet(#[from] FakeKubeletError),
    /// A call to the plugin failed.
    #[error("{call} failed: {status}")]
    Rpc {
        /// The call, and for what.
        call: String,
        /// The plugin's answer.
        status: tonic::Status,
    },
    /// The plugin answered something unusable.
    #[error("{0}")]
    Answer(String),
    /// Something did not happen within `--timeout-secs`.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// The limit.
        after: Duration,
        /// What did not happen.
        what: String,
    },
    /// SIGTERM or SIGINT came before the flow was set up.
    #[error("interrupted (SIGTERM or SIGINT) while waiting for {0}")]
    Interrupted(String),
    /// Claims could not be prepared (they were unprepared again).
    #[error("claims not prepared: {0}")]
    Claims(String),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FlowError {
    let what = what.into();
    move |source| FlowError::Io { what, source }
}

/// A flow's time limit, from its start, and its stop signal.
#[derive(Debug)]
pub struct Deadline {
    limit: Duration,
    at: Instant,
    stop: CancellationToken,
}

impl Deadline {
    /// `limit` from now; `stop` interrupts every wait.
    pub fn new(limit: Duration, stop: CancellationToken) -> Self {
        Self {
            limit,
            at: Instant::now() + limit,
            stop,
        }
    }

    /// The time left.
    pub fn left(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// The timeout error for `what`.
    pub fn timeout(&self, what: impl Into<String>) -> FlowError {
        FlowError::Timeout {
            after: self.limit,
            what: what.into(),
        }
    }

    /// Runs `work` until it ends, the deadline passes, or the stop signal comes.
    pub async fn wait<F: Future>(&self, what: &str, work: F) -> Result<F::Output, FlowError> {
        tokio::select! {
            biased;
            out = work => Ok(out),
            _ = tokio::time::sleep_until(self.at) => Err(self.timeout(what)),
            _ = self.stop.cancelled() => Err(FlowError::Interrupted(what.to_string())),
        }
    }
}

/// A token cancelled at the first SIGTERM or SIGINT. Call it inside a tokio runtime, as
/// early as possible: until then the signals have their default effect.
pub fn shutdown_on_signals() -> Result<CancellationToken, FlowError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(io_error("handling SIGTERM"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io_error("handling SIGINT"))?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        cancel.cancel();
    });
    Ok(token)
}

/// `path` with `suffix` added to its file name (`out.json` + `.tmp`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Writes `text` to `path` atomically: to `<path>.tmp` first, then renamed over `path`,
/// so a reader polling for `path` never sees half of it.
pub fn write_atomically(path: &Path, text: &str) -> Result<(), FlowError> {
    let tmp = with_suffix(path, ".tmp");
    std::fs::write(&tmp, text).map_err(io_error(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io_error(format!(
        "renaming {} to {}",
        tmp.display(),
        path.display()
    )))
}

/// Writes `value` as pretty JSON to `path`, atomically.
pub fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), FlowError> {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".into());
    text.push('\n');
    write_atomically(path, &text)
}

/// Makes `dir` (and its parents).
fn make_dir(dir: &Path) -> Result<(), FlowError> {
    std::fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_written_whole_under_its_name() {
        let dir = std::env::temp_dir().join(format!("fake-kubelet-flows-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out.json");
        write_json(&out, &serde_json::json!({"a": [1, 2]})).unwrap();
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
        assert_eq!(back, serde_json::json!({"a": [1, 2]}));
        assert!(!with_suffix(&out, ".tmp").exists());
        assert_eq!(
            with_suffix(&out, ".unprepared"),
            dir.join("out.json.unprepared")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_wait_ends_at_the_deadline_or_the_stop_signal() {
        let stop = CancellationToken::new();
        let deadline = Deadline::new(Duration::from_millis(50), stop.clone());
        let err = deadline
            .wait("nothing", std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "timed out after 50ms waiting for nothing");
        let deadline = Deadline::new(Duration::from_secs(60), stop.clone());
        stop.cancel();
        let err = deadline
            .wait("a plugin", std::future::pending::<()>())
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "interrupted (SIGTERM or SIGINT) while waiting for a plugin"
        );
        assert_eq!(deadline.wait("now", async { 7 }).await.unwrap(), 7);
    }
}
