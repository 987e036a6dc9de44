//! The kubelet device plugins of a node: one gRPC `DevicePlugin` server per resource,
//! each on its own unix socket in the kubelet's device-plugin folder, registered with
//! the kubelet's `Registration` service on `kubelet.sock`.
//!
//! The folder is watched (inotify, through `notify`): when the kubelet restarts it wipes
//! the folder and creates `kubelet.sock` again, forgetting every plugin, so on each new
//! `kubelet.sock` the servers are started afresh on new sockets and registered again.
//! Registration is retried until the kubelet answers.

pub mod health;
pub mod preferred;
pub mod service;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubelet_api::deviceplugin::v1beta1::{
    DEVICE_PLUGIN_PATH, KUBELET_SOCKET_NAME, RegisterRequest, VERSION,
    device_plugin_server::DevicePluginServer, registration_client::RegistrationClient,
};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::inventory::{GpuInventory, Inventory};
use crate::provider::SliceProvider;
use crate::transport;
use health::HealthMap;
use service::{SlicePlugin, plugin_options};

/// How long a stopping server may take to close its connections.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Where and how the device plugins run.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// This node's name, which picks its section of the node config.
    pub node_name: String,
    /// The kubelet's device-plugin folder (holds `kubelet.sock` and the plugins' sockets).
    pub device_plugin_dir: PathBuf,
    /// How often the GPUs' health is checked.
    pub health_interval: Duration,
    /// How long to wait between attempts to register while the kubelet does not answer.
    pub register_retry: Duration,
    /// How long one `Register` call may take (the kubelet dials back during it).
    pub register_timeout: Duration,
}

impl NodeOptions {
    /// The defaults for `node_name`: the standard folder, health every 5 seconds,
    /// registration retried every 5 seconds with 10 seconds per attempt.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            device_plugin_dir: PathBuf::from(DEVICE_PLUGIN_PATH),
            health_interval: Duration::from_secs(5),
            register_retry: Duration::from_secs(5),
            register_timeout: Duration::from_secs(10),
        }
    }

    /// The kubelet's registration socket.
    pub fn kubelet_socket(&self) -> PathBuf {
        self.device_plugin_dir.join(KUBELET_SOCKET_NAME)
    }
}

/// Why the device plugins stopped.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The device-plugin folder is missing.
    #[error(
        "the kubelet's device-plugin folder {0} does not exist (is it mounted into the container?)"
    )]
    NoFolder(String),
    /// A plugin's socket could not be bound.
    #[error("cannot serve {resource} on {path}: {source}")]
    Bind {
        /// The resource.
        resource: String,
        /// The socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The folder could not be watched.
    #[error("cannot watch {dir} for the kubelet's socket: {source}")]
    Watch {
        /// The folder.
        dir: String,
        /// The error.
        source: notify::Error,
    },
}

/// Why one registration failed (it is retried).
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("the kubelet refused to register {resource}: {status}")]
    Refused {
        resource: String,
        status: tonic::Status,
    },
    #[error("the kubelet did not answer the registration of {resource} within {timeout:?}")]
    Timeout { resource: String, timeout: Duration },
}

/// The socket file name of a resource's plugin: `gpuslice-<profile>.sock`.
pub fn socket_name(profile: &str) -> String {
    format!("gpuslice-{profile}.sock")
}

/// The servers of one round (between two kubelet restarts).
struct Round {
    stop: CancellationToken,
    servers: JoinSet<(String, Result<(), tonic::transport::Error>)>,
}

impl Round {
    /// Binds every resource's socket and starts its server.
    fn start(
        inventory: &Arc<Inventory>,
        health: &watch::Receiver<HealthMap>,
        provider: &Arc<dyn SliceProvider>,
        dir: &Path,
        parent: &CancellationToken,
    ) -> Result<Self, PluginError> {
        let stop = parent.child_token();
        let mut servers = JoinSet::new();
        for (index, resource) in inventory.resources().iter().enumerate() {
            let path = dir.join(socket_name(&resource.profile));
            let listener = transport::bind_unix(&path).map_err(|source| PluginError::Bind {
                resource: resource.name.clone(),
                path: path.display().to_string(),
                source,
            })?;
            let plugin = SlicePlugin::new(
                inventory.clone(),
                index,
                health.clone(),
                provider.clone(),
                stop.clone(),
            );
            let server = tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(
                    transport::incoming(listener),
                    stop.clone().cancelled_owned(),
                );
            let name = resource.name.clone();
            servers.spawn(async move { (name, server.await) });
        }
        Ok(Self { stop, servers })
    }

