//! The health of the offered GPUs, watched: a task asks the [`GpuInventory`] every
//! interval and publishes a [`HealthMap`] when anything changed. A GPU that NVML no
//! longer lists is unhealthy; when listing fails altogether, every GPU is (fail closed:
//! the kubelet stops placing pods on slices nobody can vouch for).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::inventory::{GpuHealth, GpuInventory, Inventory};

/// Health of each offered GPU, by UUID.
pub type HealthMap = BTreeMap<String, GpuHealth>;

/// The health of the offered GPUs given what the inventory lists now.
pub fn assess(inventory: &Inventory, gpus: &dyn GpuInventory) -> HealthMap {
    let listed = gpus.gpus();
    inventory
        .gpus()
        .iter()
        .map(|offered| {
            let health = match &listed {
                Err(e) => GpuHealth::Unhealthy(e.to_string()),
                Ok(list) => list
                    .iter()
                    .find(|g| gpuslice_config::canonical_uuid(&g.uuid) == offered.uuid)
                    .map_or_else(
                        || GpuHealth::Unhealthy("the GPU is gone: NVML no longer lists it".into()),
                        |g| g.health.clone(),
                    ),
            };
            (offered.uuid.clone(), health)
        })
        .collect()
}

/// Checks the GPUs every `interval` until `stop`, publishing changes on `tx`.
pub async fn monitor(
    inventory: Arc<Inventory>,
    gpus: Arc<dyn GpuInventory>,
    interval: Duration,
    tx: watch::Sender<HealthMap>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let inv = inventory.clone();
        let source = gpus.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || assess(&inv, source.as_ref())).await
        else {
            continue;
        };
        tx.send_if_modified(|current| {
            if *current == now {
                return false;
            }
            for (uuid, health) in &now {
                if current.get(uuid) != Some(health) {
                    match health {
                        GpuHealth::Healthy => tracing::info!(gpu = %uuid, "GPU healthy again"),
                        GpuHealth::Unhealthy(why) => {
                            tracing::warn!(gpu = %uuid, "GPU unhealthy: {why}")
                        }
                    }
                }
            }
            *current = now;
            true
        });
    }
}
