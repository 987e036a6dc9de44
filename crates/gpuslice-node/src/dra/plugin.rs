//! The DRA kubelet plugin's services: [`Preparer`] does `NodePrepareResources` and
//! `NodeUnprepareResources` (read the claim, make or remove its slices, keep the state on
//! disk), [`DraV1`] and [`DraV1beta1`] serve it as `dra.v1.DRAPlugin` and
//! `dra.v1beta1.DRAPlugin`, and [`RegistrationService`] answers the kubelet's plugin
//! watcher (`pluginregistration.Registration`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::Api;
use kubelet_api::dra::{v1, v1beta1};
use kubelet_api::pluginregistration::v1 as reg;
use tokio::sync::{Mutex, watch};
use tonic::{Request, Response, Status};

use super::claims::{self, ClaimError};
use super::provider::ClaimSliceProvider;
use super::state::{PreparedClaim, StateDir};
use crate::inventory::GpuInfo;

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    /// Its namespace.
    pub namespace: String,
    /// Its UID.
    pub uid: String,
    /// Its name.
    pub name: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Prepares and unprepares claims. Calls are serialized: the kubelet sends few, and
/// one at a time keeps the state files and the slices in step.
pub struct Preparer {
    client: kube::Client,
    node: String,
    reserve: u64,
    gpus: watch::Receiver<Vec<GpuInfo>>,
    provider: Arc<dyn ClaimSliceProvider>,
    state: StateDir,
    api_timeout: Duration,
    lock: Mutex<()>,
}

impl std::fmt::Debug for Preparer {
    /// What it prepares for and where it keeps state; `kube::Client` has no `Debug`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparer")
            .field("node", &self.node)
            .field("reserve", &self.reserve)
            .field("gpus", &self.gpus)
            .field("provider", &self.provider)
            .field("state", &self.state)
            .field("api_timeout", &self.api_timeout)
            .finish_non_exhaustive()
    }
}

impl Preparer {
    /// A preparer for `node`, whose current GPUs `gpus` holds.
    pub fn new(
        client: kube::Client,
        node: &str,
        reserve: u64,
        gpus: watch::Receiver<Vec<GpuInfo>>,
        provider: Arc<dyn ClaimSliceProvider>,
        state: StateDir,
        api_timeout: Duration,
    ) -> Self {
        Self {
            client,
            node: node.to_string(),
            reserve,
            gpus,
            provider,
            state,
            api_timeout,
            lock: Mutex::new(()),
        }
    }

    /// Prepares each claim, independently: one that fails has its error, the others are
    /// prepared. A claim prepared before (even by an earlier run) gets the same answer.
    ///
    /// The work runs to its end in a task of its own, even when the kubelet gives up on
    /// the call: cut short between making a claim's slices and recording them, it would
    /// leave slices nothing records, and the clean-up of a failed attempt still running
    /// beside the kubelet's retry could remove the slices that retry handed out.
    pub async fn prepare(
        self: &Arc<Self>,
        claims: &[ClaimRef],
    ) -> BTreeMap<String, Result<PreparedClaim, String>> {
        let this = self.clone();
        let owned = claims.to_vec();
        match tokio::spawn(async move { this.prepare_all(&owned).await }).await {
            Ok(done) => done,
            Err(e) => claims
                .iter()
                .map(|c| {
                    let why = format!("ResourceClaim {c}: the preparation stopped: {e}");
                    (c.uid.clone(), Err(why))
                })
                .collect(),
        }
    }

    async fn prepare_all(
        &self,
        claims: &[ClaimRef],
    ) -> BTreeMap<String, Result<PreparedClaim, String>> {
        let _one_at_a_time = self.lock.lock().await;
        let mut out = BTreeMap::new();
        for claim in claims {
            let result = self.prepare_one(claim).await;
            if let Err(e) = &result {
                tracing::warn!("NodePrepareResources: {e}");
            }
            out.insert(claim.uid.clone(), result);
        }
        out
    }

