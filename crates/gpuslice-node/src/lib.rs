//! gpuslice on a Kubernetes node (`gpuslice node`): the node config ([`config`]), the
//! slices a node advertises ([`inventory`]), the kubelet device plugins that serve them
//! ([`deviceplugin`], over [`transport`]), the seam to the code that makes slices on the
//! host ([`provider`]; the real ones, over `gpuslice-host`, are in [`host_provider`]),
//! the DRA driver with consumable capacity ([`dra`], entry point [`dra::run_dra`]), which
//! GPU goes which way ([`modes`]), the dry run ([`dry_run`]), who holds each slice for the
//! metrics' pod labels ([`podresources`], the kubelet's PodResources API), and
//! `gpuslice node` as a whole ([`command`]).
//!
//! This is the only crate of gpuslice with async code (tokio, tonic); the interposer
//! never links it. The CLI calls [`command::run`] and stays thin.

pub mod command;
pub mod config;
pub mod deviceplugin;
pub mod dra;
pub mod dry_run;
pub mod host_provider;
pub mod inventory;
pub mod modes;
pub mod nvml;
pub mod podresources;
pub mod provider;
pub mod transport;

use std::future::Future;
use std::sync::Arc;

pub use config::{ConfigError, NodeConfig};
pub use deviceplugin::{NodeOptions, PluginError};
pub use inventory::{GpuInventory, InventoryError};
pub use provider::SliceProvider;

/// Why `gpuslice node` could not run.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The node config is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The node's slices could not be made (no GPU, oversubscribed, ...).
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// The device plugins could not be served.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The GPUs cannot be split between the device plugins and DRA.
    #[error(transparent)]
    Modes(#[from] modes::ModeError),
}

/// Runs the device plugins of this node until `shutdown` completes: picks the node's
/// settings from `config`, cuts the GPUs `gpus` lists into slices (refusing, before
/// serving anything, a config that would oversubscribe a GPU), then serves and registers
/// one device plugin per resource, through kubelet restarts, giving containers their
/// slices through `provider`.
pub async fn run(
    config: &NodeConfig,
    options: NodeOptions,
    gpus: Arc<dyn GpuInventory>,
    provider: Arc<dyn SliceProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let settings = config.for_node(&options.node_name)?;
    run_device_plugins(&settings, options, gpus, provider, shutdown).await
}

/// [`run`] for the settings of this node, already picked from the config.
pub async fn run_device_plugins(
    settings: &config::NodeSettings,
    options: NodeOptions,
    gpus: Arc<dyn GpuInventory>,
    provider: Arc<dyn SliceProvider>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let source = gpus.clone();
    let listed = tokio::task::spawn_blocking(move || source.gpus())
        .await
        .map_err(|e| InventoryError::List(inventory::GpuListError(e.to_string())))?
        .map_err(InventoryError::from)?;
    let inventory = Arc::new(inventory::Inventory::build(settings, listed)?);
    tracing::info!(
        "node {}: {} GPU(s), resources {}",
        options.node_name,
        inventory.gpus().len(),
        inventory
            .resources()
            .iter()
            .map(|r| format!("{} ({})", r.name, r.slices.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    deviceplugin::serve(inventory, gpus, provider, &options, shutdown).await?;
    Ok(())
}
