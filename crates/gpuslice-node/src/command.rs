//! `gpuslice node` as a whole, for the CLI to call: on a Kubernetes node, the device
//! plugins (one resource per slice profile) and the DRA driver (any fraction of a GPU),
//! each on the GPUs the node config's mode gives it ([`crate::modes`]), slices made by
//! the host crate's provisioner, and the node agent's duties for every slice (the
//! PID-truth socket `nvidia-smi` asks, host-side memory enforcement, reclaiming the
//! ledger entries of dead containers), in one process; or, with `dry_run`, what it
//! would advertise and publish.
//!
//! Mode `auto` asks the API server at start: DRA when it serves `resource.k8s.io/v1` and
//! keeps the published devices' `allowMultipleAllocations` (consumable capacity on),
//! the device plugins otherwise; no API server configured (no in-cluster account, no
//! `--kubeconfig`, no `$KUBECONFIG`) also means the device plugins.
//!
//! With the agent's `/metrics` on, a task keeps the table of who holds each slice
//! ([`crate::podresources`]) from the kubelet's PodResources socket, for the metrics' pod
//! labels.
//!
//! Order matters: the agent's driver probe forks, so it runs first, before NVML is
//! loaded and before any thread starts; then the agent serves from a thread of its own,
//! and the device plugins from a tokio runtime on the calling thread, until SIGTERM or
//! SIGINT, or until the agent stops (then the node stops too, visibly: a node whose
//! agent is gone would hand out slices nobody enforces).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gpuslice_host::cdi::DriverLibs;
use gpuslice_host::layout::HostLayout;
use gpuslice_host::provision::{ProvisionOptions, Provisioner};

use tokio_util::sync::CancellationToken;

use crate::config::{GpuSelection, Mode, NodeConfig, NodeSettings};
use crate::deviceplugin::NodeOptions;
use crate::dra::{DraError, DraOptions};
use crate::host_provider::{HostClaimProvider, HostProvider, HostSlices};
use crate::inventory::{GpuInfo, GpuInventory};
use crate::modes::{Decision, OnlyGpus, assign, fixed_decision};
use crate::nvml::NvmlGpus;
use crate::podresources::{PodOwners, PodResourcesOptions};
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
    /// The kubeconfig for the API server (DRA); `None`: the pod's service account, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// The kubelet's PodResources socket, for the pod labels of the agent's `/metrics`
    /// (`/var/lib/kubelet/pod-resources/kubelet.sock`).
    pub pod_resources_socket: PathBuf,
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
    /// The DRA driver could not run.
    #[error("node {node}, mode {mode}: {source}")]
    Dra {
        /// This node.
        node: String,
        /// Its mode.
        mode: Mode,
        /// What failed.
        source: DraError,
    },
    /// DRA needs the API server, and no way to reach it is configured.
    #[error("node {node}, mode {mode}: DRA needs the API server: {detail}")]
    NoApiServer {
        /// This node.
        node: String,
        /// Its mode.
        mode: Mode,
        /// Why no client could be made.
        detail: String,
    },
    /// Mode `auto` found no DRA, and the config gives the device plugins no slices.
    #[error(
        "node {node}, mode auto: {why}, so the device plugins would serve this node, and the node config {origin} gives it no profiles (nor split): add profiles, or run a cluster with DRA and consumable capacity"
    )]
    NoFallback {
        /// This node.
        node: String,
        /// Why DRA cannot serve.
        why: String,
        /// The config.
        origin: String,
    },
}