    /// Stops the servers, giving their connections a short grace.
    async fn stop(mut self) {
        self.stop.cancel();
        let drained = tokio::time::timeout(STOP_GRACE, async {
            while self.servers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.servers.abort_all();
        }
    }
}

/// Registers one resource with the kubelet.
async fn register(
    kubelet: &Path,
    resource: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), RegisterError> {
    let mut client = RegistrationClient::new(transport::channel(kubelet));
    let request = RegisterRequest {
        version: VERSION.to_string(),
        endpoint: endpoint.to_string(),
        resource_name: resource.to_string(),
        options: Some(plugin_options()),
    };
    match tokio::time::timeout(timeout, client.register(request)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) => Err(RegisterError::Refused {
            resource: resource.to_string(),
            status,
        }),
        Err(_) => Err(RegisterError::Timeout {
            resource: resource.to_string(),
            timeout,
        }),
    }
}

/// Serves the device plugins of `inventory` until `shutdown`, through any number of
/// kubelet restarts. The health of the GPUs is checked every `options.health_interval`
/// and streamed to the kubelet.
pub async fn serve(
    inventory: Arc<Inventory>,
    gpus: Arc<dyn GpuInventory>,
    provider: Arc<dyn SliceProvider>,
    options: &NodeOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PluginError> {
    let dir = options.device_plugin_dir.clone();
    if !dir.is_dir() {
        return Err(PluginError::NoFolder(dir.display().to_string()));
    }
    let kubelet = options.kubelet_socket();
    let all = CancellationToken::new();
    let _stop_all_on_return = all.clone().drop_guard();

    let initial = {
        let (inv, source) = (inventory.clone(), gpus.clone());
        tokio::task::spawn_blocking(move || health::assess(&inv, source.as_ref()))
            .await
            .unwrap_or_default()
    };
    let (health_tx, health_rx) = watch::channel(initial);
    tokio::spawn(health::monitor(
        inventory.clone(),
        gpus,
        options.health_interval,
        health_tx,
        all.child_token(),
    ));

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event| {
        let _ = events_tx.send(event);
    })
    .map_err(|source| PluginError::Watch {
        dir: dir.display().to_string(),
        source,
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|source| PluginError::Watch {
            dir: dir.display().to_string(),
            source,
        })?;

    let endpoints: Vec<(String, String)> = inventory
        .resources()
        .iter()
        .map(|r| (r.name.clone(), socket_name(&r.profile)))
        .collect();
    tokio::pin!(shutdown);
    loop {
        let mut round = Round::start(&inventory, &health_rx, &provider, &dir, &all)?;
        tracing::info!(
            "serving {} on {}",
            endpoints
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            dir.display()
        );
        let mut unregistered: Vec<&(String, String)> = endpoints.iter().collect();
        let mut next_try = Some(Instant::now());
        let restart = loop {
            tokio::select! {
                () = &mut shutdown => break false,
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        let kubelet_new = matches!(event.kind, EventKind::Create(_))
                            && event.paths.iter().any(|p| p == &kubelet);
                        if kubelet_new {
                            tracing::info!("{} was created again: the kubelet restarted", kubelet.display());
                            break true;
                        }
                    }
                    Some(Err(e)) => tracing::warn!("watching {}: {e}", dir.display()),
                    None => break false,
                },
                Some(ended) = round.servers.join_next() => {
                    match ended {
                        Ok((resource, Ok(()))) => {
                            tracing::error!("the server of {resource} stopped; starting again");
                        }
                        Ok((resource, Err(e))) => {
                            tracing::error!("the server of {resource} failed: {e}; starting again");
                        }
                        Err(e) => tracing::error!("a device plugin server ended: {e}; starting again"),
                    }
                    tokio::time::sleep(options.register_retry).await;
                    break true;
                }
                () = sleep_until(next_try) => {
                    let mut still = Vec::new();
                    for entry in unregistered {
                        let (resource, endpoint) = entry;
                        match register(&kubelet, resource, endpoint, options.register_timeout).await {
                            Ok(()) => tracing::info!("registered {resource} with the kubelet"),
                            Err(e) => {
                                tracing::warn!("{e}; trying again in {:?}", options.register_retry);
                                still.push(entry);
                            }
                        }
                    }
                    unregistered = still;
                    next_try = (!unregistered.is_empty())
                        .then(|| Instant::now() + options.register_retry);
                }
            }
        };
        round.stop().await;
        if !restart {
            for (_, endpoint) in &endpoints {
                let _ = std::fs::remove_file(dir.join(endpoint));
            }
            return Ok(());
        }
    }
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
