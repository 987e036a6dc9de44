//! `:authority` as the kubelet's clients send it over unix sockets: `localhost`, or the
//! socket's path (plugin watcher, kubelets before 1.26). The control case shows that a
//! plain tonic server resets a request with the path (so the raw client really sends
//! it); the servers of `gpuslice_node::transport` answer both.

use std::path::Path;
use std::time::Duration;

use fake_kubelet::raw::{self, PROTOCOL_ERROR, RawCallError};
use kubelet_api::deviceplugin::v1beta1::{
    Empty, RegisterRequest,
    registration_server::{Registration, RegistrationServer},
};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

const LIMIT: Duration = Duration::from_secs(20);
const METHOD: &str = "/v1beta1.Registration/Register";

/// A service that accepts resources named `ok/...` and refuses the rest.
struct Echo;

#[tonic::async_trait]
impl Registration for Echo {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        if request.into_inner().resource_name.starts_with("ok/") {
            Ok(Response::new(Empty {}))
        } else {
            Err(Status::invalid_argument("refused"))
        }
    }
}

fn start(path: &Path, fixed: bool) -> CancellationToken {
    let stop = CancellationToken::new();
    let listener = gpuslice_node::transport::bind_unix(path).unwrap();
    let router = tonic::transport::Server::builder().add_service(RegistrationServer::new(Echo));
    let shutdown = stop.clone().cancelled_owned();
    if fixed {
        tokio::spawn(
            router.serve_with_incoming_shutdown(
                gpuslice_node::transport::incoming(listener),
                shutdown,
            ),
        );
    } else {
        tokio::spawn(router.serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        ));
    }
    stop
}

async fn call(path: &Path, authority: &str, resource: &str) -> Result<Vec<u8>, RawCallError> {
    let request = RegisterRequest {
        resource_name: resource.into(),
        ..Default::default()
    };
    tokio::time::timeout(
        LIMIT,
        raw::unary(path, authority, METHOD, &request.encode_to_vec()),
    )
    .await
    .expect("the call did not finish in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_tonic_server_resets_a_path_authority() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.sock");
    let stop = start(&path, false);
    call(&path, "localhost", "ok/x").await.unwrap();
    let e = call(&path, &path.display().to_string(), "ok/x")
        .await
        .unwrap_err();
    assert!(matches!(e, RawCallError::Reset(PROTOCOL_ERROR)), "{e}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpuslice_servers_accept_every_authority_the_kubelet_sends() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixed.sock");
    let stop = start(&path, true);
    let socket = path.display().to_string();
    for authority in [
        "localhost",
        socket.as_str(),
        "/var/lib/kubelet/plugins_registry/gpuslice.io-reg.sock",
        "/var/lib/kubelet/device-plugins/kubelet.sock",
    ] {
        let answer = call(&path, authority, "ok/x").await.unwrap();
        assert_eq!(Empty::decode(answer.as_slice()).unwrap(), Empty {});
        // gRPC errors come through as such, not as transport failures.
        match call(&path, authority, "no/x").await {
            Err(RawCallError::Status { code, message }) => {
                assert_eq!((code.as_str(), message.as_str()), ("3", "refused"));
            }
            other => panic!("{authority}: {other:?}"),
        }
    }
    // And tonic's own client, on one connection, many calls (HPACK state kept in step).
    let mut client =
        kubelet_api::deviceplugin::v1beta1::registration_client::RegistrationClient::new(
            gpuslice_node::transport::channel(&path),
        );
    for i in 0..50 {
        let request = RegisterRequest {
            resource_name: format!("ok/{i}"),
            endpoint: "x".repeat(i * 100),
            ..Default::default()
        };
        tokio::time::timeout(LIMIT, client.register(request))
            .await
            .unwrap()
            .unwrap();
    }
    stop.cancel();
}
