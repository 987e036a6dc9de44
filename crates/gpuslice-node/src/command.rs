//! `gpuslice node` as a whole, for the CLI to call: on a Kubernetes node, the device
//! plugins (one resource per slice profile, slices made by the host crate's provisioner)
//! and the node agent's duties for every slice (the PID-truth socket `nvidia-smi` asks,
//! host-side memory enforcement, reclaiming the ledger entries of dead containers), in
//! one process; or, with `dry_run`, the inventory it would advertise.
//!
//! Order matters: the agent's driver probe forks, so it runs first, before NVML is
//! loaded and before any thread starts; then the agent serves from a thread of its own,
//! and the device plugins from a tokio runtime on the calling thread, until SIGTERM or
//! SIGINT, or until the agent stops (then the node stops too, visibly: a node whose
//! agent is gone would hand out slices nobody enforces).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use gpuslice_host::cdi::DriverLibs;
use gpuslice_host::layout::HostLayout;
use gpuslice_host::provision::{ProvisionOptions, Provisioner};

use crate::config::NodeConfig;
use crate::deviceplugin::NodeOptions;
use crate::host_provider::HostProvider;
use crate::inventory::GpuInventory;
use crate::nvml::NvmlGpus;
use crate::{NodeError, dry_run};

/// What `gpuslice node` was asked to do.
#[derive(Debug, Clone)]
pub struct NodeCommand {
    /// The node config (the ConfigMap's `config.yaml`).
    pub config: PathBuf,
    /// This node's name.
    pub node_name: String,
    /// The kubelet's folder (`/var/lib/kubelet`).
    pub kubelet_dir: PathBuf,
    /// gpuslice's state folder on the host (ledgers, pinned configs, the interposer).
    pub state_dir: PathBuf,
    /// Where the per-slice CDI specs go.
    pub cdi_dir: PathBuf,
    /// Where the host's root file system is seen (`/driver-root` in the DaemonSet).
    pub driver_root: PathBuf,
    /// The interposer to give containers.
    pub lib: PathBuf,
    /// Only print what would be advertised.
    pub dry_run: bool,
    /// The agent's duties; `None` runs the device plugins alone (tests).
    pub agent: Option<gpuslice_agent::Options>,
}

/// Why `gpuslice node` stopped.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The node config, the GPUs or the device plugins.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The GPUs could not be listed.
    #[error(transparent)]
    Gpus(#[from] crate::inventory::GpuListError),
    /// The slices' files could not be set up.
    #[error("cannot set up the slices' files under {state_dir}: {source}")]
    Provision {
        /// The state folder.
        state_dir: PathBuf,
        /// What failed.
        source: Box<gpuslice_host::cdi::CdiError>,
    },
    /// The agent stopped.
    #[error("the node agent stopped: {0}")]
    Agent(String),
    /// The async runtime could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// Runs `gpuslice node`; returns the text to print (the dry run's inventory, or nothing).
pub fn run(cmd: &NodeCommand) -> Result<String, CommandError> {
    // The device plugins log through `tracing`: to standard error, like the agent.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    let config = NodeConfig::from_file(&cmd.config).map_err(NodeError::from)?;
    if cmd.dry_run {
        let gpus = NvmlGpus::init()?;
        return Ok(dry_run::dry_run(&config, &cmd.node_name, &gpus)?);
    }
    // The agent's probe forks: before NVML and before any thread.
    let agent = cmd.agent.as_ref().map(|options| {
        let (mode, samples) = gpuslice_agent::probe_and_log(options.skip_probe);
        (options.clone(), mode, samples)
    });
    let gpus: Arc<dyn GpuInventory> = Arc::new(NvmlGpus::init()?);
    let agent_dir = cmd
        .agent
        .as_ref()
        .and_then(|a| a.socket.parent().map(PathBuf::from))
        .unwrap_or_else(|| cmd.state_dir.join("agent"));
    let provisioner = Provisioner::new(&ProvisionOptions {
        layout: HostLayout::new(cmd.state_dir.clone(), agent_dir),
        cdi_dir: cmd.cdi_dir.clone(),
        lib: cmd.lib.clone(),
        dev_root: cmd.driver_root.clone(),
        driver_root: cmd.driver_root.clone(),
        driver_libs: DriverLibs::Auto,
    })
    .map_err(|source| CommandError::Provision {
        state_dir: cmd.state_dir.clone(),
        source: Box::new(source),
    })?;
    let provider = Arc::new(HostProvider::new(
        provisioner,
        Box::new(gpuslice_host::cdi::host::nvml_gpus),
    ));
    let (agent_stopped, mut agent_stop) = tokio::sync::oneshot::channel::<String>();
    if let Some((options, mode, samples)) = agent {
        std::thread::Builder::new()
            .name("agent".into())
            .spawn(move || {
                let why = match gpuslice_agent::run_probed(&options, mode, samples) {
                    Ok(()) => "its socket closed".to_string(),
                    Err(e) => e.to_string(),
                };
                let _ = agent_stopped.send(why);
            })
            .map_err(|e| CommandError::Agent(format!("cannot start its thread: {e}")))?;
    } else {
        drop(agent_stopped);
    }
    let mut options = NodeOptions::new(cmd.node_name.clone());
    options.device_plugin_dir = cmd.kubelet_dir.join("device-plugins");
    options.health_interval = Duration::from_secs(5);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    let has_agent = cmd.agent.is_some();
    let stopped_agent = std::sync::Mutex::new(None::<String>);
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
                why = &mut agent_stop, if has_agent => {
                    if let Ok(why) = why {
                        *stopped_agent.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
                    }
                }
            }
        };
        crate::run(&config, options, gpus, provider, shutdown).await
    })?;
    if let Some(why) = stopped_agent
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
    {
        return Err(CommandError::Agent(why));
    }
    Ok(String::new())
}
