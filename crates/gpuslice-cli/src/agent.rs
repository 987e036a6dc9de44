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
        assert!(
            Cli::try_parse_from(["gpuslice", "agent", "--probe-only", "--no-probe"]).is_err(),
            "--probe-only and --no-probe conflict"
        );
    }
}
