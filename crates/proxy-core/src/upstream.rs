//! Upstreams: where routed requests go. h2c upstreams multiplex every client stream over one
//! long-lived HTTP/2 connection per endpoint (no connection per request); http1 upstreams use
//! a keep-alive pool. All upstream sockets set TCP_NODELAY: without it Nagle's algorithm and
//! delayed ACKs stall small h2 frames (measured: 13× fewer small gRPC calls per second).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::error::ProxyError;

const UPSTREAM_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const UPSTREAM_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/2 with prior knowledge over plain TCP (pachd's gRPC port).
    H2c,
    /// HTTP/1.1 over plain TCP (console, pachd's HTTP ports).
    Http1,
    /// HTTP/2 over TLS (pachd deployed with TLS); needs [`UpstreamSpec::tls`].
    H2,
    /// HTTP/1.1 over TLS; needs [`UpstreamSpec::tls`].
    Http1Tls,
}

impl UpstreamProtocol {
    /// Whether requests travel as HTTP/2 (one multiplexed connection per endpoint).
    pub fn is_h2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }

    /// The config file's spelling.
    pub fn name(self) -> &'static str {
        match self {
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2 => "h2",
            UpstreamProtocol::Http1Tls => "http1-tls",
        }
    }
}

/// TLS toward an upstream: whom to trust and which name to verify.
#[derive(Clone)]
pub struct UpstreamTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// An upstream connection, plain or TLS, as one type for hyper.
trait UpstreamIo: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> UpstreamIo for T {}

/// How to reach one upstream service.
#[derive(Debug, Clone)]
pub struct UpstreamSpec {
    pub name: String,
    /// `host:port` each; names are resolved at connect time.
    pub endpoints: Vec<String>,
    pub protocol: UpstreamProtocol,
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive. Streams are never cut once
    /// the response has started. `None`: wait as long as the client does.
    pub response_timeout: Option<Duration>,
    /// Ping interval on upstream h2 connections, to find dead peers behind idle NATs.
    pub h2_keepalive_interval: Option<Duration>,
    /// Required for `protocol = "h2"`.
    pub tls: Option<UpstreamTls>,
}

struct Endpoint {
    address: String,
    /// The address again, shareable with access-log records without a copy.
    label: Arc<str>,
    authority: Authority,
    /// The shared h2 connection; loaded lock-free on every request.
    h2: ArcSwapOption<http2::SendRequest<ProxyBody>>,
    /// Serialises reconnects so a burst after a failure opens one connection, not hundreds.
    connecting: tokio::sync::Mutex<()>,
}