    async fn prepare_one(&self, claim: &ClaimRef) -> Result<PreparedClaim, String> {
        if let Some(done) = self.state.load(&claim.uid).map_err(|e| e.to_string())? {
            return Ok(done);
        }
        let api: Api<ResourceClaim> = Api::namespaced(self.client.clone(), &claim.namespace);
        let found = tokio::time::timeout(self.api_timeout, api.get_opt(&claim.name))
            .await
            .map_err(|_| {
                format!(
                    "cannot read ResourceClaim {claim}: the API server did not answer within {:?}",
                    self.api_timeout
                )
            })?
            .map_err(|e| format!("cannot read ResourceClaim {claim}: {e}"))?
            .ok_or_else(|| {
                ClaimError::NotFound {
                    claim: claim.to_string(),
                }
                .to_string()
            })?;
        let gpus = self.gpus.borrow().clone();
        let plan = claims::plan(&found, &claim.uid, &self.node, &gpus, self.reserve)
            .map_err(|e| e.to_string())?;
        let provider = self.provider.clone();
        let slices = plan.slices.clone();
        let made = tokio::task::spawn_blocking(move || {
            let mut ids = Vec::new();
            for (i, slice) in slices.iter().enumerate() {
                match provider.make(slice) {
                    Ok(id) => ids.push(id),
                    Err(e) => {
                        for made in &slices[..i] {
                            let _ = provider.remove(made);
                        }
                        return Err(e);
                    }
                }
            }
            Ok(ids)
        })
        .await
        .map_err(|e| format!("ResourceClaim {claim}: the slice maker failed: {e}"))?
        .map_err(|e| format!("ResourceClaim {claim}: cannot make its slice: {e}"))?;
        let prepared = PreparedClaim {
            namespace: claim.namespace.clone(),
            name: claim.name.clone(),
            uid: claim.uid.clone(),
            devices: plan.devices,
            slices: plan.slices,
            cdi_device_ids: made,
        };
        if let Err(e) = self.state.store(&prepared) {
            let provider = self.provider.clone();
            let slices = prepared.slices.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for s in &slices {
                    let _ = provider.remove(s);
                }
            })
            .await;
            return Err(format!("ResourceClaim {claim}: {e}"));
        }
        tracing::info!(
            "prepared ResourceClaim {claim}: {}",
            prepared
                .slices
                .iter()
                .map(|s| format!(
                    "{} bytes, {} on {}",
                    s.memory,
                    s.compute
                        .map_or("no compute limit".to_string(), |c| format!("{c}%")),
                    s.gpu_uuid
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        Ok(prepared)
    }

    /// Removes each claim's slices; a claim not prepared (or removed before) is no error.
    /// Like [`Preparer::prepare`], it runs to its end even when the call is given up.
    pub async fn unprepare(
        self: &Arc<Self>,
        claims: &[ClaimRef],
    ) -> BTreeMap<String, Result<(), String>> {
        let this = self.clone();
        let owned = claims.to_vec();
        match tokio::spawn(async move { this.unprepare_all(&owned).await }).await {
            Ok(done) => done,
            Err(e) => claims
                .iter()
                .map(|c| {
                    let why = format!("ResourceClaim {c}: the release stopped: {e}");
                    (c.uid.clone(), Err(why))
                })
                .collect(),
        }
    }

    async fn unprepare_all(&self, claims: &[ClaimRef]) -> BTreeMap<String, Result<(), String>> {
        let _one_at_a_time = self.lock.lock().await;
        let mut out = BTreeMap::new();
        for claim in claims {
            let result = self.unprepare_one(claim).await;
            if let Err(e) = &result {
                tracing::warn!("NodeUnprepareResources: {e}");
            }
            out.insert(claim.uid.clone(), result);
        }
        out
    }

    async fn unprepare_one(&self, claim: &ClaimRef) -> Result<(), String> {
        let Some(prepared) = self.state.load(&claim.uid).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let provider = self.provider.clone();
        let slices = prepared.slices.clone();
        tokio::task::spawn_blocking(move || slices.iter().try_for_each(|s| provider.remove(s)))
            .await
            .map_err(|e| format!("ResourceClaim {claim}: the slice remover failed: {e}"))?
            .map_err(|e| format!("ResourceClaim {claim}: cannot remove its slice: {e}"))?;
        self.state.remove(&claim.uid).map_err(|e| e.to_string())?;
        tracing::info!("unprepared ResourceClaim {claim}");
        Ok(())
    }
}

/// `dra.v1.DRAPlugin`.
#[derive(Debug)]
pub struct DraV1(pub Arc<Preparer>);

/// `dra.v1beta1.DRAPlugin` (the same, without `shareID` in the answer).
#[derive(Debug)]
pub struct DraV1beta1(pub Arc<Preparer>);

fn refs<'a>(claims: impl Iterator<Item = (&'a str, &'a str, &'a str)>) -> Vec<ClaimRef> {
    claims
        .map(|(namespace, uid, name)| ClaimRef {
            namespace: namespace.to_string(),
            uid: uid.to_string(),
            name: name.to_string(),
        })
        .collect()
}