/// A client of the API server: from `kubeconfig` when given, else the pod's service
/// account, `$KUBECONFIG` or `~/.kube/config`.
async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, String> {
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| format!("cannot read the kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| format!("the kubeconfig {}: {e}", path.display()))?
        }
        None => kube::Config::infer().await.map_err(|e| {
            format!("no in-cluster service account, --kubeconfig or $KUBECONFIG ({e})")
        })?,
    };
    crate::dra::api_client(config).map_err(|e| format!("cannot make an API client: {e}"))
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
    let settings = config.for_node(&cmd.node_name).map_err(NodeError::from)?;
    if cmd.dry_run {
        let gpus = NvmlGpus::init()?;
        return Ok(dry_run::dry_run(
            &config,
            &cmd.node_name,
            &gpus,
            gpus.driver_version().as_deref(),
        )?);
    }
    // The agent's probe forks: before NVML and before any thread.
    // Who holds each slice, for the labels of `/metrics` (when it is served).
    let pod_owners = cmd
        .agent
        .as_ref()
        .and_then(|a| a.metrics.as_ref())
        .map(|_| PodOwners::new());
    let agent = cmd.agent.as_ref().map(|options| {
        let (mode, samples) = gpuslice_agent::probe_and_log(options.skip_probe);
        let mut options = options.clone();
        if let (Some(metrics), Some(owners)) = (&mut options.metrics, &pod_owners) {
            metrics.owners = Some(owners.clone());
        }
        (options, mode, samples)
    });
    let nvml = Arc::new(NvmlGpus::init()?);
    let driver_version = nvml.driver_version();
    let gpus: Arc<dyn GpuInventory> = nvml;
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
    let host = HostSlices::new(provisioner, Box::new(gpuslice_host::cdi::host::nvml_gpus));
    let (agent_stopped, agent_stop) = tokio::sync::oneshot::channel::<String>();
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CommandError::Runtime)?;
    let has_agent = cmd.agent.is_some();
    let stopped_agent = Arc::new(Mutex::new(None::<String>));
    let stop = CancellationToken::new();
    runtime.block_on(async {
        tokio::spawn(watch_for_stop(
            stop.clone(),
            has_agent.then_some(agent_stop),
            stopped_agent.clone(),
        ));
        if let Some(owners) = pod_owners {
            let mut options = PodResourcesOptions::new(cmd.pod_resources_socket.clone());
            options.dra_state = Some(cmd.state_dir.join("dra"));
            tokio::spawn(crate::podresources::refresh(owners, options, stop.clone()));
        }
        let node = Node {
            cmd,
            settings: &settings,
            origin: config.origin(),
            gpus,
            host,
            driver_version,
            stop: stop.clone(),
        };
        node.serve().await
    })?;
    if let Some(why) = stopped_agent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
    {
        return Err(CommandError::Agent(why));
    }
    Ok(String::new())
}

/// Cancels `stop` on SIGTERM, SIGINT, or when the agent stops (recording why: its
/// error, or that its thread ended without one, a panic). Signals that cannot be
/// watched stop the node at once, with the reason recorded the same way.
async fn watch_for_stop(
    stop: CancellationToken,
    agent_stop: Option<tokio::sync::oneshot::Receiver<String>>,
    stopped_agent: Arc<Mutex<Option<String>>>,
) {
    let record = |why: String| {
        *stopped_agent.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
    };
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            record(format!("cannot watch for SIGTERM: {e}"));
            stop.cancel();
            return;
        }
    };
    let agent = async {
        match agent_stop {
            Some(rx) => Some(rx.await.unwrap_or_else(|_| {
                "its thread ended without saying why (it panicked)".to_string()
            })),
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
        () = stop.cancelled() => {}
        why = agent => {
            if let Some(why) = why {
                record(why);
            }
        }
    }
    stop.cancel();
}

/// One node's serving, once set up.
struct Node<'a> {
    cmd: &'a NodeCommand,
    settings: &'a NodeSettings,
    origin: &'a str,
    gpus: Arc<dyn GpuInventory>,
    host: Arc<HostSlices>,
    driver_version: Option<String>,
    stop: CancellationToken,
}

