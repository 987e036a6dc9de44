//! The host-side gpuslice agent (`gpuslice agent`). Inside a container, NVML cannot tell
//! the truth about the container's processes on every driver branch: old drivers show
//! every host process under host PIDs, 535.x/550.x lose per-process memory, and even the
//! newest leak other processes' utilization samples under host PIDs (docs/driver-facts.md §1). On
//! the host none of that is ambiguous. So the agent asks NVML on the host, and tells each
//! caller, identified by the kernel through its socket's peer credentials, what of each GPU
//! belongs to the caller's own container, in the caller's own PIDs.
//!
//! * [`probe`]: finds out at start-up how the driver behaves in a PID namespace;
//! * [`host`]: the host's view from NVML;
//! * [`scope`]: which processes are the caller's container, and its view;
//! * [`server`]: the socket, peer authentication and threads;
//! * [`clients`]: how many connections are served at once and for how long;
//! * [`procfs`]: what is read from the host's `/proc`;
//! * [`membership`]: which slice a host process belongs to;
//! * [`enforce`]: holds each slice to its memory limit from the host, killing what a
//!   container took past it without the interposer;
//! * [`sweep`]: frees the ledger entries of slice processes that are gone, in any PID
//!   namespace;
//! * [`metrics`]: `/metrics`, the slices, GPUs and the agent's counters for Prometheus;
//! * [`owners`]: who holds a slice (on Kubernetes: its pod), for `/metrics`' labels.
//!
//! The agent takes nothing a container can write as the truth (not a container's
//! `/proc`): the one such file it opens is a slice's ledger, only to free the entries of
//! processes that are gone, under the ledger's truncation guard (see [`sweep`]).

pub mod clients;
pub mod compute_window;
pub mod enforce;
pub mod host;
pub mod membership;
pub mod metrics;
pub mod owners;
pub mod probe;
pub mod procfs;
pub mod scope;
pub mod server;
pub mod sweep;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use gpuslice_agent_protocol::{DriverMode, SampleNumbering};

pub use probe::{ProbeReport, probe};
pub use server::{Agent, bind, log};

/// What can stop the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// An NVML call failed.
    #[error("NVML: {what}: {source}")]
    Nvml {
        /// What was being done.
        what: String,
        /// The error.
        source: nvml_wrapper::error::NvmlError,
    },
    /// The socket could not be set up or used.
    #[error("agent socket {path}: {what}: {source}")]
    Socket {
        /// The socket.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be started.
    #[error("starting a thread: {source}")]
    Thread {
        /// The OS error.
        source: std::io::Error,
    },
    /// `/metrics` could not listen.
    #[error("metrics address {addr}: {reason}")]
    Metrics {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
    /// Another agent answers on the socket.
    #[error("another gpuslice agent already listens on {path}")]
    InUse {
        /// The socket.
        path: PathBuf,
    },
}

/// How to start the agent.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where to listen.
    pub socket: PathBuf,
    /// Skip the driver probe (the mode is then reported as unknown).
    pub skip_probe: bool,
    /// Log every request.
    pub verbose: bool,
    /// Enforce memory slices from the host; `None`: do not.
    pub enforce: Option<enforce::EnforceOptions>,
    /// Serve `/metrics`; `None`: do not.
    pub metrics: Option<metrics::MetricsOptions>,
}

/// Probes the driver (unless told not to), logging the verdict. A failed probe leaves the
/// mode unknown: the agent's answers do not depend on it (they come from the host side).
pub fn probe_and_log(skip: bool) -> (DriverMode, SampleNumbering) {
    if skip {
        log(format_args!("driver probe skipped; driver mode unknown"));
        return (DriverMode::Unknown, SampleNumbering::Unknown);
    }
    match probe() {
        Ok(report) => {
            log(format_args!("{}", report.summary()));
            (report.mode, report.own_samples)
        }
        Err(e) => {
            log(format_args!("{e}; driver mode unknown"));
            (DriverMode::Unknown, SampleNumbering::Unknown)
        }
    }
}

/// Runs the agent until its socket fails: probe, load NVML, bind, serve (and serve
/// `/metrics` when asked).
pub fn run(options: &Options) -> Result<(), AgentError> {
    // The probe forks: it must run before NVML is loaded and before any thread starts.
    let (mode, own_samples) = probe_and_log(options.skip_probe);
    run_probed(options, mode, own_samples)
}

/// Runs the agent with the driver behaviour already probed ([`probe_and_log`], which a
/// process that starts threads of its own must call first): load NVML, bind, serve,
/// until the socket fails.
pub fn run_probed(
    options: &Options,
    mode: DriverMode,
    own_samples: SampleNumbering,
) -> Result<(), AgentError> {
    server::set_verbose(options.verbose);
    let procfs = procfs::Procfs::default();
    let counters = metrics::AgentCounters::default();
    let host = Arc::new(
        host::CachedHost::new(Box::new(host::NvmlHost::init(procfs.clone())?))
            .counting_errors(counters.nvml_errors.clone()),
    );
    let listener = bind(&options.socket)?;
    if let Some(m) = &options.metrics {
        // The agent's duties (PID truth, enforcement) do not depend on `/metrics`: an
        // address in use is logged, not fatal.
        match metrics::MetricsServer::bind(m.addr) {
            Ok(server) => server.spawn(metrics::Exporter::new(
                m.clone(),
                Arc::clone(&host),
                procfs.clone(),
                counters.clone(),
            ))?,
            Err(e) => log(format_args!("{e}; /metrics is not served")),
        }
    }
    if let Some(enforce) = &options.enforce {
        let enforcer =
            enforce::Enforcer::new(enforce.clone(), procfs.clone()).counting(counters.clone());
        let host = Arc::clone(&host);
        std::thread::Builder::new()
            .name("enforce".into())
            .spawn(move || enforcer.run(host))
            .map_err(|source| AgentError::Thread { source })?;
    } else {
        log(format_args!("memory slices are not enforced from the host"));
    }
    let agent = Arc::new(Agent::with_host(host, procfs, mode, own_samples));
    log(format_args!(
        "listening on {} (driver mode {mode})",
        options.socket.display()
    ));
    agent.serve(listener)
}

/// The default socket.
pub fn default_socket() -> &'static Path {
    Path::new(gpuslice_agent_protocol::DEFAULT_SOCKET)
}
