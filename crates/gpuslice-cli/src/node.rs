//! `gpuslice node`: gpuslice on a Kubernetes node (the `gpuslice-node` crate does the
//! work): the device plugins (one resource per slice profile) and the DRA driver, each
//! on the GPUs the node config's mode gives it, and the node agent's duties for every
//! slice, in one process; `--dry-run` prints what the node would advertise and publish,
//! on a GPU host with no cluster.

use std::path::PathBuf;

use clap::Args;

/// Flags of `gpuslice node`.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// The node config (YAML: the `config.yaml` of the ConfigMap; docs/kubernetes.md).
    #[arg(long, value_name = "PATH")]
    pub config: PathBuf,

    /// This node's name, which picks its section of the config [default: $NODE_NAME,
    /// else the host name].
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Print the mode, the resources, device IDs and slices per GPU this node would
    /// advertise, and the ResourceSlice it would publish, and exit.
    #[arg(long)]
    pub dry_run: bool,

    /// The kubelet's folder (its `device-plugins/` holds `kubelet.sock`, its
    /// `plugins_registry/` the DRA driver's registration, its `plugins/` the driver's
    /// socket).
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,

    /// gpuslice's state folder on the host: the slices' ledgers and pinned configs.
    #[arg(long, value_name = "DIR", default_value = gpuslice_host::layout::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Where the per-slice CDI specs are written.
    #[arg(long, value_name = "DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: PathBuf,

    /// Where the host's root file system is seen (device nodes, driver files).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub driver_root: PathBuf,

    /// The interposer library [default: $GPUSLICE_LIB, else libgpuslice.so next to this
    /// program or in ../lib].
    #[arg(long, value_name = "PATH")]
    pub lib: Option<PathBuf>,

    /// The node agent's socket (the PID truth for `nvidia-smi` in containers).
    #[arg(long, value_name = "PATH", default_value = gpuslice_agent_protocol::DEFAULT_SOCKET)]
    pub agent_socket: PathBuf,

    /// Do not run the node agent's duties (PID truth, enforcement, reclaim) here.
    #[arg(long)]
    pub no_agent: bool,

    /// Where the node agent serves Prometheus metrics (`/metrics`, docs/metrics.md): an
    /// address and port, or `off`.
    #[arg(long, value_name = "ADDR", default_value = gpuslice_agent::metrics::DEFAULT_METRICS_ADDR, value_parser = crate::agent::parse_metrics_addr)]
    pub metrics_addr: crate::agent::MetricsAddr,

    /// Do not probe the driver at start-up (the agent then reports its mode as unknown).
    #[arg(long)]
    pub no_probe: bool,

    /// The kubeconfig for the API server (DRA) [default: the pod's service account, else
    /// $KUBECONFIG, else ~/.kube/config].
    #[arg(long, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// The kubelet's PodResources socket, which names the pod, container and claim of each
    /// slice in `/metrics` [default: <kubelet-dir>/pod-resources/kubelet.sock].
    #[arg(long, value_name = "PATH")]
    pub pod_resources_socket: Option<PathBuf>,
}

/// Why `gpuslice node` could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeCommandError {
    /// The interposer was not found.
    #[error(transparent)]
    Library(#[from] gpuslice_host::library::LibraryError),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] gpuslice_node::command::CommandError),
}

/// The node's name: the flag, else `$NODE_NAME` (set by the DaemonSet from the downward
/// API), else the host name.
fn node_name(flag: Option<&str>) -> String {
    if let Some(name) = flag.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    if let Ok(name) = std::env::var("NODE_NAME")
        && !name.is_empty()
    {
        return name;
    }
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// Runs `gpuslice node`; returns the text to print.
pub fn run(args: &NodeArgs) -> Result<String, NodeCommandError> {
    let lib = if args.dry_run {
        PathBuf::new()
    } else {
        gpuslice_host::library::find_library(
            args.lib.as_deref(),
            std::env::var_os(crate::plan::ENV_LIB).as_deref(),
            std::env::current_exe().ok().as_deref(),
        )?
    };
    let agent = (!args.no_agent).then(|| gpuslice_agent::Options {
        socket: args.agent_socket.clone(),
        skip_probe: args.no_probe,
        verbose: false,
        enforce: Some(gpuslice_agent::enforce::EnforceOptions {
            state_dir: args.state_dir.clone(),
            grace: 128 << 20,
            interval: std::time::Duration::from_millis(500),
            action: gpuslice_agent::enforce::Action::Kill,
        }),
        metrics: args.metrics_addr.options(&args.state_dir),
    });
    Ok(gpuslice_node::command::run(
        &gpuslice_node::command::NodeCommand {
            config: args.config.clone(),
            node_name: node_name(args.node_name.as_deref()),
            kubelet_dir: args.kubelet_dir.clone(),
            state_dir: args.state_dir.clone(),
            cdi_dir: args.cdi_dir.clone(),
            driver_root: args.driver_root.clone(),
            lib,
            dry_run: args.dry_run,
            agent,
            kubeconfig: args.kubeconfig.clone(),
            pod_resources_socket: args
                .pod_resources_socket
                .clone()
                .unwrap_or_else(|| gpuslice_node::podresources::default_socket(&args.kubelet_dir)),
        },
    )?)
}
