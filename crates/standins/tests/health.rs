//! The stand-ins answer the health checks Pachyderm's proxy runs (pachd gRPC health, pachd
//! HTTP `/healthz`, console `/health`, dex's discovery document), and each follows its
//! `Health` switch. Clients: tonic's generated client and hyper's, over loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pachgate_standins::messages::{serving_status, HealthCheckRequest};
use pachgate_standins::pachd::health_api::health_client::HealthClient;
use pachgate_standins::{Health, PachdOptions, PachdState};
use tokio::net::{TcpListener, TcpStream};

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

async fn status_of(address: SocketAddr, path: &str) -> StatusCode {
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", address.to_string())
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    response.into_body().collect().await.unwrap();
    status
}

fn check(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn pachd_grpc_health_follows_its_switch() {
    let health = Health::new();
    let (listener, address) = bind().await;
    tokio::spawn(pachgate_standins::serve_pachd(
        listener,
        PachdOptions {
            // The health service is public: no token needed even when pachd enforces auth.
            enforce_auth: true,
            health: health.clone(),
            ..PachdOptions::default()
        },
    ));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let answer = client.check(check("")).await.unwrap().into_inner();
    assert_eq!(answer.status, serving_status::SERVING);

    let mut watch = client.watch(check("")).await.unwrap().into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        serving_status::SERVING
    );

    health.set_serving(false);
    let answer = client.check(check("")).await.unwrap().into_inner();
    assert_eq!(answer.status, serving_status::NOT_SERVING);
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    assert_eq!(
        next.unwrap().unwrap().unwrap().status,
        serving_status::NOT_SERVING
    );

    health.set_serving(true);
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await;
    assert_eq!(
        next.unwrap().unwrap().unwrap().status,
        serving_status::SERVING
    );
    assert_eq!(
        client.check(check("")).await.unwrap().into_inner().status,
        serving_status::SERVING
    );

    // As grpc-go's health server: a service nobody registered is NOT_FOUND.
    let status = client.check(check("no.such.Service")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let mut unknown = client
        .watch(check("no.such.Service"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unknown.message().await.unwrap().unwrap().status,
        serving_status::SERVICE_UNKNOWN
    );
}

#[tokio::test]
async fn http_health_paths_follow_their_switches() {
    let pachd = Health::new();
    let dex = Health::new();
    let console = Health::new();
    let state = Arc::new(PachdState::new(PachdOptions {
        health: pachd.clone(),
        dex_health: dex.clone(),
        ..PachdOptions::default()
    }));
    let (http_listener, http) = bind().await;
    let (dex_listener, dex_address) = bind().await;
    let (console_listener, console_address) = bind().await;
    tokio::spawn(pachgate_standins::serve_pachd_http(
        http_listener,
        state.clone(),
    ));
    tokio::spawn(pachgate_standins::serve_dex(dex_listener, state));
    tokio::spawn(pachgate_standins::serve_console_with_health(
        console_listener,
        console.clone(),
    ));
    let checks = [
        (http, "/healthz", &pachd),
        (dex_address, "/dex/.well-known/openid-configuration", &dex),
        (console_address, "/health", &console),
    ];
    for (address, path, switch) in checks {
        assert_eq!(status_of(address, path).await, StatusCode::OK, "{path}");
        switch.set_serving(false);
        assert_eq!(
            status_of(address, path).await,
            StatusCode::SERVICE_UNAVAILABLE,
            "{path}"
        );
        // Only that path: the rest of the server still answers.
        if path == "/health" {
            assert_eq!(status_of(address, "/").await, StatusCode::OK);
        }
        switch.set_serving(true);
        assert_eq!(status_of(address, path).await, StatusCode::OK, "{path}");
    }
}
