//! `gpuslice node` as a DRA driver (`gpuslice.io`) with consumable capacity: any fraction
//! of a GPU, placed by the stock scheduler.
//!
//! * [`publish`]: the node's ResourceSlice, each GPU one shareable device with `memory`
//!   and `compute` capacities, kept in the API server.
//! * [`claims`]: from a ResourceClaim's allocation to the slices to make.
//! * [`plugin`]: the kubelet plugin (`NodePrepareResources`, `NodeUnprepareResources`)
//!   and its registration with the kubelet's plugin watcher.
//! * [`provider`]: the seam to the code that makes slices on the host.
//! * [`state`]: what was prepared, on disk, across restarts.
//! * [`quantity`]: Kubernetes quantities.
//!
//! [`run_dra`] runs it all: [`start_publishing`] first (which also finds out whether the
//! cluster takes the driver at all), then [`serve`].

pub mod claims;
pub mod plugin;
pub mod provider;
pub mod publish;
pub mod quantity;
pub mod state;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kubelet_api::dra::{v1, v1beta1};
use kubelet_api::pluginregistration::v1 as reg;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::DEFAULT_RESERVE;
use crate::inventory::{GpuInfo, GpuInventory, GpuListError};
use crate::transport;
pub use plugin::{ClaimRef, Preparer};
pub use provider::{ClaimSliceProvider, TestClaimSlices};
pub use publish::Publisher;
pub use state::StateDir;

/// The DRA driver's name (and the domain of its attributes and capacities).
pub const DRIVER_NAME: &str = "gpuslice.io";
/// The kubelet's folder of plugin sockets.
pub const KUBELET_PLUGINS_PATH: &str = "/var/lib/kubelet/plugins";
/// Where the plugin keeps what it prepared.
pub const STATE_PATH: &str = "/var/lib/gpuslice/dra";

/// Where and how the DRA driver runs.
#[derive(Debug, Clone)]
pub struct DraOptions {
    /// This node's name (the pool's name and the slice's `nodeName`).
    pub node_name: String,
    /// The kubelet's plugin watcher folder (`plugins_registry`).
    pub registry_dir: PathBuf,
    /// The kubelet's plugins folder; the service is on `<it>/gpuslice.io/dra.sock`.
    pub plugins_dir: PathBuf,
    /// The folder of prepared claims.
    pub state_dir: PathBuf,
    /// Memory of each GPU kept out of every claim.
    pub reserve: u64,
    /// The NVIDIA driver's version, published as `driverVersion`.
    pub driver_version: Option<String>,
    /// How often the GPUs are listed and the ResourceSlice checked (and republished when
    /// the kubelet wiped it).
    pub resync: Duration,
    /// How long one API server call may take.
    pub api_timeout: Duration,
}

impl DraOptions {
    /// The defaults for `node_name`: the kubelet's standard folders, state in
    /// [`STATE_PATH`], the default reserve, a check every 10 seconds.
    pub fn new(node_name: impl Into<String>) -> Self {
        Self {
            node_name: node_name.into(),
            registry_dir: PathBuf::from(reg::PLUGINS_REGISTRY_PATH),
            plugins_dir: PathBuf::from(KUBELET_PLUGINS_PATH),
            state_dir: PathBuf::from(STATE_PATH),
            reserve: DEFAULT_RESERVE,
            driver_version: None,
            resync: Duration::from_secs(10),
            api_timeout: Duration::from_secs(10),
        }
    }

    /// The registration socket: `<registry>/gpuslice.io-reg.sock`.
    pub fn registration_socket(&self) -> PathBuf {
        self.registry_dir.join(format!("{DRIVER_NAME}-reg.sock"))
    }

    /// The DRA service's socket: `<plugins>/gpuslice.io/dra.sock`.
    pub fn endpoint(&self) -> PathBuf {
        self.plugins_dir.join(DRIVER_NAME).join("dra.sock")
    }
}

