//! A fake kubelet for tests without a cluster, written from the device plugin API's
//! protos, doing what the Go kubelet's device manager does:
//!
//! * serves `v1beta1.Registration` on `kubelet.sock` in a folder of the test's;
//! * on `Register`, checks the request as the kubelet does (version, extended resource
//!   name, endpoint inside the folder), then dials the plugin's socket **twice**: with
//!   tonic, which sends `:authority: localhost` like the kubelet's device-plugin client,
//!   and with a raw HTTP/2 request whose `:authority` is the socket path, like the
//!   kubelet's plugin-watcher client and kubelets before 1.26 ([`raw`]); both must answer
//!   `GetDevicePluginOptions`;
//! * opens `ListAndWatch` and keeps the latest device list;
//! * lets the test call `GetPreferredAllocation`, `Allocate` and `PreStartContainer`;
//! * restarts: stops, wipes the folder as the kubelet does at start, and serves a new
//!   `kubelet.sock`, after which plugins must register again.
//!
//! For DRA, [`dra`] plays the kubelet's plugin watcher and DRA client, and [`apiserver`]
//! a Kubernetes API server holding Nodes, ResourceClaims and ResourceSlices.
//! [`podresources`] serves the kubelet's PodResources API with the pods a test sets.
//!
//! [`flows`] is the `fake-kubelet` binary's work: the same parts driven from the command
//! line against a real `gpuslice node`, for the checks on a GPU host (`tests/gpu/`).

pub mod apiserver;
pub mod dra;
pub mod flows;
pub mod podresources;
pub mod raw;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use kubelet_api::deviceplugin::v1beta1::{
    AllocateRequest, AllocateResponse, ContainerAllocateRequest,
    ContainerPreferredAllocationRequest, Device, DevicePluginOptions, Empty,
    PreStartContainerRequest, PreferredAllocationRequest, RegisterRequest, VERSION,
    device_plugin_client::DevicePluginClient,
    registration_server::{Registration, RegistrationServer},
};
use prost::Message;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// The kubelet's own socket's name.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// How long the kubelet gives a plugin to answer when it dials back.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong in the fake kubelet.
#[derive(Debug, thiserror::Error)]
pub enum FakeKubeletError {
    /// A socket or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Nothing happened in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, String),
    /// A registration was refused by the fake kubelet (the message says why).
    #[error("a registration was refused: {0}")]
    Refused(String),
}

/// A plugin that registered, with the kubelet's connection to it.
#[derive(Debug)]
pub struct Registered {
    /// The plugin's request.
    pub request: RegisterRequest,
    /// The plugin's socket.
    pub endpoint: PathBuf,
    /// `GetDevicePluginOptions` as answered over the `localhost` connection.
    pub options_via_localhost: DevicePluginOptions,
    /// `GetDevicePluginOptions` as answered to the raw request with the socket path as
    /// `:authority`.
    pub options_via_path: DevicePluginOptions,
    /// The client the kubelet uses for everything else.
    pub client: DevicePluginClient<Channel>,
    devices: watch::Receiver<Option<Vec<Device>>>,
    list_and_watch: JoinHandle<()>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.list_and_watch.abort();
    }
}

impl Registered {
    /// The resource name it registered.
    pub fn resource(&self) -> &str {
        &self.request.resource_name
    }

    /// The latest device list from `ListAndWatch` (`None` before the first).
    pub fn devices(&self) -> Option<Vec<Device>> {
        self.devices.borrow().clone()
    }

    /// Waits until the device list satisfies `ok`, and returns it.
    pub async fn wait_devices(
        &mut self,
        within: Duration,
        what: &str,
        ok: impl Fn(&[Device]) -> bool,
    ) -> Result<Vec<Device>, FakeKubeletError> {
        let wait = self.devices.wait_for(|d| d.as_deref().is_some_and(&ok));
        let found = match tokio::time::timeout(within, wait).await {
            Ok(Ok(list)) => Some(list.clone().unwrap_or_default()),
            _ => None,
        };
        match found {
            Some(list) => Ok(list),
            None => Err(FakeKubeletError::Timeout(
                within,
                format!(
                    "{what} in the device list of {} (last: {:?})",
                    self.request.resource_name,
                    self.devices()
                ),
            )),
        }
    }

