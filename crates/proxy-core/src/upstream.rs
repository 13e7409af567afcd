//! Upstreams: where routed requests go. h2c upstreams multiplex every client stream over one
//! long-lived HTTP/2 connection per endpoint (no connection per request); http1 upstreams use
//! a keep-alive pool. All upstream sockets set TCP_NODELAY: without it Nagle's algorithm and
//! delayed ACKs stall small h2 frames (measured: 13× fewer small gRPC calls per second).
//!
//! h2 upstreams are spoken by pachgate's own client connection (crate `pachgate-h2-upstream`),
//! not hyper's client: a request is opened, fed and answered inside the task that serves the client's
//! stream, where hyper's client adds a dispatch channel, a spawned task per request and
//! another per request body (benches/README.md has the before/after). Under a burst, every
//! 16th request writes the queued batch out from its stream's task, so the upstream starts
//! on it while the worker reads the rest (`UPSTREAM_WRITE_BATCH`). A stream the upstream
//! refuses unprocessed is sent once more when its body fits `RESEND_LIMIT`.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pachgate_h2_upstream::{self as h2_client, Failure, StreamRef};
use tokio::net::TcpStream;

use crate::body::{ProxyBody, UpstreamBody};
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
    /// A keepalive ping unanswered this long means the upstream connection is dead: it is
    /// closed, its streams fail, and the next request opens a new one.
    pub h2_keepalive_timeout: Duration,
    /// Required for `protocol = "h2"`.
    pub tls: Option<UpstreamTls>,
    /// h2 upstreams: what one response header block (head or trailers) may decode to,
    /// in fields and in bytes (name + value + 32 per field). Past either the stream is reset
    /// and the caller answered 502 / gRPC 14 "upstream protocol error".
    pub h2_max_response_headers: usize,
    pub h2_max_response_header_bytes: usize,
}

/// Defaults for [`UpstreamSpec::h2_max_response_headers`] and
/// [`UpstreamSpec::h2_max_response_header_bytes`] (the reasoning is at their definition), and
/// the largest field count allowed (`http::HeaderMap` holds no more than 32,768).
pub use pachgate_h2_upstream::{
    DEFAULT_MAX_RESPONSE_HEADERS, DEFAULT_MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS_CAP,
};

/// Requests queued on an upstream h2 connection before the stream that queued the last of
/// them writes them out itself. A worker runs woken tasks in order, so the connection's own
/// task writes only after every ready stream has queued its request: a burst from many
/// clients then travels as one wave, and the upstream idles while the worker gathers it and
/// the worker idles while the upstream answers it. Handing batches over as they fill keeps
/// both busy (benches/README.md: unary calls/s +16 %, CPU per call +6 %).
const UPSTREAM_WRITE_BATCH: usize = 16;

/// Workers keep their own h2 connection to each endpoint (a stream is then driven by the
/// thread that serves its client, with no wake-up crossing threads); workers past this many
/// share by index.
const WORKER_SLOTS: usize = 64;

