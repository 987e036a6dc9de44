//! The command line: `gpuslice run` and `gpuslice status` and their flags (those of
//! `gpuslice cdi` are in [`crate::cdi::args`]). Values are taken as text here and checked
//! by [`crate::run::plan`], whose errors name the flag.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// gpuslice: GPU memory slices for programs and containers.
#[derive(Debug, Parser)]
#[command(name = "gpuslice", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a program (and everything it starts) in a new memory slice.
    Run(RunArgs),
    /// Show the slices of this host: limits, usage and processes.
    Status(StatusArgs),
    /// A live view of this host's slices, refreshed every second: memory, compute use,
    /// throttled time, refusals and processes of each, and the GPUs' totals.
    Top(crate::top::TopArgs),
    /// Offer slices to containers as CDI devices (`--device gpuslice.io/slice=NAME`).
    Cdi(crate::cdi::args::CdiArgs),
    /// Host side: serve each container's processes their own container's GPU processes,
    /// utilization and sessions, in their own PIDs (for the interposer's NVML view), and
    /// hold the CDI slices to their memory limits from the host.
    Agent(crate::agent::AgentArgs),
    /// Check this host for gpuslice: driver and device nodes, container engines and their
    /// CDI support, CDI specs and their host files, the agent, ledger folders and stale
    /// entries. Says what is wrong and how to fix it; exits 1 if something is.
    Doctor(crate::doctor::DoctorArgs),
    /// On a Kubernetes node: the device plugins (one resource per slice profile) and the
    /// agent's duties for every slice; `--dry-run` prints what the node would advertise.
    Node(crate::node::NodeArgs),
}

/// Flags of `gpuslice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Memory limit of the slice on each GPU it limits (e.g. 4GiB, 512MiB, 8g).
    #[arg(long, value_name = "SIZE", required_unless_present = "compute")]
    pub memory: Option<String>,

    /// Compute limit: the share of each GPU's time the slice may use, in percent
    /// (1 to 100), whatever else runs on the GPU.
    #[arg(long, value_name = "PERCENT")]
    pub compute: Option<String>,

    /// Soft compute limit in percent: the slice may use up to this much while no other
    /// slice wants the GPU, and falls back to --compute as soon as one does.
    #[arg(long, value_name = "PERCENT", requires = "compute")]
    pub burst: Option<String>,

    /// GPUs to limit and expose, as nvidia-smi numbers them, or UUIDs / unique UUID
    /// prefixes, comma separated (e.g. 0,2 or GPU-5d1f). Sets CUDA_VISIBLE_DEVICES.
    /// Without it, every GPU the program uses is limited.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,

    /// Name of the slice ([A-Za-z0-9._-], at most 63 characters) [default: run-<pid>].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Folder for the slice's ledger, which must exist [default: $GPUSLICE_LEDGER_DIR, else
    /// /dev/shm/gpuslice-<uid>, created with mode 0700].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,

    /// The interposer library [default: $GPUSLICE_LIB, else libgpuslice.so next to this
    /// program or in ../lib].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,

    /// Log level of the interposer: off, error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,

    /// The program to run and its arguments (after `--`).
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        value_parser = clap::value_parser!(OsString)
    )]
    pub command: Vec<OsString>,
}

/// Flags of `gpuslice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print one JSON document instead of tables.
    #[arg(long)]
    pub json: bool,

    /// Folder that holds the ledgers [default: $GPUSLICE_LEDGER_DIR, else
    /// /dev/shm/gpuslice-<uid>; for root, every user's].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,

    /// Show dead processes' entries instead of sweeping them.
    #[arg(long)]
    pub no_sweep: bool,

    /// The state folder of `gpuslice cdi generate` and `gpuslice node`, whose slices
    /// (slices/NAME/ledger) are shown too.
    #[arg(long, value_name = "DIR", default_value = gpuslice_host::layout::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("gpuslice").chain(args.iter().copied()))
    }

    fn run_args(args: &[&str]) -> RunArgs {
        match parse(args).expect("parses").command {
            Command::Run(r) => r,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_the_double_dash() {
        let r = run_args(&[
            "run", "--memory", "4GiB", "--name", "a", "--gpus", "0,1", "--log", "info", "--", "sh",
            "-c", "exit 7",
        ]);
        assert_eq!(r.memory.as_deref(), Some("4GiB"));
        assert_eq!(r.name.as_deref(), Some("a"));
        assert_eq!(r.gpus.as_deref(), Some("0,1"));
        assert_eq!(r.log.as_deref(), Some("info"));
        assert_eq!(r.command, ["sh", "-c", "exit 7"]);
        // Flags after the program belong to the program.
        let r = run_args(&["run", "--memory", "8g", "python", "--memory", "x"]);
        assert_eq!(r.command, ["python", "--memory", "x"]);
    }

    #[test]
    fn a_limit_and_a_command_are_required() {
        let err = parse(&["run", "--", "true"]).unwrap_err().to_string();
        assert!(err.contains("--memory"), "{err}");
        assert!(parse(&["run", "--memory", "1g"]).is_err());
        // A compute limit alone is a slice too.
        let r = run_args(&["run", "--compute", "30", "--burst", "80", "--", "true"]);
        assert_eq!(r.memory, None);
        assert_eq!(r.compute.as_deref(), Some("30"));
        assert_eq!(r.burst.as_deref(), Some("80"));
        // A burst needs a hard limit.
        assert!(parse(&["run", "--memory", "1g", "--burst", "80", "--", "true"]).is_err());
    }

    #[test]
    fn cdi_flags() {
        use crate::cdi::args::CdiCommand;
        let cmd = parse(&[
            "cdi",
            "generate",
            "--slice",
            "a=0:8GiB",
            "--slice",
            "b=1:4GiB:compute=30",
        ])
        .unwrap()
        .command;
        match cmd {
            Command::Cdi(c) => match c.command {
                CdiCommand::Generate(g) => {
                    assert_eq!(g.slices, ["a=0:8GiB", "b=1:4GiB:compute=30"]);
                    assert_eq!(g.output_dir, PathBuf::from("/etc/cdi"));
                    assert_eq!(g.state_dir, PathBuf::from("/var/lib/gpuslice"));
                    assert_eq!(g.agent_dir, PathBuf::from("/run/gpuslice/agent"));
                    assert_eq!(g.driver_libs, "auto");
                    assert_eq!(g.dev_root, PathBuf::from("/"));
                    assert!(!g.dry_run);
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
        assert!(parse(&["cdi", "list", "--output-dir", "/var/run/cdi"]).is_ok());
    }

    #[test]
    fn status_flags() {
        match parse(&["status", "--json", "--no-sweep", "--ledger-dir", "/x"])
            .unwrap()
            .command
        {
            Command::Status(s) => {
                assert!(s.json && s.no_sweep);
                assert_eq!(s.ledger_dir, Some(PathBuf::from("/x")));
            }
            other => panic!("{other:?}"),
        }
    }
}