    /// `GetPreferredAllocation` for one container.
    pub async fn preferred(
        &mut self,
        available: &[&str],
        must_include: &[&str],
        size: i32,
    ) -> Result<Vec<String>, Status> {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        let response = self
            .client
            .get_preferred_allocation(PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: owned(available),
                    must_include_device_i_ds: owned(must_include),
                    allocation_size: size,
                }],
            })
            .await?
            .into_inner();
        Ok(response
            .container_responses
            .into_iter()
            .next()
            .map(|c| c.device_i_ds)
            .unwrap_or_default())
    }

    /// `Allocate` for several containers at once, as the kubelet does for a pod.
    pub async fn allocate(&mut self, containers: &[&[&str]]) -> Result<AllocateResponse, Status> {
        let request = AllocateRequest {
            container_requests: containers
                .iter()
                .map(|ids| ContainerAllocateRequest {
                    devices_ids: ids.iter().map(|s| s.to_string()).collect(),
                })
                .collect(),
        };
        Ok(self.client.allocate(request).await?.into_inner())
    }

    /// `PreStartContainer` for these devices.
    pub async fn pre_start(&mut self, ids: &[&str]) -> Result<(), Status> {
        self.client
            .pre_start_container(PreStartContainerRequest {
                devices_ids: ids.iter().map(|s| s.to_string()).collect(),
            })
            .await?;
        Ok(())
    }
}

/// A gRPC channel over a unix socket, with `:authority: localhost` (as the kubelet sets it).
pub fn unix_channel(path: &Path) -> Channel {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost").connect_with_connector_lazy(tower::service_fn(
        move |_| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        },
    ))
}

/// Whether `name` is an extended resource name the kubelet accepts: `domain/name`, the
/// domain a DNS subdomain outside `kubernetes.io`, the name a qualified name part.
pub fn is_extended_resource_name(name: &str) -> bool {
    let Some((domain, rest)) = name.split_once('/') else {
        return false;
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let part = |p: &str| {
        let b = p.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(c))
    };
    domain.len() <= 253
        && domain.split('.').all(label)
        && domain != "kubernetes.io"
        && !domain.ends_with(".kubernetes.io")
        && part(rest)
}

#[derive(Clone, Debug)]
struct Kubelet {
    dir: PathBuf,
    tx: mpsc::UnboundedSender<Result<Registered, String>>,
    refuse: Arc<AtomicUsize>,
}

impl Kubelet {
    async fn accept(&self, r: RegisterRequest) -> Result<Registered, String> {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(format!(
                "not ready for {} yet (refused on purpose)",
                r.resource_name
            ));
        }
        if r.version != VERSION {
            return Err(format!("unsupported API version {:?}", r.version));
        }
        if !is_extended_resource_name(&r.resource_name) {
            return Err(format!(
                "{:?} is not an extended resource name",
                r.resource_name
            ));
        }
        if r.endpoint.is_empty() || r.endpoint.contains('/') || r.endpoint == ".." {
            return Err(format!(
                "endpoint {:?} is not a socket in {}",
                r.endpoint,
                self.dir.display()
            ));
        }
        let endpoint = self.dir.join(&r.endpoint);
        let mut client = DevicePluginClient::new(unix_channel(&endpoint));
        let options_via_localhost =
            match tokio::time::timeout(DIAL_TIMEOUT, client.get_device_plugin_options(Empty {}))
                .await
            {
                Ok(Ok(o)) => o.into_inner(),
                Ok(Err(status)) => {
                    return Err(format!(
                        "GetDevicePluginOptions with :authority localhost failed: {status}"
                    ));
                }
                Err(_) => {
                    return Err("GetDevicePluginOptions with :authority localhost timed out".into());
                }
            };
        let path_authority = endpoint.display().to_string();
        let raw = tokio::time::timeout(
            DIAL_TIMEOUT,
            raw::unary(
                &endpoint,
                &path_authority,
                "/v1beta1.DevicePlugin/GetDevicePluginOptions",
                &Empty {}.encode_to_vec(),
            ),
        )
        .await
        .map_err(|_| {
            "GetDevicePluginOptions with the socket path as :authority timed out".to_string()
        })?
        .map_err(|e| {
            format!("GetDevicePluginOptions with :authority {path_authority:?} failed: {e}")
        })?;
        let options_via_path = DevicePluginOptions::decode(raw.as_slice())
            .map_err(|e| format!("GetDevicePluginOptions answer does not decode: {e}"))?;

        let (devices_tx, devices) = watch::channel(None);
        let mut lw = client.clone();
        let list_and_watch = tokio::spawn(async move {
            let Ok(response) = lw.list_and_watch(Empty {}).await else {
                return;
            };
            let mut stream = response.into_inner();
            while let Ok(Some(update)) = stream.message().await {
                let _ = devices_tx.send(Some(update.devices));
            }
        });
        Ok(Registered {
            request: r,
            endpoint,
            options_via_localhost,
            options_via_path,
            client,
            devices,
            list_and_watch,
        })
    }
}