thread_local! {
    static WORKER_INDEX: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Tells this thread which worker it is, so its requests use that worker's upstream
/// connections. Threads that never call it count as worker 0.
pub fn set_worker_index(index: usize) {
    WORKER_INDEX.with(|cell| cell.set(index));
}

/// One worker's connection to one endpoint.
#[derive(Default)]
struct H2Slot {
    /// Loaded lock-free on every request.
    connection: ArcSwapOption<h2_client::Connection>,
    /// Serialises reconnects so a burst after a failure opens one connection, not hundreds.
    connecting: tokio::sync::Mutex<()>,
}

struct Endpoint {
    address: String,
    /// The address again, shareable with access-log records without a copy.
    label: Arc<str>,
    authority: Authority,
    /// h2 connections, one per worker (empty for HTTP/1.1 upstreams, which use the pool).
    h2: Box<[H2Slot]>,
}

impl Endpoint {
    fn h2_slot(&self) -> &H2Slot {
        &self.h2[WORKER_INDEX.with(|cell| cell.get()) % self.h2.len()]
    }
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
                    h2: if spec.protocol.is_h2() {
                        (0..WORKER_SLOTS).map(|_| H2Slot::default()).collect()
                    } else {
                        Box::new([])
                    },
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
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let endpoint = self.pick();
        *endpoint_used = Some(endpoint.label.clone());
        let send = async {
            match self.spec.protocol {
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                    let authority = authority.unwrap_or_else(|| endpoint.authority.clone());
                    set_uri(&mut request, self.scheme(), authority);
                    *request.version_mut() = Version::HTTP_2;
                    self.send_h2(endpoint, request).await
                }
                UpstreamProtocol::Http1 | UpstreamProtocol::Http1Tls => {
                    self.send_http1(endpoint, request).await
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

    fn scheme(&self) -> Scheme {
        if self.spec.tls.is_some() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        }
    }

    async fn send_http1(
        &self,
        endpoint: &Endpoint,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // The pool connects to the URI's authority; the Host header keeps what the client
        // asked for.
        set_uri(&mut request, self.scheme(), endpoint.authority.clone());
        *request.version_mut() = Version::HTTP_11;
        let pool = self.http1_pool.as_ref().expect("http1 upstream has a pool");
        let result = match pool {
            Http1Pool::Plain(pool) => pool.request(request).await,
            Http1Pool::Tls(pool) => pool.request(request).await,
        };
        result.map(|r| r.map(ProxyBody::Stream)).map_err(|e| {
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

    async fn send_h2(
        &self,
        endpoint: &Endpoint,
        request: Request<ProxyBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let (head, mut body) = request.into_parts();
        // Once: a stream the upstream refused unprocessed is sent again, on a new
        // connection if the refusal was a GOAWAY.
        let mut first_try = true;
        loop {
            let end_of_stream = http_body::Body::is_end_stream(&body);
            let connection = self.h2_connection(endpoint).await?;
            let mut stream = match connection.open(&head, end_of_stream).await {
                Ok(stream) => stream,
                // The connection ended (closed, GOAWAY) before this request left: nothing
                // reached the upstream, so one more try on a fresh connection is safe even
                // for non-idempotent calls.
                Err(Failure::Refused) => {
                    connection.retire();
                    let connection = self.h2_connection(endpoint).await?;
                    connection
                        .open(&head, end_of_stream)
                        .await
                        .map_err(|e| self.h2_failed(endpoint, e))?
                }
                Err(e) => return Err(self.h2_failed(endpoint, e)),
            };
            // The request body is forwarded from this task while the response is awaited:
            // a unary call's message arrives with its headers or just after them, and needs
            // no task of its own. Only a body still going when the response headers arrive
            // (a client or bidi stream) gets one.
            let mut pump =
                (!end_of_stream).then(|| RequestPump::new(body, stream.clone_ref(), first_try));
            let mut pump_done = false;
            let response = poll_fn(|cx| {
                if let Some(running) = pump.as_mut().filter(|_| !pump_done) {
                    pump_done = Pin::new(running).poll(cx).is_ready();
                }
                stream.poll_response(cx)
            })
            .await;
            match response {
                Ok(response) => {
                    if let Some(mut pump) = pump.filter(|_| !pump_done) {
                        pump.taken = None; // answered: nothing will be sent again
                        tokio::spawn(pump);
                    }
                    return Ok(response.map(|()| ProxyBody::Upstream(UpstreamBody::new(stream))));
                }
                // REFUSED_STREAM, or a GOAWAY below this stream's id: the upstream did not
                // process it (RFC 9113 §8.7), so sending it again is safe whatever the
                // method, if the whole body is still at hand.
                Err(Failure::Refused) if first_try => {
                    let again = match pump.as_mut() {
                        None => Some(ProxyBody::Empty),
                        Some(pump) => poll_fn(|cx| Poll::Ready(pump.take_resend(cx))).await,
                    };
                    let Some(again) = again else {
                        return Err(self.h2_failed(endpoint, Failure::Refused));
                    };
                    tracing::debug!(upstream = %self.spec.name, "stream refused unprocessed; sending it again");
                    body = again;
                    first_try = false;
                }
                Err(e) => return Err(self.h2_failed(endpoint, e)),
            }
        }
    }

    /// This worker's live h2 connection to the endpoint, or a new one.
    async fn h2_connection(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Arc<h2_client::Connection>, ProxyError> {
        if let Some(connection) = endpoint.h2_slot().connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        // Boxed: connecting (TCP, TLS, the h2 start) is rare, and inline its state would be
        // part of every request's future.
        Box::pin(self.connect_h2(endpoint)).await
    }

    /// Makes this worker's h2 connection to the endpoint, unless a request that waited for
    /// the same slot already has.
    async fn connect_h2(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Arc<h2_client::Connection>, ProxyError> {
        let slot = endpoint.h2_slot();
        let _connecting = slot.connecting.lock().await;
        if let Some(connection) = slot.connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        let io = self.connect_io(endpoint).await?;
        let (connection, driving) = h2_client::Connection::start(
            io,
            h2_client::Settings {
                stream_window: UPSTREAM_STREAM_WINDOW,
                connection_window: UPSTREAM_CONNECTION_WINDOW,
                write_batch: UPSTREAM_WRITE_BATCH,
                keepalive: self
                    .spec
                    .h2_keepalive_interval
                    .map(|every| (every, self.spec.h2_keepalive_timeout)),
                settings_timeout: self.spec.connect_timeout,
                header_limits: h2_client::HeaderLimits {
                    max_fields: self.spec.h2_max_response_headers,
                    max_bytes: self.spec.h2_max_response_header_bytes,
                },
            },
        );
        let name = self.spec.name.clone();
        let label = endpoint.label.clone();
        tokio::spawn(async move {
            match driving.await {
                Err(error @ Failure::Violation(_)) => {
                    tracing::warn!(upstream = %name, endpoint = %label, %error, "upstream h2 connection ended");
                }
                Err(error) => {
                    tracing::debug!(upstream = %name, endpoint = %label, %error, "upstream h2 connection ended");
                }
                Ok(()) => {}
            }
        });
        let connection = Arc::new(connection);
        slot.connection.store(Some(connection.clone()));
        Ok(connection)
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
    async fn connect_io(
        &self,
        endpoint: &Endpoint,
    ) -> Result<Box<dyn h2_client::Transport>, ProxyError> {
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
    /// On an `http1-tls` upstream it is TLS, made with the same client configuration (CA,
    /// server name, client certificate) as the upstream's pool. h2 and h2c upstreams never get
    /// an HTTP/1.1 handshake (on `h2` it would be cleartext to a TLS port): their websockets
    /// go through [`Upstream::open_websocket_h2`], and this refuses them as a safeguard.
    /// Also returns the endpoint's authority and its label (for the access log).
    pub async fn connect_for_upgrade(
        &self,
    ) -> Result<(http1::SendRequest<ProxyBody>, Authority, Arc<str>), ProxyError> {
        if self.spec.protocol.is_h2() {
            return Err(ProxyError::UpgradeFailed(format!(
                "upstream {} speaks {}: its websockets take extended CONNECT, not an \
                 HTTP/1.1 upgrade",
                self.spec.name,
                self.spec.protocol.name()
            )));
        }
        let endpoint = self.pick();
        // TCP, then TLS for http1-tls (connect_io reports a certificate problem as such).
        let io = self.connect_io(endpoint).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(endpoint, &e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok((sender, endpoint.authority.clone(), endpoint.label.clone()))
    }

    /// Opens an RFC 8441 extended CONNECT stream (`:protocol websocket`) on an h2 or h2c
    /// upstream, on the same connections its requests use, and waits for the response head
    /// (within `response_timeout`). `head` carries the path and the websocket headers to
    /// forward; `authority` becomes `:authority`. Where the upstream's SETTINGS do not enable
    /// extended CONNECT no stream is opened: the caller gets a 502 that says why. Also
    /// returns the endpoint's label (for the access log).
    pub(crate) async fn open_websocket_h2(
        &self,
        mut head: http::request::Parts,
        authority: Option<Authority>,
    ) -> Result<(StreamRef, Response<()>, Arc<str>), ProxyError> {
        let endpoint = self.pick();
        let authority = authority.unwrap_or_else(|| endpoint.authority.clone());
        let path = head
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        head.uri = Uri::builder()
            .scheme(self.scheme())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
        head.method = http::Method::CONNECT;
        head.version = Version::HTTP_2;
        head.extensions = http::Extensions::new();
        head.extensions
            .insert(h2_client::ConnectProtocol("websocket"));
        let open = async {
            let connection = self.h2_connection(endpoint).await?;
            let enabled = connection
                .connect_protocol_enabled()
                .await
                .map_err(|e| self.h2_failed(endpoint, e))?;
            if !enabled {
                return Err(ProxyError::UpgradeFailed(format!(
                    "upstream {} ({}) does not support websockets over HTTP/2: its SETTINGS \
                     do not enable extended CONNECT (RFC 8441)",
                    self.spec.name,
                    self.spec.protocol.name()
                )));
            }
            let mut stream = connection
                .open(&head, false)
                .await
                .map_err(|e| self.h2_failed(endpoint, e))?;
            let response = poll_fn(|cx| stream.poll_response(cx))
                .await
                .map_err(|e| self.h2_failed(endpoint, e))?;
            Ok((stream, response))
        };
        let (stream, response) = match self.spec.response_timeout {
            None => open.await?,
            Some(limit) => tokio::time::timeout(limit, open)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::UpstreamTimeout {
                        upstream: self.spec.name.clone(),
                        timeout_ms: limit.as_millis(),
                    })
                })?,
        };
        Ok((stream, response, endpoint.label.clone()))
    }

    fn connect_error(&self, endpoint: &Endpoint, error: &dyn std::error::Error) -> ProxyError {
        ProxyError::UpstreamConnect {
            upstream: self.spec.name.clone(),
            endpoint: endpoint.address.clone(),
            reason: error_chain(error),
        }
    }

    /// An h2 stream's failure as the caller's error: the upstream's protocol violations
    /// (ours to detect: limits, flow control, malformed frames) apart from plain failures.
    fn h2_failed(&self, endpoint: &Endpoint, failure: Failure) -> ProxyError {
        match failure {
            Failure::Violation(detail) => ProxyError::UpstreamProtocol {
                upstream: self.spec.name.clone(),
                endpoint: endpoint.address.clone(),
                detail: detail.to_string(),
            },
            other => self.failed(&other),
        }
    }

    fn failed(&self, error: &dyn std::error::Error) -> ProxyError {
        ProxyError::UpstreamFailed {
            upstream: self.spec.name.clone(),
            reason: error_chain(error),
        }
    }
}

/// Request bodies up to this size are kept while they are sent (as shared `Bytes`, not
/// copies), so that a stream the upstream refused unprocessed can be sent again. Unary gRPC
/// calls fit; a larger body whose stream is refused fails as before.
const RESEND_LIMIT: usize = 64 * 1024;

/// Feeds a client's request body into its upstream h2 stream: DATA as the upstream's window
/// allows (no more is pulled from the client meanwhile), then trailers or end of stream. A
/// client's reset reaches the upstream with its reason; an upstream's reset stops the feed.
struct RequestPump {
    body: ProxyBody,
    upload: StreamRef,
    /// Data taken from the client that the upstream's window has not let out yet, and
    /// whether it ends the body.
    waiting: Option<(Bytes, bool)>,
    /// Every chunk taken from the client so far, while the body may still be sent again
    /// (`None` once it is over `RESEND_LIMIT`, has trailers or failed).
    taken: Option<TakenBody>,
}

#[derive(Default)]
struct TakenBody {
    /// A unary call's message is one chunk: it is kept without allocating.
    first: Option<Bytes>,
    more: Vec<Bytes>,
    len: usize,
    complete: bool,
}

impl RequestPump {
    fn new(body: ProxyBody, upload: StreamRef, keep_for_resend: bool) -> Self {
        RequestPump {
            body,
            upload,
            waiting: None,
            taken: keep_for_resend.then(TakenBody::default),
        }
    }

    /// Notes a chunk taken from the client; `None` data means the body ended.
    fn keep(&mut self, data: Option<&Bytes>) {
        let Some(taken) = self.taken.as_mut() else {
            return;
        };
        match data {
            None => taken.complete = true,
            Some(data) if taken.len + data.len() > RESEND_LIMIT => self.taken = None,
            Some(data) => {
                taken.len += data.len();
                if taken.first.is_none() {
                    taken.first = Some(data.clone());
                } else {
                    taken.more.push(data.clone());
                }
            }
        }
    }

    /// The whole request body to send again, if the client has sent all of it (within
    /// `RESEND_LIMIT`) by now. It does not wait for more: a bidi client may be waiting for
    /// a response before it sends the rest, and a refusal must not hang it.
    fn take_resend(&mut self, cx: &mut Context<'_>) -> Option<ProxyBody> {
        while !self.taken.as_ref()?.complete {
            match http_body::Body::poll_frame(Pin::new(&mut self.body), cx) {
                Poll::Pending => return None,
                Poll::Ready(None) => self.keep(None),
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().ok()?; // trailers are not kept
                    self.keep(Some(&data));
                    if http_body::Body::is_end_stream(&self.body) {
                        self.keep(None);
                    }
                }
                Poll::Ready(Some(Err(_))) => return None,
            }
        }
        let taken = self.taken.take()?;
        let whole = match (taken.first, taken.more.is_empty()) {
            (None, _) => return Some(ProxyBody::Empty),
            (Some(only), true) => only,
            (Some(first), false) => {
                let mut whole = bytes::BytesMut::with_capacity(taken.len);
                whole.extend_from_slice(&first);
                for chunk in &taken.more {
                    whole.extend_from_slice(chunk);
                }
                whole.freeze()
            }
        };
        Some(ProxyBody::Full(Some(whole)))
    }
}

impl Future for RequestPump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some((data, end_of_stream)) = this.waiting.as_mut() {
                let end_of_stream = *end_of_stream;
                if ready!(this.upload.poll_send(cx, data, end_of_stream)).is_err() || end_of_stream
                {
                    return Poll::Ready(());
                }
                this.waiting = None;
            }
            if this.upload.poll_send_closed(cx).is_ready() {
                tracing::debug!("upstream ended a stream mid-request");
                return Poll::Ready(());
            }
            let frame = match ready!(http_body::Body::poll_frame(Pin::new(&mut this.body), cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    this.taken = None;
                    this.upload.reset(h2_reason(&*error));
                    return Poll::Ready(());
                }
                None => {
                    this.keep(None);
                    this.waiting = Some((Bytes::new(), true));
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let end_of_stream = http_body::Body::is_end_stream(&this.body);
                    this.keep(Some(&data));
                    if end_of_stream {
                        this.keep(None);
                    }
                    this.waiting = Some((data, end_of_stream));
                }
                Err(frame) => {
                    this.taken = None;
                    if let Ok(trailers) = frame.into_trailers() {
                        this.upload.send_trailers(&trailers);
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The h2 reason inside an error chain (a client's CANCEL, say), else INTERNAL_ERROR.
fn h2_reason(error: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        current = e.source();
    }
    h2::Reason::INTERNAL_ERROR
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