impl Node<'_> {
    fn dra_options(&self) -> DraOptions {
        let mut options = DraOptions::new(self.cmd.node_name.clone());
        options.registry_dir = self.cmd.kubelet_dir.join("plugins_registry");
        options.plugins_dir = self.cmd.kubelet_dir.join("plugins");
        options.state_dir = self.cmd.state_dir.join("dra");
        options.reserve = self.settings.reserve;
        options.driver_version = self.driver_version.clone();
        options
    }

    fn dra_error(&self, source: DraError) -> CommandError {
        CommandError::Dra {
            node: self.cmd.node_name.clone(),
            mode: self.settings.mode,
            source,
        }
    }

    /// Keeps out of the device plugins the GPUs on which an earlier run prepared DRA
    /// claims that are still recorded (the node's mode or `draGpus` changed since): their
    /// slices hold memory the profiles would promise again. They come back on a later
    /// start, once the claims are released (through DRA: mode auto or dra again).
    fn keep_out_claimed(
        &self,
        assigned: &mut crate::modes::Assignment,
        options: &DraOptions,
    ) -> Result<(), CommandError> {
        let prepared = crate::dra::StateDir::prepared_in(&options.state_dir)
            .map_err(|e| self.dra_error(e.into()))?;
        for claim in &prepared {
            for slice in &claim.slices {
                let uuid = gpuslice_config::canonical_uuid(&slice.gpu_uuid);
                if assigned.dra.contains(&uuid) || !assigned.device_plugin.remove(&uuid) {
                    continue;
                }
                tracing::warn!(
                    "node {}: {uuid} kept out of the device plugins: ResourceClaim {}/{} is still prepared on it through DRA; release it (delete its pods, with this node in mode auto or dra) and restart",
                    self.cmd.node_name,
                    claim.namespace,
                    claim.name
                );
            }
        }
        Ok(())
    }

    /// Decides the mode, splits the GPUs, and serves each way on its GPUs until stopped.
    /// Mode auto asks the cluster before anything is served; the other modes know their
    /// GPUs at once, so their device plugins serve while DRA waits for the API server.
    async fn serve(&self) -> Result<(), CommandError> {
        let node = &self.cmd.node_name;
        let mode = self.settings.mode;
        let source = self.gpus.clone();
        let listed: Vec<GpuInfo> = tokio::task::spawn_blocking(move || source.gpus())
            .await
            .map_err(|e| crate::inventory::GpuListError(e.to_string()))??;
        let client = match mode {
            Mode::DevicePlugin => None,
            _ => match kube_client(self.cmd.kubeconfig.as_deref()).await {
                Ok(client) => Some(client),
                // No API server configured at all is a definite answer; a kubeconfig
                // given and unusable is a mistake to show.
                Err(detail) if mode == Mode::Auto && self.cmd.kubeconfig.is_none() => {
                    tracing::info!("node {node}, mode auto: {detail}; the device plugins serve it");
                    None
                }
                Err(detail) => {
                    return Err(CommandError::NoApiServer {
                        node: node.clone(),
                        mode,
                        detail,
                    });
                }
            },
        };
        let options = self.dra_options();
        let only = |uuids: &std::collections::BTreeSet<String>| -> Vec<GpuInfo> {
            listed
                .iter()
                .filter(|g| uuids.contains(&gpuslice_config::canonical_uuid(&g.uuid)))
                .cloned()
                .collect()
        };
        let (decision, publisher) = match (fixed_decision(mode), &client) {
            (Some(decision), _) => (decision, None),
            (None, None) => (Decision::DevicePlugin, None),
            (None, Some(client)) => {
                let all = assign(self.settings, Decision::Dra, listed.clone())
                    .map_err(NodeError::from)?;
                let dra_gpus = only(&all.dra);
                let started = tokio::select! {
                    () = self.stop.cancelled() => return Ok(()),
                    started = crate::dra::start_publishing(&options, &dra_gpus, client.clone()) => started,
                };
                match started {
                    Ok(publisher) => (Decision::Dra, Some(publisher)),
                    Err(DraError::Unavailable(why)) => {
                        if self.settings.slicing.is_none() {
                            return Err(CommandError::NoFallback {
                                node: node.clone(),
                                why,
                                origin: self.origin.to_string(),
                            });
                        }
                        tracing::warn!(
                            "node {node}, mode auto: {why}; the device plugins serve it"
                        );
                        (Decision::DevicePlugin, None)
                    }
                    Err(e) => return Err(self.dra_error(e)),
                }
            }
        };
        let mut assigned =
            assign(self.settings, decision, listed.clone()).map_err(NodeError::from)?;
        self.keep_out_claimed(&mut assigned, &options)?;
        tracing::info!(
            "node {node}, mode {mode}: device plugins on {} GPU(s), DRA on {}",
            assigned.device_plugin.len(),
            assigned.dra.len()
        );
        let device_plugins = async {
            if assigned.device_plugin.is_empty() {
                return Ok(());
            }
            let mut settings = self.settings.clone();
            // The inventory sees only these GPUs: all of them are offered.
            settings.gpus = GpuSelection::All;
            let mut options = NodeOptions::new(node.clone());
            options.device_plugin_dir = self.cmd.kubelet_dir.join("device-plugins");
            options.health_interval = Duration::from_secs(5);
            let served = crate::run_device_plugins(
                &settings,
                options,
                OnlyGpus::new(self.gpus.clone(), assigned.device_plugin.clone()),
                Arc::new(HostProvider::new(self.host.clone())),
                self.stop.clone().cancelled_owned(),
            )
            .await
            .map_err(CommandError::from);
            self.stop.cancel();
            served
        };
        let dra = async {
            if assigned.dra.is_empty() {
                return Ok(());
            }
            let Some(client) = client.clone() else {
                return Err(CommandError::NoApiServer {
                    node: node.clone(),
                    mode,
                    detail: "no client".into(),
                });
            };
            let publisher = match publisher {
                Some(publisher) => publisher,
                None => {
                    let dra_gpus = only(&assigned.dra);
                    let started = tokio::select! {
                        () = self.stop.cancelled() => return Ok(()),
                        started = crate::dra::start_publishing(&options, &dra_gpus, client.clone()) => started,
                    };
                    started.map_err(|e| self.dra_error(e))?
                }
            };
            crate::dra::serve(
                options.clone(),
                OnlyGpus::new(self.gpus.clone(), assigned.dra.clone()),
                client,
                publisher,
                Arc::new(HostClaimProvider::new(self.host.clone())),
                self.stop.clone().cancelled_owned(),
            )
            .await
            .map_err(|e| self.dra_error(e))
        };
        let dra = async {
            let served = dra.await;
            // When DRA ran and ended (stopped, or failed), the node ends with it.
            if !assigned.dra.is_empty() {
                self.stop.cancel();
            }
            served
        };
        let (device_plugins, dra) = tokio::join!(device_plugins, dra);
        device_plugins.and(dra)
    }
}
