//! `fake-kubelet`: a kubelet (and, for DRA, an API server) for a real `gpuslice node` on
//! a host with no cluster, as the GPU checks in `tests/gpu/` use it:
//!
//! ```sh
//! fake-kubelet device-plugin --kubelet-dir DIR --resource gpuslice.io/slice-8g-30 --out a.json
//! fake-kubelet dra --kubelet-dir DIR --node h200 --kubeconfig-out kc.yaml \
//!     --claim a=8Gi,30 --claim b=4Gi,70 --out claims.json
//! ```
//!
//! The work is in the `fake_kubelet::flows` library module; this only reads flags.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use fake_kubelet::flows::{self, device_plugin::DevicePluginFlow, dra::ClaimSpec, dra::DraFlow};

/// A fake kubelet for checks of `gpuslice node` on a real GPU host.
#[derive(Debug, Parser)]
#[command(name = "fake-kubelet", version)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the device plugins' Registration, allocate one device of each resource to
    /// one container, write what Allocate answered, and serve until SIGTERM or SIGINT.
    DevicePlugin {
        /// The kubelet's folder (`device-plugins/kubelet.sock` is served under it).
        #[arg(long, value_name = "DIR")]
        kubelet_dir: PathBuf,
        /// An extended resource to allocate one device of; repeat for more.
        #[arg(long, value_name = "NAME", required = true)]
        resource: Vec<String>,
        /// Where the JSON of the allocations goes (written atomically).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long registration and allocation may take, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Serve a fake API server, register the DRA driver, prepare claims on its device
    /// gpu-0, write the result, and unprepare them at SIGTERM or SIGINT.
    Dra {
        /// The kubelet's folder (`plugins_registry/` under it).
        #[arg(long, value_name = "DIR")]
        kubelet_dir: PathBuf,
        /// The node's name (the ResourceSlice's pool).
        #[arg(long, value_name = "NAME")]
        node: String,
        /// Where the kubeconfig of the fake API server goes.
        #[arg(long, value_name = "FILE")]
        kubeconfig_out: PathBuf,
        /// A claim: NAME=MEMORY,COMPUTE (e.g. a=8Gi,30; c=2Gi, asks for no compute);
        /// repeat for more.
        #[arg(long, value_name = "NAME=MEMORY,COMPUTE", required = true)]
        claim: Vec<ClaimSpec>,
        /// Where the JSON of the prepared claims goes (written atomically); the result of
        /// unpreparing goes to FILE.unprepared.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// How long setting up (and, after the signal, unpreparing) may take, in seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        timeout_secs: u64,
    },
}

async fn run(command: Command) -> anyhow::Result<()> {
    let stop = flows::shutdown_on_signals()?;
    match command {
        Command::DevicePlugin {
            kubelet_dir,
            resource,
            out,
            timeout_secs,
        } => {
            let flow = DevicePluginFlow {
                kubelet_dir,
                resources: resource,
                out,
                timeout: Duration::from_secs(timeout_secs),
            };
            flows::device_plugin::run(&flow, stop).await?;
        }
        Command::Dra {
            kubelet_dir,
            node,
            kubeconfig_out,
            claim,
            out,
            timeout_secs,
        } => {
            let flow = DraFlow {
                kubelet_dir,
                node,
                kubeconfig_out,
                claims: claim,
                out,
                timeout: Duration::from_secs(timeout_secs),
            };
            flows::dra::run(&flow, stop).await?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| rt.block_on(run(args.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fake-kubelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}