pub struct Upstream {
    spec: UpstreamSpec,
    endpoints: Vec<Endpoint>,
    next_endpoint: AtomicUsize,
    http1_pool: Option<Http1Pool>,
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Result<Self, String> {
        if spec.endpoints.is_empty() {
            return Err(format!("upstream {}: no endpoints", spec.name));
        }
        let endpoints = spec
            .endpoints
            .iter()
            .map(|address| {
                let authority = address
                    .parse::<Authority>()
                    .map_err(|e| format!("upstream {}: endpoint {address:?}: {e}", spec.name))?;
                Ok(Endpoint {
                    address: address.clone(),
                    label: Arc::from(address.as_str()),
                    authority,
                    h2: ArcSwapOption::empty(),
                    connecting: tokio::sync::Mutex::new(()),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(spec.connect_timeout));
        let mut pool = PooledClient::builder(TokioExecutor::new());
        pool.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256);
        let http1_pool = match (spec.protocol, &spec.tls) {
            (UpstreamProtocol::Http1, _) => {
                connector.enforce_http(true);
                Some(Http1Pool::Plain(pool.build(connector)))
            }
            (UpstreamProtocol::Http1Tls, Some(tls)) => {
                connector.enforce_http(false);
                Some(Http1Pool::Tls(pool.build(TlsHttpConnector {
                    http: connector,
                    tls: tls.clone(),
                })))
            }
            (UpstreamProtocol::Http1Tls, None) => {
                return Err(format!(
                    "upstream {}: http1-tls needs TLS settings",
                    spec.name
                ))
            }
            _ => None,
        };
        Ok(Upstream {
            spec,
            endpoints,
            next_endpoint: AtomicUsize::new(0),
            http1_pool,
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.spec.protocol
    }

    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.address.as_str())
    }

    fn pick(&self) -> &Endpoint {
        let index = self.next_endpoint.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[index]
    }

    /// Sends a request whose URI holds only the path (and query); `authority` is what the
    /// client asked for and becomes `:authority` on h2 upstreams. `endpoint_used` hears which
    /// endpoint was chosen (for the access log).
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        authority: Option<Authority>,
        endpoint_used: &mut Option<Arc<str>>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let endpoint = self.pick();
        *endpoint_used = Some(endpoint.label.clone());
        let send = async {
            match self.spec.protocol {
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                    let authority = authority.unwrap_or_else(|| endpoint.authority.clone());
                    let scheme = if self.spec.tls.is_some() {
                        Scheme::HTTPS
                    } else {
                        Scheme::HTTP
                    };
                    set_uri(&mut request, scheme, authority);
                    *request.version_mut() = Version::HTTP_2;
                    self.send_h2(endpoint, request).await
                }
                UpstreamProtocol::Http1 | UpstreamProtocol::Http1Tls => {
                    // The pool connects to the URI's authority; the Host header keeps what the
                    // client asked for.
                    let scheme = if self.spec.tls.is_some() {
                        Scheme::HTTPS
                    } else {
                        Scheme::HTTP
                    };
                    set_uri(&mut request, scheme, endpoint.authority.clone());
                    *request.version_mut() = Version::HTTP_11;
                    let pool = self.http1_pool.as_ref().expect("http1 upstream has a pool");
                    let result = match pool {
                        Http1Pool::Plain(pool) => pool.request(request).await,
                        Http1Pool::Tls(pool) => pool.request(request).await,
                    };
                    result.map_err(|e| {
                        if is_tls_handshake_failure(&e) {
                            ProxyError::UpstreamTls {
                                upstream: self.spec.name.clone(),
                                endpoint: endpoint.address.clone(),
                                reason: error_chain(&e),
                            }
                        } else if e.is_connect() {
                            self.connect_error(endpoint, &e)
                        } else {
                            self.failed(&e)
                        }
                    })
                }
            }
        };
        match self.spec.response_timeout {
            None => send.await,
            Some(limit) => tokio::time::timeout(limit, send).await.unwrap_or_else(|_| {
                Err(ProxyError::UpstreamTimeout {
                    upstream: self.spec.name.clone(),
                    timeout_ms: limit.as_millis(),
                })
            }),
        }
    }

    async fn send_h2(
        &self,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut sender = self.h2_sender(endpoint).await?;
        match sender.try_send_request(request).await {
            Ok(response) => Ok(response),
            Err(mut failed) => {
                // The connection closed before the request left: nothing reached the upstream,
                // so one more try on a fresh connection is safe even for non-idempotent calls.
                let Some(request) = failed.take_message() else {
                    return Err(self.failed(failed.error()));
                };
                endpoint.h2.store(None);
                let mut sender = self.h2_sender(endpoint).await?;
                sender
                    .send_request(request)
                    .await
                    .map_err(|e| self.failed(&e))
            }
        }
    }

