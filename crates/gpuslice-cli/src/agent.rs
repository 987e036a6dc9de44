//! `gpuslice agent`: the host-side agent that tells each container's processes what of
//! every GPU belongs to their own container (see `docs/nvml-view.md` and the
//! `gpuslice-agent` crate). `--probe-only` runs the driver probe and prints its verdict.

use std::path::PathBuf;

use clap::Args;

/// Flags of `gpuslice agent`.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// The unix socket to listen on (its folder is made mode 0755, the socket 0666).
    #[arg(long, value_name = "PATH", default_value = gpuslice_agent_protocol::DEFAULT_SOCKET)]
    pub socket: PathBuf,

    /// Only probe how the driver shows processes inside a PID namespace, print the
    /// verdict (`mode=... own-samples=...` and a summary) and exit. Needs root.
    #[arg(long, conflicts_with = "no_probe")]
    pub probe_only: bool,

    /// Do not probe the driver at start-up (the mode is then reported as unknown).
    #[arg(long)]
    pub no_probe: bool,

    /// Log every request.
    #[arg(long)]
    pub verbose: bool,

    /// The state folder of `gpuslice cdi generate`: the slices whose memory the agent
    /// holds from the host (`config/<name>.env`).
    #[arg(long, value_name = "DIR", default_value = gpuslice_host::layout::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// What to do when a slice's processes hold more GPU memory than its limit plus the
    /// grace, as NVML on the host counts it: `kill` its largest processes until the rest
    /// fits, only `report` them, or `off`.
    #[arg(long, value_name = "ACTION", default_value = "kill", value_parser = ["kill", "report", "off"])]
    pub memory_enforcement: String,

    /// How far past its limit a slice may go before the agent acts (e.g. `128MiB`).
    #[arg(long, value_name = "SIZE", default_value = "128MiB", value_parser = parse_grace)]
    pub memory_grace: u64,

    /// How often the agent checks the slices, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(50..=60_000))]
    pub enforce_interval_ms: u64,

    /// Where to serve Prometheus metrics (`/metrics`, docs/metrics.md): an address and
    /// port (port 0: any free one, logged), or `off`.
    #[arg(long, value_name = "ADDR", default_value = gpuslice_agent::metrics::DEFAULT_METRICS_ADDR, value_parser = parse_metrics_addr)]
    pub metrics_addr: MetricsAddr,
}

/// `--metrics-addr`: an address, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

/// Parses `--metrics-addr`.
pub fn parse_metrics_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|e| format!("{e} (expected ADDRESS:PORT, e.g. 0.0.0.0:10420, or off)"))
}

impl MetricsAddr {
    /// `/metrics` for the slices of `state_dir` (and of `gpuslice run`), if on.
    pub fn options(
        self,
        state_dir: &std::path::Path,
    ) -> Option<gpuslice_agent::metrics::MetricsOptions> {
        self.0
            .map(|a| gpuslice_agent::metrics::MetricsOptions::new(a, state_dir.to_path_buf()))
    }
}

fn parse_grace(text: &str) -> Result<u64, String> {
    gpuslice_config::parse_size(text).map_err(|e| e.to_string())
}

impl AgentArgs {
    /// The enforcement the flags ask for.
    pub fn enforce_options(&self) -> Option<gpuslice_agent::enforce::EnforceOptions> {
        use gpuslice_agent::enforce::{Action, EnforceOptions};
        let action = match self.memory_enforcement.as_str() {
            "kill" => Action::Kill,
            "report" => Action::Report,
            _ => return None,
        };
        Some(EnforceOptions {
            state_dir: self.state_dir.clone(),
            grace: self.memory_grace,
            interval: std::time::Duration::from_millis(self.enforce_interval_ms),
            action,
        })
    }
}

