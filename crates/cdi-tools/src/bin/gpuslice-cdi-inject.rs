//! `gpuslice-cdi-inject`: applies CDI devices to an OCI runtime `config.json` (stdin to
//! stdout), as Podman, Docker and containerd do for `--device vendor/class=name`, for
//! runtimes that have no CDI support of their own (plain `crun`/`runc` bundles):
//!
//! ```sh
//! crun spec && gpuslice-cdi-inject --device gpuslice.io/slice=gpu0-8g < config.json > c.json
//! ```
//!
//! The work is in the `cdi_tools` library; this only reads flags and streams.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// Applies CDI devices to an OCI runtime config.json read from stdin; writes the result
/// to stdout.
#[derive(Debug, Parser)]
#[command(name = "gpuslice-cdi-inject", version, about, long_about = None)]
struct Args {
    /// A folder of CDI specs; repeat for more (later folders win on conflicting names)
    /// [default: /etc/cdi and /var/run/cdi].
    #[arg(long, value_name = "DIR")]
    spec_dir: Vec<PathBuf>,

    /// A device to inject: VENDOR/CLASS=NAME (e.g. gpuslice.io/slice=gpu0-8g), or a slice
    /// name alone; repeat for more. At most one gpuslice slice.
    #[arg(long, value_name = "NAME")]
    device: Vec<String>,

    /// Check every spec in the folders and print the devices they offer, instead of
    /// injecting.
    #[arg(long, conflicts_with = "device")]
    list: bool,
}

fn run(args: Args) -> anyhow::Result<()> {
    let dirs: Vec<PathBuf> = if args.spec_dir.is_empty() {
        cdi_tools::DEFAULT_SPEC_DIRS.map(PathBuf::from).to_vec()
    } else {
        args.spec_dir
    };
    let mut stdout = std::io::stdout().lock();
    if args.list {
        let mut cache = cdi_tools::load_cache(&dirs)?;
        for name in cache.list_devices() {
            writeln!(stdout, "{name}")?;
        }
        return Ok(());
    }
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .context("reading the OCI runtime config from stdin")?;
    let output = cdi_tools::inject_json(&dirs, &args.device, &input)?;
    stdout
        .write_all(output.as_bytes())
        .context("writing the OCI runtime config to stdout")?;
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpuslice-cdi-inject: {e:#}");
            ExitCode::FAILURE
        }
    }
}