#[tonic::async_trait]
impl v1::dra_plugin_server::DraPlugin for DraV1 {
    async fn node_prepare_resources(
        &self,
        request: Request<v1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1::NodePrepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let done = self
            .0
            .prepare(&refs(claims.iter().map(|c| {
                (c.namespace.as_str(), c.uid.as_str(), c.name.as_str())
            })))
            .await;
        let claims: HashMap<String, v1::NodePrepareResourceResponse> = done
            .into_iter()
            .map(|(uid, result)| {
                let answer = match result {
                    Ok(p) => v1::NodePrepareResourceResponse {
                        devices: p
                            .devices
                            .iter()
                            .map(|d| v1::Device {
                                request_names: d.request_names.clone(),
                                pool_name: d.pool.clone(),
                                device_name: d.device.clone(),
                                cdi_device_ids: p.cdi_ids_of(&d.gpu_uuid),
                                share_id: d.share_id.clone(),
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1::NodePrepareResourcesResponse { claims }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let done = self
            .0
            .unprepare(&refs(
                claims
                    .iter()
                    .map(|c| (c.namespace.as_str(), c.uid.as_str(), c.name.as_str())),
            ))
            .await;
        let claims = done
            .into_iter()
            .map(|(uid, r)| {
                (
                    uid,
                    v1::NodeUnprepareResourceResponse {
                        error: r.err().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(Response::new(v1::NodeUnprepareResourcesResponse { claims }))
    }
}

#[tonic::async_trait]
impl v1beta1::dra_plugin_server::DraPlugin for DraV1beta1 {
    async fn node_prepare_resources(
        &self,
        request: Request<v1beta1::NodePrepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodePrepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let done = self
            .0
            .prepare(&refs(claims.iter().map(|c| {
                (c.namespace.as_str(), c.uid.as_str(), c.name.as_str())
            })))
            .await;
        let claims = done
            .into_iter()
            .map(|(uid, result)| {
                let answer = match result {
                    Ok(p) => v1beta1::NodePrepareResourceResponse {
                        devices: p
                            .devices
                            .iter()
                            .map(|d| v1beta1::Device {
                                request_names: d.request_names.clone(),
                                pool_name: d.pool.clone(),
                                device_name: d.device.clone(),
                                cdi_device_ids: p.cdi_ids_of(&d.gpu_uuid),
                            })
                            .collect(),
                        error: String::new(),
                    },
                    Err(error) => v1beta1::NodePrepareResourceResponse {
                        devices: Vec::new(),
                        error,
                    },
                };
                (uid, answer)
            })
            .collect();
        Ok(Response::new(v1beta1::NodePrepareResourcesResponse {
            claims,
        }))
    }

    async fn node_unprepare_resources(
        &self,
        request: Request<v1beta1::NodeUnprepareResourcesRequest>,
    ) -> Result<Response<v1beta1::NodeUnprepareResourcesResponse>, Status> {
        let claims = request.into_inner().claims;
        let done = self
            .0
            .unprepare(&refs(
                claims
                    .iter()
                    .map(|c| (c.namespace.as_str(), c.uid.as_str(), c.name.as_str())),
            ))
            .await;
        let claims = done
            .into_iter()
            .map(|(uid, r)| {
                (
                    uid,
                    v1beta1::NodeUnprepareResourceResponse {
                        error: r.err().unwrap_or_default(),
                    },
                )
            })
            .collect();
        Ok(Response::new(v1beta1::NodeUnprepareResourcesResponse {
            claims,
        }))
    }
}

/// `pluginregistration.Registration`: tells the kubelet's plugin watcher who this is.
#[derive(Debug)]
pub struct RegistrationService {
    /// What `GetInfo` answers.
    pub info: reg::PluginInfo,
    /// The latest status the kubelet sent (`None` before the first).
    pub status: watch::Sender<Option<reg::RegistrationStatus>>,
}

#[tonic::async_trait]
impl reg::registration_server::Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<reg::InfoRequest>,
    ) -> Result<Response<reg::PluginInfo>, Status> {
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<reg::RegistrationStatus>,
    ) -> Result<Response<reg::RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!("the kubelet registered DRA driver {}", self.info.name);
        } else {
            tracing::error!(
                "the kubelet refused DRA driver {}: {}",
                self.info.name,
                status.error
            );
        }
        self.status.send_replace(Some(status));
        Ok(Response::new(reg::RegistrationStatusResponse {}))
    }
}
