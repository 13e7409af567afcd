//! Stand-in pachd: a tonic gRPC server over h2c with pachd's version, WhoAmI and
//! Authenticate methods and an echo service covering unary, server-, client- and
//! bidirectional streaming. A tower layer in front of every service records each call's
//! token and, with `enforce_auth`, does what pachd's auth interceptor does.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{ready, Either, Ready};
use futures_util::Stream;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::health::Health;
use crate::messages::*;
use crate::state::PachdState;

/// The response header (gRPC metadata) in which the echo service and the console stand-in
/// repeat the `x-request-id` values they received (all of them, joined by `, `, so a test
/// sees a duplicate), when the request carries
/// [`ECHO_REQUEST_ID_ASKED`] (only then: benchmarks compare runs with and without a request
/// id, and a new header value per response is not what they measure).
pub const ECHOED_REQUEST_ID: &str = "x-standin-request-id";
pub const ECHO_REQUEST_ID_ASKED: &str = "x-standin-echo-request-id";

pub mod version_api {
    include!(concat!(env!("OUT_DIR"), "/versionpb_v2.API.rs"));
}
pub mod auth_api {
    include!(concat!(env!("OUT_DIR"), "/auth_v2.API.rs"));
}
pub mod echo_api {
    include!(concat!(env!("OUT_DIR"), "/pachgate.standin.Echo.rs"));
}
pub mod health_api {
    include!(concat!(env!("OUT_DIR"), "/grpc.health.v1.Health.rs"));
}

/// Biggest message the stand-in accepts or sends; tests push 64 MiB each way.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// The stand-in's auth state, matching pachd's WhoAmI semantics.
#[derive(Debug, Clone)]
pub struct PachdOptions {
    /// `false`: WhoAmI answers UNIMPLEMENTED "the auth service is not activated", and no
    /// method needs a token.
    pub auth_active: bool,
    /// token → username, valid for an hour from each WhoAmI.
    pub tokens: HashMap<String, String>,
    /// A token that is valid only until this long after the stand-in starts, and is
    /// reported with that expiration; afterwards pachd's answer for it is INTERNAL "token
    /// expiration is in the past" (pachd keeps expired tokens for a while).
    pub short_lived: Option<(String, Duration)>,
    /// Tokens that are always expired (INTERNAL "token expiration is in the past").
    pub expired: Vec<String>,
    /// Enforce tokens on every gRPC method outside pachd's public list, as pachd's auth
    /// interceptor does (`false`: only WhoAmI looks at the token).
    pub enforce_auth: bool,
    /// Keep a record of each call's method and token owner (`PachdState::seen`, served at
    /// `/_standin/seen`). Off by default: benchmarks drive millions of calls.
    pub record_calls: bool,
    /// pachd's readiness: `grpc.health.v1.Health` and the HTTP server's `/healthz` follow it
    /// (one process in pachd). Keep a clone to flip it.
    pub health: Health,
    /// dex's: `/dex/.well-known/openid-configuration` answers 503 while it is off.
    pub dex_health: Health,
    /// Unary echo calls answered; keep a clone to count what reached this replica.
    pub unary_calls: Arc<AtomicU64>,
}

impl Default for PachdOptions {
    fn default() -> Self {
        PachdOptions {
            auth_active: true,
            tokens: HashMap::from([
                ("demo-token".to_string(), "robot:demo".to_string()),
                ("demo-token-2".to_string(), "robot:second".to_string()),
            ]),
            short_lived: Some(("short-lived-token".to_string(), Duration::from_secs(6))),
            expired: vec!["expired-token".to_string()],
            enforce_auth: false,
            record_calls: false,
            health: Health::default(),
            dex_health: Health::default(),
            unary_calls: Arc::default(),
        }
    }
}

/// Serves the stand-in pachd on `listener` until the task is dropped.
pub async fn serve_pachd(
    listener: TcpListener,
    options: PachdOptions,
) -> Result<(), tonic::transport::Error> {
    serve_pachd_shared(listener, Arc::new(PachdState::new(options))).await
}