/// Why the DRA driver could not run.
#[derive(Debug, thiserror::Error)]
pub enum DraError {
    /// A socket could not be served.
    #[error("cannot serve the DRA plugin on {path}: {source}")]
    Bind {
        /// The socket.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// The state folder is unusable.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The GPUs could not be listed at start.
    #[error(transparent)]
    Gpus(#[from] GpuListError),
    /// The cluster cannot take the driver: no DRA, or no consumable capacity.
    #[error("the cluster cannot take the DRA driver {DRIVER_NAME}: {0}")]
    Unavailable(String),
    /// A server of the plugin stopped by itself.
    #[error("the DRA driver {DRIVER_NAME} cannot go on: {0}")]
    Stopped(String),
    /// The API server refused the slice for good (no permission, ...).
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

/// A client of the API server for `config`, with TLS through ring: rustls cannot pick a
/// provider by itself when a build enables more than one (a workspace build does), and
/// would panic at the first connection. Installing it again is no error.
pub fn api_client(config: kube::Config) -> Result<kube::Client, kube::Error> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    kube::Client::try_from(config)
}

async fn list(gpus: &Arc<dyn GpuInventory>) -> Result<Vec<GpuInfo>, GpuListError> {
    let source = gpus.clone();
    tokio::task::spawn_blocking(move || source.gpus())
        .await
        .map_err(|e| GpuListError(e.to_string()))?
}

fn bind(path: &Path) -> Result<tokio::net::UnixListener, DraError> {
    let err = |source| DraError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    transport::bind_unix(path).map_err(err)
}

/// Publishes the node's ResourceSlice of `gpus` for the first time, and so finds out
/// whether the cluster takes the driver: [`DraError::Unavailable`] when the API server
/// does not serve `resource.k8s.io/v1`, has no DeviceClass `gpuslice.io`, or drops
/// `allowMultipleAllocations` (consumable capacity off: [`publish::missing_dra`]). Then
/// a slice an earlier run published is deleted, and until it is gone nothing is
/// returned, so that the caller never offers the GPUs another way while the scheduler
/// can still allocate them. Only definite answers count: while the API server cannot be
/// reached, or answers with a passing error, it tries again every
/// [`DraOptions::resync`], logging why, until it succeeds or the caller gives up.
pub async fn start_publishing(
    options: &DraOptions,
    gpus: &[GpuInfo],
    client: kube::Client,
) -> Result<Publisher, DraError> {
    let mut publisher = Publisher::new(
        client.clone(),
        &options.node_name,
        options.reserve,
        options.driver_version.clone(),
    );
    loop {
        let wanted = publisher.wanted(gpus);
        let attempt = async {
            if let Some(why) = publish::missing_dra(&client, &wanted)
                .await
                .map_err(|source| publish::PublishError::Api {
                    name: publish::slice_name(&options.node_name),
                    source: Box::new(source),
                })?
            {
                return Err(DraError::Unavailable(why));
            }
            publisher.sync(gpus).await.map_err(DraError::Publish)
        };
        let why = match tokio::time::timeout(options.api_timeout, attempt).await {
            Ok(Ok(done)) => {
                tracing::info!(
                    "ResourceSlice {}: {done:?}",
                    publish::slice_name(&options.node_name)
                );
                return Ok(publisher);
            }
            Ok(Err(DraError::Publish(e @ publish::PublishError::ConsumableCapacityOff { .. }))) => {
                withdraw(&mut publisher, options).await?;
                return Err(DraError::Unavailable(e.to_string()));
            }
            Ok(Err(DraError::Unavailable(why))) => {
                withdraw(&mut publisher, options).await?;
                return Err(DraError::Unavailable(why));
            }
            Ok(Err(DraError::Publish(e))) if e.is_transient() => e.to_string(),
            Ok(Err(e)) => return Err(e),
            Err(_) => format!(
                "the API server did not answer within {:?}",
                options.api_timeout
            ),
        };
        tracing::warn!("{why}; trying again in {:?}", options.resync);
        tokio::time::sleep(options.resync).await;
    }
}

/// Deletes the node's slice, trying again while the API server is away: returns once
/// it is gone, or with the API server's definite refusal.
async fn withdraw(publisher: &mut Publisher, options: &DraOptions) -> Result<(), DraError> {
    loop {
        let why = match tokio::time::timeout(options.api_timeout, publisher.withdraw()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) if e.is_transient() => e.to_string(),
            Ok(Err(e)) => return Err(DraError::Publish(e)),
            Err(_) => format!(
                "the API server did not answer within {:?}",
                options.api_timeout
            ),
        };
        tracing::warn!(
            "cannot delete ResourceSlice {} yet: {why}; trying again in {:?}",
            publish::slice_name(&options.node_name),
            options.resync
        );
        tokio::time::sleep(options.resync).await;
    }
}

/// Runs the DRA driver of this node until `shutdown` completes: [`start_publishing`],
/// then [`serve`].
pub async fn run_dra(
    options: DraOptions,
    gpus: Arc<dyn GpuInventory>,
    client: kube::Client,
    provider: Arc<dyn ClaimSliceProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DraError> {
    let listed = list(&gpus).await?;
    tokio::pin!(shutdown);
    let publisher = tokio::select! {
        () = &mut shutdown => return Ok(()),
        publisher = start_publishing(&options, &listed, client.clone()) => publisher?,
    };
    serve(options, gpus, client, publisher, provider, shutdown).await
}

/// Serves the DRA driver of this node until `shutdown` completes: keeps the node's
/// ResourceSlice published through `publisher` (after [`start_publishing`]), serves
/// `dra.v1.DRAPlugin` and `dra.v1beta1.DRAPlugin` on [`DraOptions::endpoint`] and
/// `Registration` on [`DraOptions::registration_socket`], making claims' slices through
/// `provider`.
///
/// When it cannot go on (a socket cannot be served, a server stops, the API server
/// starts dropping `allowMultipleAllocations`), it deletes the slice before returning
/// the error: a slice with no plugin behind it would have the scheduler allocate claims
/// no one prepares.
pub async fn serve(
    options: DraOptions,
    gpus: Arc<dyn GpuInventory>,
    client: kube::Client,
    mut publisher: Publisher,
    provider: Arc<dyn ClaimSliceProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DraError> {
    let served = serve_published(&options, gpus, client, &mut publisher, provider, shutdown).await;
    if let Err(e) = &served {
        tracing::error!("the DRA driver stops: {e}; deleting its ResourceSlice");
        let gone = tokio::time::timeout(
            options.api_timeout.saturating_mul(3),
            withdraw(&mut publisher, &options),
        )
        .await;
        if !matches!(gone, Ok(Ok(()))) {
            tracing::error!(
                "ResourceSlice {} could not be deleted; the kubelet removes it once the driver stays unregistered",
                publish::slice_name(&options.node_name)
            );
        }
    }
    served
}

async fn serve_published(
    options: &DraOptions,
    gpus: Arc<dyn GpuInventory>,
    client: kube::Client,
    publisher: &mut Publisher,
    provider: Arc<dyn ClaimSliceProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DraError> {
    let state = StateDir::open(&options.state_dir)?;
    let listed = list(&gpus).await?;
    let (gpus_tx, gpus_rx) = watch::channel(listed);
    let preparer = Arc::new(Preparer::new(
        client.clone(),
        &options.node_name,
        options.reserve,
        gpus_rx,
        provider,
        state,
        options.api_timeout,
    ));
    let stop = CancellationToken::new();
    let _stop_on_return = stop.clone().drop_guard();

    let endpoint = options.endpoint();
    let dra = tonic::transport::Server::builder()
        .add_service(v1::dra_plugin_server::DraPluginServer::new(plugin::DraV1(
            preparer.clone(),
        )))
        .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(
            plugin::DraV1beta1(preparer),
        ))
        .serve_with_incoming_shutdown(
            transport::incoming(bind(&endpoint)?),
            stop.clone().cancelled_owned(),
        );
    let registration_socket = options.registration_socket();
    let (status_tx, _) = watch::channel(None);
    let registration = tonic::transport::Server::builder()
        .add_service(reg::registration_server::RegistrationServer::new(
            plugin::RegistrationService {
                info: reg::PluginInfo {
                    r#type: reg::DRA_PLUGIN_TYPE.to_string(),
                    name: DRIVER_NAME.to_string(),
                    endpoint: endpoint.display().to_string(),
                    supported_versions: vec![
                        v1::SERVICE_VERSION.to_string(),
                        v1beta1::SERVICE_VERSION.to_string(),
                    ],
                },
                status: status_tx,
            },
        ))
        .serve_with_incoming_shutdown(
            transport::incoming(bind(&registration_socket)?),
            stop.clone().cancelled_owned(),
        );
    let mut dra = tokio::spawn(dra);
    let mut registration = tokio::spawn(registration);
    tracing::info!(
        "DRA driver {DRIVER_NAME}: serving {} and {}",
        endpoint.display(),
        registration_socket.display()
    );

    let mut tick = tokio::time::interval(options.resync);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let stopped =
        |which: &str, r: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>| {
            let why = match r {
                Ok(Ok(())) => "it stopped".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            DraError::Stopped(format!("the {which} server: {why}"))
        };
    let outcome = loop {
        tokio::select! {
            () = &mut shutdown => break Ok(()),
            r = &mut dra => break Err(stopped("DRA plugin", r)),
            r = &mut registration => break Err(stopped("registration", r)),
            _ = tick.tick() => {
                match list(&gpus).await {
                    Ok(now) => { gpus_tx.send_if_modified(|old| {
                        let changed = *old != now;
                        *old = now;
                        changed
                    }); }
                    Err(e) => tracing::warn!("{e}; keeping the GPUs listed before"),
                }
                let current = gpus_tx.borrow().clone();
                match tokio::time::timeout(options.api_timeout, publisher.sync(&current)).await {
                    Ok(Ok(publish::Synced::Unchanged)) => {}
                    Ok(Ok(done)) => tracing::info!("ResourceSlice {}: {done:?}", publish::slice_name(&options.node_name)),
                    Ok(Err(e @ publish::PublishError::ConsumableCapacityOff { .. })) => {
                        break Err(DraError::Unavailable(e.to_string()));
                    }
                    Ok(Err(e)) => tracing::warn!("{e}; trying again in {:?}", options.resync),
                    Err(_) => tracing::warn!("the API server did not answer within {:?}; trying again", options.api_timeout),
                }
            }
        }
    };
    stop.cancel();
    for server in [dra, registration] {
        if !server.is_finished() {
            let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        }
    }
    let _ = std::fs::remove_file(&registration_socket);
    let _ = std::fs::remove_file(&endpoint);
    outcome
}
