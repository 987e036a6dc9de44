//! The command line: `gpuslice run` and `gpuslice status` and their flags. Values are
//! taken as text here and checked by [`crate::run::plan`], whose errors name the flag.

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
}

/// Flags of `gpuslice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Memory limit of the slice on each GPU it limits (e.g. 4GiB, 512MiB, 8g).
    #[arg(long, value_name = "SIZE")]
    pub memory: String,

    /// GPUs to limit and expose, as nvidia-smi numbers them, or UUIDs / unique UUID
    /// prefixes, comma separated (e.g. 0,2 or GPU-5d1f). Sets CUDA_VISIBLE_DEVICES.
    /// Without it, every GPU the program uses is limited.
    #[arg(long, value_name = "LIST")]
    pub gpus: Option<String>,

    /// Name of the slice ([A-Za-z0-9._-], at most 63 characters) [default: run-<pid>].
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Folder for the slice's ledger [default: $GPUSLICE_LEDGER_DIR or /dev/shm/gpuslice].
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

    /// Folder that holds the ledgers [default: $GPUSLICE_LEDGER_DIR or /dev/shm/gpuslice].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,

    /// Show dead processes' entries instead of sweeping them.
    #[arg(long)]
    pub no_sweep: bool,
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
        assert_eq!(r.memory, "4GiB");
        assert_eq!(r.name.as_deref(), Some("a"));
        assert_eq!(r.gpus.as_deref(), Some("0,1"));
        assert_eq!(r.log.as_deref(), Some("info"));
        assert_eq!(r.command, ["sh", "-c", "exit 7"]);
        // Flags after the program belong to the program.
        let r = run_args(&["run", "--memory", "8g", "python", "--memory", "x"]);
        assert_eq!(r.command, ["python", "--memory", "x"]);
    }

    #[test]
    fn memory_and_a_command_are_required() {
        let err = parse(&["run", "--", "true"]).unwrap_err().to_string();
        assert!(err.contains("--memory"), "{err}");
        assert!(parse(&["run", "--memory", "1g"]).is_err());
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