/// The same with state shared with the pachd HTTP, dex and OIDC stand-ins.
pub async fn serve_pachd_shared(
    listener: TcpListener,
    state: Arc<PachdState>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|tcp| {
        let tcp = tcp?;
        tcp.set_nodelay(true)?;
        Ok::<_, std::io::Error>(tcp)
    });
    let health = HealthService {
        health: state.options.health.clone(),
    };
    let who_am_i_calls = Arc::new(AtomicU64::new(0));
    let unary_calls = state.options.unary_calls.clone();
    tonic::transport::Server::builder()
        // Large fixed windows: like pachd (Go), the stand-in must not be the bottleneck, and
        // h2's small-DATA-frame guard scales with the connection window.
        .initial_stream_window_size(Some(4 * 1024 * 1024))
        .initial_connection_window_size(Some(16 * 1024 * 1024))
        .layer(InterceptorLayer {
            state: state.clone(),
        })
        .add_service(version_api::a_p_i_server::APIServer::new(VersionService))
        .add_service(health_api::health_server::HealthServer::new(health))
        .add_service(auth_api::a_p_i_server::APIServer::new(AuthService {
            state,
            calls: who_am_i_calls.clone(),
        }))
        .add_service(
            echo_api::echo_server::EchoServer::new(EchoService {
                cancelled_streams: Arc::default(),
                who_am_i_calls,
                unary_calls,
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming(incoming)
        .await
}

struct VersionService;

#[tonic::async_trait]
impl version_api::a_p_i_server::API for VersionService {
    async fn get_version(&self, _: Request<Empty>) -> Result<Response<Version>, Status> {
        Ok(Response::new(Version {
            major: 2,
            minor: 11,
            micro: 0,
            additional: "-pachgate-standin".into(),
            platform: std::env::consts::ARCH.into(),
            ..Version::default()
        }))
    }
}

/// The standard health service as grpc-go's serves it for pachd: the server as a whole
/// (`service` empty) is SERVING or NOT_SERVING with [`PachdOptions::health`]; any other
/// service name is NOT_FOUND "unknown service" (`Check`) or SERVICE_UNKNOWN (`Watch`).
struct HealthService {
    health: Health,
}

fn serving_status(serving: bool) -> HealthCheckResponse {
    HealthCheckResponse {
        status: if serving {
            serving_status::SERVING
        } else {
            serving_status::NOT_SERVING
        },
    }
}

type HealthStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl health_api::health_server::Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if !request.get_ref().service.is_empty() {
            return Err(Status::not_found("unknown service"));
        }
        Ok(Response::new(serving_status(self.health.is_serving())))
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        if !request.get_ref().service.is_empty() {
            let unknown = HealthCheckResponse {
                status: serving_status::SERVICE_UNKNOWN,
            };
            let _ = tx.send(Ok(unknown)).await;
            // grpc-go keeps the stream open; so does the stand-in, until the client leaves.
            tokio::spawn(async move { tx.closed().await });
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx))));
        }
        let mut changes = self.health.subscribe();
        tokio::spawn(async move {
            loop {
                let serving = *changes.borrow_and_update();
                if tx.send(Ok(serving_status(serving))).await.is_err() {
                    return;
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// pachd's auth interceptor as a tower layer over every service: it records what token
/// each call carried and, with `enforce_auth`, answers calls outside the public list that
/// lack a valid token with pachd's status, before they reach the service.
#[derive(Clone)]
struct InterceptorLayer {
    state: Arc<PachdState>,
}

impl<S> tower::Layer<S> for InterceptorLayer {
    type Service = Interceptor<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Interceptor {
            inner,
            state: self.state.clone(),
        }
    }
}

#[derive(Clone)]
struct Interceptor<S> {
    inner: S,
    state: Arc<PachdState>,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Interceptor<S>
where
    S: tower::Service<
        http::Request<tonic::body::Body>,
        Response = http::Response<tonic::body::Body>,
    >,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Self::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let options = &self.state.options;
        if !options.enforce_auth && !options.record_calls {
            return Either::Right(self.inner.call(request));
        }
        let values: Vec<&[u8]> = request
            .headers()
            .get_all("authn-token")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        let method = request.uri().path();
        let source = if values.is_empty() {
            "none"
        } else {
            "metadata"
        };
        self.state.record("grpc", method, &values, source);
        if self.state.options.enforce_auth {
            if let Some(denied) = self.state.intercept(method, &values) {
                return Either::Left(ready(Ok(denied.to_status().into_http())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

fn token_values(metadata: &MetadataMap) -> Vec<&[u8]> {
    metadata
        .get_all("authn-token")
        .iter()
        .map(|v| v.as_bytes())
        .collect()
}

struct AuthService {
    state: Arc<PachdState>,
    calls: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl auth_api::a_p_i_server::API for AuthService {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.state.auth_active() {
            return Err(Status::unimplemented(crate::state::NOT_ACTIVATED));
        }
        let principal = self
            .state
            .authenticate(&token_values(request.metadata()))
            .map_err(|e| e.to_status())?;
        let seconds = principal
            .expires
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Ok(Response::new(WhoAmIResponse {
            username: principal.username,
            expiration: Some(Timestamp {
                seconds: seconds as i64,
                nanos: 0,
            }),
        }))
    }

    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let request = request.into_inner();
        let pach_token = self
            .state
            .authenticate_oidc(&request.oidc_state, &request.id_token)
            .await
            .map_err(|e| e.to_status())?;
        Ok(Response::new(AuthenticateResponse { pach_token }))
    }
}

/// The echo service counts server streams whose client went away, so tests can see that a
/// client's cancellation reached the upstream through the proxy.
struct EchoService {
    cancelled_streams: Arc<AtomicU64>,
    /// Shared with the auth service, so tests can count WhoAmI calls (cache behaviour).
    who_am_i_calls: Arc<AtomicU64>,
    /// Unary echo calls that reached the stand-in (a denied call must never arrive).
    unary_calls: Arc<AtomicU64>,
}

type EchoStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

/// The status a request asked to end with, carrying details and trailing metadata so tests
/// can check both survive the proxy.
fn requested_failure(request: &EchoRequest) -> Option<Status> {
    if request.fail_code == 0 {
        return None;
    }
    let mut metadata = MetadataMap::new();
    metadata.insert("x-standin-trailer", "kept".parse().expect("ascii"));
    Some(Status::with_details_and_metadata(
        Code::from(request.fail_code),
        request.fail_message.clone(),
        Bytes::from_static(b"standin-status-details"),
        metadata,
    ))
}

fn reply_payload(request: &EchoRequest) -> Bytes {
    if request.response_size > 0 {
        Bytes::from(vec![b'x'; request.response_size as usize])
    } else {
        request.payload.clone()
    }
}

#[tonic::async_trait]
impl echo_api::echo_server::Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        self.unary_calls.fetch_add(1, Ordering::Relaxed);
        let request_id = request.metadata().get(ECHO_REQUEST_ID_ASKED).and_then(|_| {
            let ids: Vec<&str> = request
                .metadata()
                .get_all("x-request-id")
                .iter()
                .filter_map(|id| id.to_str().ok())
                .collect();
            ids.join(", ")
                .parse::<tonic::metadata::MetadataValue<_>>()
                .ok()
        });
        let request = request.into_inner();
        if let Some(status) = requested_failure(&request) {
            return Err(status);
        }
        if request.interval_ms > 0 {
            tokio::time::sleep(Duration::from_millis(request.interval_ms.into())).await;
        }
        let mut response = Response::new(EchoResponse {
            payload: reply_payload(&request),
            sequence: 0,
            total_bytes: request.payload.len() as u64,
            who_am_i_calls: 0,
            unary_calls: 0,
        });
        // What arrived as `x-request-id`, so tests can compare it with the proxy's log line.
        if let Some(id) = request_id {
            response.metadata_mut().insert(ECHOED_REQUEST_ID, id);
        }
        Ok(response)
    }

    /// `sequence` = server streams cancelled by their client so far.
    async fn stats(&self, _: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        Ok(Response::new(EchoResponse {
            payload: Bytes::new(),
            sequence: self.cancelled_streams.load(Ordering::Relaxed),
            total_bytes: 0,
            who_am_i_calls: self.who_am_i_calls.load(Ordering::Relaxed),
            unary_calls: self.unary_calls.load(Ordering::Relaxed),
        }))
    }

    type ServerStreamStream = EchoStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamStream>, Status> {
        let request = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let cancelled_streams = self.cancelled_streams.clone();
        tokio::spawn(async move {
            let payload = reply_payload(&request);
            for sequence in 0..u64::from(request.response_count) {
                if request.interval_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(request.interval_ms.into())).await;
                }
                let message = EchoResponse {
                    payload: payload.clone(),
                    sequence,
                    total_bytes: 0,
                    who_am_i_calls: 0,
                    unary_calls: 0,
                };
                if tx.send(Ok(message)).await.is_err() {
                    // The client went away: tonic dropped the stream on RST_STREAM.
                    cancelled_streams.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
            if let Some(status) = requested_failure(&request) {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        let mut inbound = request.into_inner();
        let mut count = 0u64;
        let mut total_bytes = 0u64;
        while let Some(message) = inbound.message().await? {
            count += 1;
            total_bytes += message.payload.len() as u64;
        }
        Ok(Response::new(EchoResponse {
            payload: Bytes::new(),
            sequence: count,
            total_bytes,
            who_am_i_calls: 0,
            unary_calls: 0,
        }))
    }

    type BidiStream = EchoStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidiStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut sequence = 0u64;
            loop {
                match inbound.message().await {
                    Ok(Some(message)) => {
                        if let Some(status) = requested_failure(&message) {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        let reply = EchoResponse {
                            payload: reply_payload(&message),
                            sequence,
                            total_bytes: 0,
                            who_am_i_calls: 0,
                            unary_calls: 0,
                        };
                        sequence += 1;
                        if tx.send(Ok(reply)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