#[tonic::async_trait]
impl Registration for Kubelet {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        match self.accept(request.into_inner()).await {
            Ok(registered) => {
                let _ = self.tx.send(Ok(registered));
                Ok(Response::new(Empty {}))
            }
            Err(why) => {
                let _ = self.tx.send(Err(why.clone()));
                Err(Status::invalid_argument(why))
            }
        }
    }
}

#[derive(Debug)]
struct Serving {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The fake kubelet.
#[derive(Debug)]
pub struct FakeKubelet {
    dir: PathBuf,
    kubelet: Kubelet,
    registrations: Mutex<mpsc::UnboundedReceiver<Result<Registered, String>>>,
    serving: Option<Serving>,
}

impl FakeKubelet {
    /// Starts as the kubelet does: deletes every file in `dir` (plugin sockets
    /// included), then serves `Registration` on `dir/kubelet.sock`.
    pub async fn start(dir: &Path) -> Result<Self, FakeKubeletError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut kubelet = Self {
            dir: dir.to_path_buf(),
            kubelet: Kubelet {
                dir: dir.to_path_buf(),
                tx,
                refuse: Arc::new(AtomicUsize::new(0)),
            },
            registrations: Mutex::new(rx),
            serving: None,
        };
        kubelet.wipe()?;
        kubelet.serve()?;
        Ok(kubelet)
    }

    /// Refuses the next `n` registrations (as a kubelet that is not ready would).
    pub fn refuse_next(&self, n: usize) {
        self.kubelet.refuse.store(n, Ordering::SeqCst);
    }

    fn wipe(&self) -> Result<(), FakeKubeletError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|source| FakeKubeletError::Io {
            what: format!("listing {}", self.dir.display()),
            source,
        })?;
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(())
    }

    /// The device-plugin folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kubelet.sock`.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(KUBELET_SOCKET)
    }

    fn serve(&mut self) -> Result<(), FakeKubeletError> {
        let path = self.socket();
        let listener = UnixListener::bind(&path).map_err(|source| FakeKubeletError::Io {
            what: format!("binding {}", path.display()),
            source,
        })?;
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(RegistrationServer::new(self.kubelet.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::UnixListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        let task = tokio::spawn(async move {
            let _ = server.await;
        });
        self.serving = Some(Serving { stop, task });
        Ok(())
    }

    /// Stops serving and removes `kubelet.sock`.
    pub async fn stop(&mut self) {
        if let Some(serving) = self.serving.take() {
            serving.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), serving.task).await;
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Restarts as the kubelet does: stops, deletes every file in the folder (plugin
    /// sockets included), and serves a new `kubelet.sock`. Plugins must register again.
    pub async fn restart(&mut self) -> Result<(), FakeKubeletError> {
        self.stop().await;
        self.wipe()?;
        self.serve()
    }

    /// The next registration, accepted or refused, within `within`.
    pub async fn next_registration(
        &self,
        within: Duration,
    ) -> Result<Registered, FakeKubeletError> {
        let mut rx = self.registrations.lock().await;
        match tokio::time::timeout(within, rx.recv()).await {
            Ok(Some(Ok(registered))) => Ok(registered),
            Ok(Some(Err(why))) => Err(FakeKubeletError::Refused(why)),
            Ok(None) | Err(_) => Err(FakeKubeletError::Timeout(
                within,
                "a plugin to register".into(),
            )),
        }
    }

    /// The next `n` registrations, sorted by resource name.
    pub async fn registrations(
        &self,
        n: usize,
        within: Duration,
    ) -> Result<Vec<Registered>, FakeKubeletError> {
        let deadline = tokio::time::Instant::now() + within;
        let mut all = Vec::new();
        for _ in 0..n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            all.push(self.next_registration(left).await?);
        }
        all.sort_by(|a, b| a.request.resource_name.cmp(&b.request.resource_name));
        Ok(all)
    }

    /// Whether a registration arrives within `within` (to check that none does).
    pub async fn any_registration(&self, within: Duration) -> bool {
        self.next_registration(within).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_resource_names() {
        for good in ["gpuslice.io/slice-8g-30", "example.com/foo_bar.1", "a/b"] {
            assert!(is_extended_resource_name(good), "{good}");
        }
        for bad in [
            "slice",
            "kubernetes.io/gpu",
            "x.kubernetes.io/gpu",
            "Upper.io/x",
            "gpuslice.io/",
            "gpuslice.io/-x",
        ] {
            assert!(!is_extended_resource_name(bad), "{bad}");
        }
    }
}