/// Why `gpuslice agent` stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentCommandError {
    /// The agent failed.
    #[error(transparent)]
    Agent(#[from] gpuslice_agent::AgentError),
    /// The probe failed (`--probe-only`).
    #[error(transparent)]
    Probe(#[from] gpuslice_agent::probe::ProbeError),
}

/// Runs `gpuslice agent`; with `--probe-only` returns the text to print.
pub fn run(args: &AgentArgs) -> Result<String, AgentCommandError> {
    if args.probe_only {
        let report = gpuslice_agent::probe()?;
        return Ok(format!(
            "mode={} own-samples={}\n{}\n",
            report.mode,
            report.own_samples.as_str(),
            report.summary()
        ));
    }
    gpuslice_agent::run(&gpuslice_agent::Options {
        socket: args.socket.clone(),
        skip_probe: args.no_probe,
        verbose: args.verbose,
        enforce: args.enforce_options(),
        metrics: args.metrics_addr.options(&args.state_dir),
    })?;
    Ok(String::new())
}

#[cfg(test)]
mod tests {
    use crate::cli::{Cli, Command};
    use clap::Parser;
    use std::path::Path;

    fn agent_args(args: &[&str]) -> super::AgentArgs {
        let cli = Cli::try_parse_from(std::iter::once("gpuslice").chain(args.iter().copied()))
            .expect("parses");
        match cli.command {
            Command::Agent(a) => a,
            other => panic!("not agent: {other:?}"),
        }
    }

    #[test]
    fn agent_flags() {
        let a = agent_args(&["agent"]);
        assert_eq!(a.socket, Path::new("/run/gpuslice/agent/agent.sock"));
        assert!(!a.probe_only && !a.no_probe && !a.verbose);
        let a = agent_args(&[
            "agent",
            "--socket",
            "/tmp/a.sock",
            "--verbose",
            "--no-probe",
        ]);
        assert_eq!(a.socket, Path::new("/tmp/a.sock"));
        assert!(a.verbose && a.no_probe);
        assert!(agent_args(&["agent", "--probe-only"]).probe_only);
        // Enforcement: on by default, over the CDI state folder.
        let e = agent_args(&["agent"])
            .enforce_options()
            .expect("on by default");
        assert_eq!(e.state_dir, Path::new("/var/lib/gpuslice"));
        assert_eq!(e.grace, 128 << 20);
        assert_eq!(e.interval, std::time::Duration::from_millis(500));
        assert_eq!(e.action, gpuslice_agent::enforce::Action::Kill);
        // Metrics: on by default, on every interface, port 10420.
        let m = agent_args(&["agent"])
            .metrics_addr
            .options(Path::new("/s"))
            .unwrap();
        assert_eq!(m.addr, "0.0.0.0:10420".parse().unwrap());
        assert_eq!(m.state_dir, Path::new("/s"));
        let a = agent_args(&["agent", "--metrics-addr", "127.0.0.1:0"]).metrics_addr;
        assert_eq!(a.0, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            agent_args(&["agent", "--metrics-addr", "off"]).metrics_addr,
            super::MetricsAddr(None)
        );
        let e = agent_args(&[
            "agent",
            "--memory-enforcement",
            "report",
            "--memory-grace",
            "1GiB",
            "--state-dir",
            "/srv/gs",
            "--enforce-interval-ms",
            "100",
        ])
        .enforce_options()
        .unwrap();
        assert_eq!(e.action, gpuslice_agent::enforce::Action::Report);
        assert_eq!(
            (e.grace, e.state_dir.as_path()),
            (1 << 30, Path::new("/srv/gs"))
        );
        assert!(
            agent_args(&["agent", "--memory-enforcement", "off"])
                .enforce_options()
                .is_none()
        );
        for bad in [
            &["agent", "--memory-enforcement", "maybe"][..],
            &["agent", "--memory-grace", "lots"],
            &["agent", "--enforce-interval-ms", "0"],
            &["agent", "--metrics-addr", "localhost"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("gpuslice").chain(bad.iter().copied()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(bad[1]), "{bad:?}: {err}");
        }
        assert!(
            Cli::try_parse_from(["gpuslice", "agent", "--probe-only", "--no-probe"]).is_err(),
            "--probe-only and --no-probe conflict"
        );
    }
}