    async fn h2_sender(
        &self,
        endpoint: &Endpoint,
    ) -> Result<http2::SendRequest<ProxyBody>, ProxyError> {
        if let Some(sender) = endpoint.h2.load().as_deref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let _connecting = endpoint.connecting.lock().await;
        if let Some(sender) = endpoint.h2.load().as_deref() {
            if !sender.is_closed() {
                return Ok(sender.clone());
            }
        }
        let io = self.connect_io(endpoint).await?;
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            // Fixed windows rather than adaptive ones: h2 sizes its small-DATA-frame flood guard
            // from the connection window, and the adaptive 64 KiB start trips it on streams of
            // small gRPC messages (see ServerLimits::h2_connection_window).
            .initial_stream_window_size(UPSTREAM_STREAM_WINDOW)
            .initial_connection_window_size(UPSTREAM_CONNECTION_WINDOW)
            .max_frame_size(256 * 1024)
            .keep_alive_interval(self.spec.h2_keepalive_interval)
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let (sender, connection) = builder
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(endpoint, &e))?;
        let name = self.spec.name.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(upstream = %name, error = %e, "upstream h2 connection ended");
            }
        });
        endpoint.h2.store(Some(Arc::new(sender.clone())));
        Ok(sender)
    }

    async fn connect_tcp(&self, endpoint: &Endpoint) -> Result<TcpStream, ProxyError> {
        let tcp = tokio::time::timeout(
            self.spec.connect_timeout,
            TcpStream::connect(endpoint.address.as_str()),
        )
        .await
        .map_err(|_| ProxyError::UpstreamConnect {
            upstream: self.spec.name.clone(),
            endpoint: endpoint.address.clone(),
            reason: format!("timed out after {:?}", self.spec.connect_timeout),
        })?
        .map_err(|e| self.connect_error(endpoint, &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| self.connect_error(endpoint, &e))?;
        Ok(tcp)
    }

    /// TCP, then TLS when the upstream is configured for it. A certificate problem is
    /// reported as what it is: a TLS verification failure.
    async fn connect_io(&self, endpoint: &Endpoint) -> Result<Box<dyn UpstreamIo>, ProxyError> {
        let tcp = self.connect_tcp(endpoint).await?;
        let Some(tls) = &self.spec.tls else {
            return Ok(Box::new(tcp));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
        match tokio::time::timeout(self.spec.connect_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(ProxyError::UpstreamTls {
                upstream: self.spec.name.clone(),
                endpoint: endpoint.address.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(ProxyError::UpstreamConnect {
                upstream: self.spec.name.clone(),
                endpoint: endpoint.address.clone(),
                reason: "TLS handshake timed out".into(),
            }),
        }
    }

    /// A dedicated HTTP/1.1 connection for one websocket upgrade; it leaves the pool's
    /// accounting because after the upgrade it is a byte tunnel, not an HTTP connection.
    pub async fn connect_for_upgrade(
        &self,
    ) -> Result<(http1::SendRequest<ProxyBody>, Authority), ProxyError> {
        let endpoint = self.pick();
        let tcp = self.connect_tcp(endpoint).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| self.connect_error(endpoint, &e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok((sender, endpoint.authority.clone()))
    }

    fn connect_error(&self, endpoint: &Endpoint, error: &dyn std::error::Error) -> ProxyError {
        ProxyError::UpstreamConnect {
            upstream: self.spec.name.clone(),
            endpoint: endpoint.address.clone(),
            reason: error_chain(error),
        }
    }

    fn failed(&self, error: &dyn std::error::Error) -> ProxyError {
        ProxyError::UpstreamFailed {
            upstream: self.spec.name.clone(),
            reason: error_chain(error),
        }
    }
}

/// Keep-alive pools for HTTP/1.1 upstreams, plain or TLS.
enum Http1Pool {
    Plain(PooledClient<HttpConnector, ProxyBody>),
    Tls(PooledClient<TlsHttpConnector, ProxyBody>),
}

/// Connects like the plain pool, then speaks TLS (verified against the upstream's CA).
#[derive(Clone)]
struct TlsHttpConnector {
    http: HttpConnector,
    tls: UpstreamTls,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsHttpConnector {
    type Response = TlsConnection;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TlsConnection, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let stream = tls
                .connector
                .connect(tls.server_name.clone(), tcp)
                .await
                .map_err(TlsHandshakeFailed)?;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

/// The TLS handshake with an HTTP/1.1 upstream failed (typically verification); typed so the
/// pool's error can be told apart from a refused TCP connection.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsHandshakeFailed(std::io::Error);

fn is_tls_handshake_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<TlsHandshakeFailed>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A pooled TLS connection, as hyper's legacy client wants it.
struct TlsConnection(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl hyper_util::client::legacy::connect::Connection for TlsConnection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

fn set_uri<B>(request: &mut Request<B>, scheme: Scheme, authority: Authority) {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
}

/// "outer: inner: innermost" — hyper's top-level messages alone ("client error (Connect)")
/// do not say what went wrong.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        if !text.contains(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}
