//! The `gpuslice` binary: parses the command line and hands it to the library, turning
//! errors into a message on stderr and an exit code.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use gpuslice_cli::cli::{Cli, Command};

fn exit(code: i32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(125))
}

/// Prints what a subcommand returned, or reports its error.
fn print_text(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            let _ = std::io::stdout().lock().write_all(text.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            report(e);
            ExitCode::FAILURE
        }
    }
}

fn report(error: anyhow::Error) {
    eprintln!("gpuslice: {error}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Every subcommand maps ledgers that the slices' processes can write (and cut
    // short): guard them before the first is mapped. Programs that `gpuslice run`
    // starts do not inherit the handler (exec resets it).
    if let Err(e) = gpuslice_ledger::guard::install() {
        report(e.into());
        return exit(125);
    }
    match cli.command {
        Command::Run(args) => match gpuslice_cli::run::run(args) {
            Ok(outcome) => {
                for warning in &outcome.warnings {
                    eprintln!("gpuslice: {warning}");
                }
                exit(outcome.code)
            }
            Err(e) => {
                let code = e.exit_code();
                report(e.into());
                exit(code)
            }
        },
        Command::Status(args) => {
            let printed = gpuslice_cli::status::status(&args)
                .map_err(anyhow::Error::from)
                .and_then(|text| Ok(std::io::stdout().lock().write_all(text.as_bytes())?));
            match printed {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(e);
                    ExitCode::FAILURE
                }
            }
        }
        Command::Top(args) if args.once => {
            print_text(gpuslice_cli::top::once(&args).map_err(Into::into))
        }
        Command::Top(args) => match gpuslice_cli::top::live(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                report(e.into());
                ExitCode::FAILURE
            }
        },
        Command::Agent(args) => print_text(gpuslice_cli::agent::run(&args).map_err(Into::into)),
        Command::Doctor(args) => {
            let report = gpuslice_cli::doctor::run(&args);
            let _ = std::io::stdout()
                .lock()
                .write_all(report.to_string().as_bytes());
            if report.problems().next().is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Command::Node(args) => print_text(gpuslice_cli::node::run(&args).map_err(Into::into)),
        Command::Cdi(args) => {
            let printed = gpuslice_cli::cdi::run(&args.command)
                .map_err(anyhow::Error::from)
                .and_then(|out| {
                    for warning in &out.warnings {
                        eprintln!("gpuslice: warning: {warning}");
                    }
                    Ok(std::io::stdout().lock().write_all(out.stdout.as_bytes())?)
                });
            match printed {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    report(e);
                    ExitCode::FAILURE
                }
            }
        }
    }
}
