//! The kubelet's side of DRA, for tests: its plugin watcher finds a driver's
//! registration socket in `plugins_registry`, calls `GetInfo` and
//! `NotifyRegistrationStatus` with the socket's path as `:authority` (as the Go plugin
//! watcher does, through [`crate::raw`]), checks the answer as the kubelet does, and then
//! calls the driver's `dra.v1.DRAPlugin` (or `v1beta1`) over its endpoint with
//! `:authority: localhost`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kubelet_api::dra::{v1, v1beta1};
use kubelet_api::pluginregistration::v1 as reg;
use prost::Message;
use tonic::Status;
use tonic::transport::Channel;

use crate::{FakeKubeletError, raw, unix_channel};

/// A DRA driver the fake plugin watcher registered.
#[derive(Debug)]
pub struct DraDriver {
    /// Its registration socket.
    pub registration_socket: PathBuf,
    /// What `GetInfo` answered.
    pub info: reg::PluginInfo,
    v1: v1::dra_plugin_client::DraPluginClient<Channel>,
    v1beta1: v1beta1::dra_plugin_client::DraPluginClient<Channel>,
}

/// A claim as the kubelet names it to the driver.
pub fn claim(namespace: &str, name: &str, uid: &str) -> v1::Claim {
    v1::Claim {
        namespace: namespace.into(),
        uid: uid.into(),
        name: name.into(),
    }
}

async fn call<Q: Message, A: Message + Default>(
    socket: &Path,
    method: &str,
    request: &Q,
) -> Result<A, FakeKubeletError> {
    let authority = socket.display().to_string();
    let bytes = raw::unary(socket, &authority, method, &request.encode_to_vec())
        .await
        .map_err(|e| FakeKubeletError::Refused(format!("{method} on {}: {e}", socket.display())))?;
    A::decode(bytes.as_slice())
        .map_err(|e| FakeKubeletError::Refused(format!("{method}: undecodable answer: {e}")))
}

impl DraDriver {
    /// Waits (up to `within`) for a socket in `registry`, then registers the driver on it
    /// as the plugin watcher does: `GetInfo` with the path `:authority`, checks (type
    /// `DRAPlugin`, a name, `v1.DRAPlugin` among the versions, an endpoint that exists),
    /// then `NotifyRegistrationStatus{plugin_registered: true}`.
    pub async fn register(registry: &Path, within: Duration) -> Result<Self, FakeKubeletError> {
        let deadline = tokio::time::Instant::now() + within;
        let (socket, info) = loop {
            let sockets: Vec<PathBuf> = std::fs::read_dir(registry)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect();
            let mut found = None;
            for socket in sockets {
                if let Ok(info) = call::<_, reg::PluginInfo>(
                    &socket,
                    "/pluginregistration.Registration/GetInfo",
                    &reg::InfoRequest {},
                )
                .await
                {
                    found = Some((socket, info));
                    break;
                }
            }
            if let Some(found) = found {
                break found;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(FakeKubeletError::Timeout(
                    within,
                    format!("a DRA driver answering GetInfo in {}", registry.display()),
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let refuse = |why: String| FakeKubeletError::Refused(why);
        if info.r#type != reg::DRA_PLUGIN_TYPE {
            return Err(refuse(format!(
                "plugin type {:?} is not DRAPlugin",
                info.r#type
            )));
        }
        if info.name.is_empty() {
            return Err(refuse("the driver has no name".into()));
        }
        if !info
            .supported_versions
            .iter()
            .any(|v| v == v1::SERVICE_VERSION)
        {
            return Err(refuse(format!(
                "supported versions {:?} lack {}",
                info.supported_versions,
                v1::SERVICE_VERSION
            )));
        }
        let endpoint = PathBuf::from(&info.endpoint);
        if !endpoint.is_absolute() || !endpoint.exists() {
            return Err(refuse(format!(
                "endpoint {} does not exist",
                endpoint.display()
            )));
        }
        call::<_, reg::RegistrationStatusResponse>(
            &socket,
            "/pluginregistration.Registration/NotifyRegistrationStatus",
            &reg::RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            },
        )
        .await?;
        let channel = unix_channel(&endpoint);
        Ok(Self {
            registration_socket: socket,
            info,
            v1: v1::dra_plugin_client::DraPluginClient::new(channel.clone()),
            v1beta1: v1beta1::dra_plugin_client::DraPluginClient::new(channel),
        })
    }

    /// `dra.v1.DRAPlugin/NodePrepareResources`.
    pub async fn prepare(
        &mut self,
        claims: &[v1::Claim],
    ) -> Result<v1::NodePrepareResourcesResponse, Status> {
        let request = v1::NodePrepareResourcesRequest {
            claims: claims.to_vec(),
        };
        Ok(self.v1.node_prepare_resources(request).await?.into_inner())
    }

    /// `dra.v1.DRAPlugin/NodeUnprepareResources`.
    pub async fn unprepare(
        &mut self,
        claims: &[v1::Claim],
    ) -> Result<v1::NodeUnprepareResourcesResponse, Status> {
        let request = v1::NodeUnprepareResourcesRequest {
            claims: claims.to_vec(),
        };
        Ok(self
            .v1
            .node_unprepare_resources(request)
            .await?
            .into_inner())
    }

    /// `dra.v1beta1.DRAPlugin/NodePrepareResources`.
    pub async fn prepare_v1beta1(
        &mut self,
        claims: &[v1::Claim],
    ) -> Result<v1beta1::NodePrepareResourcesResponse, Status> {
        let request = v1beta1::NodePrepareResourcesRequest {
            claims: claims
                .iter()
                .map(|c| v1beta1::Claim {
                    namespace: c.namespace.clone(),
                    uid: c.uid.clone(),
                    name: c.name.clone(),
                })
                .collect(),
        };
        Ok(self
            .v1beta1
            .node_prepare_resources(request)
            .await?
            .into_inner())
    }
}
