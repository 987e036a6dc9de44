//! The command line: `gpuslice run` and `gpuslice status`, their flags, and the checks
//! that clap runs on each flag's value, so that a bad value is refused (naming the flag)
//! before anything is created or started.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::gpus::{GpuList, parse_gpu_list};
use crate::plan::{LogName, parse_log, parse_memory, validate_name};

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
    #[arg(long, value_name = "SIZE", value_parser = parse_memory, required = true)]
    pub memory: Option<u64>,

    /// GPUs to limit and expose, as nvidia-smi numbers them, or UUIDs / unique UUID
    /// prefixes, comma separated (e.g. 0,2 or GPU-5d1f). Sets CUDA_VISIBLE_DEVICES.
    /// Without it, every GPU the program uses is limited.
    #[arg(long, value_name = "LIST", value_parser = parse_gpu_list)]
    pub gpus: Option<GpuList>,

    /// Name of the slice ([A-Za-z0-9._-], at most 63 characters) [default: run-<pid>].
    #[arg(long, value_name = "NAME", value_parser = validate_name)]
    pub name: Option<String>,

    /// Folder for the slice's ledger [default: $GPUSLICE_LEDGER_DIR or /dev/shm/gpuslice].
    #[arg(long, value_name = "DIR")]
    pub ledger_dir: Option<PathBuf>,

    /// The interposer library [default: $GPUSLICE_LIB, else libgpuslice.so next to this
    /// program or in ../lib].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,

    /// Log level of the interposer: off, error, warn, info, debug or trace.
    #[arg(long, value_name = "LEVEL", value_parser = parse_log)]
    pub log: Option<LogName>,

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
    use gpuslice_config::DeviceSelector;

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
            "run", "--memory", "4GiB", "--name", "a.b-c_1", "--", "sh", "-c", "exit 7",
        ]);
        assert_eq!(r.memory, Some(4 << 30));
        assert_eq!(r.name.as_deref(), Some("a.b-c_1"));
        assert_eq!(r.command, ["sh", "-c", "exit 7"]);
        // Flags after the program belong to the program.
        let r = run_args(&["run", "--memory", "8g", "python", "--memory", "x"]);
        assert_eq!(r.command, ["python", "--memory", "x"]);
    }

    #[test]
    fn run_parses_gpus_and_log() {
        let r = run_args(&[
            "run",
            "--memory",
            "1g",
            "--gpus",
            "1,GPU-ABCD",
            "--log",
            "DEBUG",
            "--",
            "true",
        ]);
        assert_eq!(
            r.gpus.unwrap().0,
            vec![
                DeviceSelector::Index(1),
                DeviceSelector::Uuid("GPU-abcd".into())
            ]
        );
        assert_eq!(r.log.unwrap().0, "debug");
    }

    #[test]
    fn bad_values_are_refused_naming_the_flag() {
        for (args, flag) in [
            (&["run", "--memory", "lots", "--", "true"][..], "--memory"),
            (&["run", "--memory", "0", "--", "true"][..], "--memory"),
            (&["run", "--", "true"][..], "--memory"),
            (
                &["run", "--memory", "1g", "--name", "a/b", "--", "true"][..],
                "--name",
            ),
            (
                &["run", "--memory", "1g", "--gpus", "zero", "--", "true"][..],
                "--gpus",
            ),
            (
                &["run", "--memory", "1g", "--log", "loud", "--", "true"][..],
                "--log",
            ),
        ] {
            let err = parse(args).expect_err(&format!("{args:?}")).to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
        assert!(
            parse(&["run", "--memory", "1g"]).is_err(),
            "a command is required"
        );
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
