//! Upstreams: where routed requests go. An endpoint name stands for every address DNS lists
//! for it (a headless Service: one per pod), looked up again every `dns_refresh`
//! (`resolve`); each request picks an address by power of two choices on pending requests,
//! skipping addresses that are draining, unhealthy or ejected (`addresses`). h2c/h2
//! upstreams multiplex every client stream over one long-lived HTTP/2 connection per worker
//! and address; http1 upstreams use a keep-alive pool per address (`http1`). All upstream
//! sockets set TCP_NODELAY: without it Nagle's algorithm and delayed ACKs stall small h2
//! frames (measured: 13× fewer small gRPC calls per second).
//!
//! h2 upstreams are spoken by pachgate's own client connection (crate `pachgate-h2-upstream`),
//! not hyper's client: a request is opened, fed and answered inside the task that serves the
//! client's stream, where hyper's client adds a dispatch channel, a spawned task per request
//! and another per request body (benches/README.md has the before/after). Under a burst,
//! every 16th request writes the queued batch out from its stream's task, so the upstream
//! starts on it while the worker reads the rest (`UPSTREAM_WRITE_BATCH`).
//!
//! Retries are only of requests nothing of which reached an upstream: a failed connection
//! (to another address, up to 4 times), a stream refused unprocessed (`resend`: when its
//! body fits `RESEND_LIMIT`); all within one retry budget per upstream.

mod addresses;
mod health;
mod http1;
mod resend;
mod resolve;

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::client::conn::http1 as hyper_http1;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pachgate_h2_upstream::{self as h2_client, Failure, StreamRef};
use tokio::net::TcpStream;

use self::addresses::{Address, H2Slot, PendingOn, Tried};
use self::health::HealthWiring;
use self::http1::{is_tls_handshake_failure, Http1Pool, TlsHttpConnector};
use self::resend::RequestPump;
use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
pub use crate::metrics::{AddressSummary, UpstreamCounts};

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
    /// `host:port` each. A name stands for every address DNS lists for it (A and AAAA),
    /// looked up again every `dns_refresh`; an IP address stands for itself.
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
    /// How often endpoint names are looked up again.
    pub dns_refresh: Duration,
    /// The DNS servers to ask; empty: the system's configuration (resolv.conf, hosts).
    pub dns_servers: Vec<std::net::SocketAddr>,
    /// Requests waiting for their response head past which new ones are refused at once
    /// (503 / gRPC 14), so an upstream that stalls cannot pile up unbounded work.
    pub max_pending_requests: usize,
    /// Active checks of each address; `None`: every address counts as healthy (passive
    /// ejection still applies).
    pub health_check: Option<HealthCheck>,
}

pub use pachgate_health::{CheckKind as HealthCheckKind, CheckSpec as HealthCheck};

impl UpstreamSpec {
    /// A spec with the defaults the config file uses for every key it leaves out.
    pub fn new(name: &str, endpoints: Vec<String>, protocol: UpstreamProtocol) -> Self {
        UpstreamSpec {
            name: name.to_string(),
            endpoints,
            protocol,
            connect_timeout: Duration::from_secs(5),
            response_timeout: None,
            h2_keepalive_interval: Some(Duration::from_secs(30)),
            h2_keepalive_timeout: Duration::from_secs(20),
            tls: None,
            h2_max_response_headers: DEFAULT_MAX_RESPONSE_HEADERS,
            h2_max_response_header_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            dns_refresh: DEFAULT_DNS_REFRESH,
            dns_servers: Vec::new(),
            max_pending_requests: DEFAULT_MAX_PENDING_REQUESTS,
            health_check: None,
        }
    }
}

/// Names are looked up again this often unless the upstream says otherwise.
pub const DEFAULT_DNS_REFRESH: Duration = Duration::from_secs(5);
/// Requests awaiting their response head, per upstream (Envoy's default circuit breaker
/// allows 1,024 pending; pachgate's h2 multiplexing makes waiting cheaper, so more).
pub const DEFAULT_MAX_PENDING_REQUESTS: usize = 4096;
/// Retries of a request whose connection failed before anything reached the upstream,
/// each on another address (what Pachyderm's Envoy does: `num_retries: 4`).
const MAX_CONNECT_RETRIES: usize = 4;

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

/// Workers keep their own h2 connection to each address (a stream is then driven by the
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

fn h2_slot(address: &Address) -> &H2Slot {
    &address.h2[WORKER_INDEX.with(|cell| cell.get()) % address.h2.len()]
}

pub struct Upstream {
    spec: UpstreamSpec,
    /// Every address of every endpoint, replaced whole when DNS answers change.
    addresses: Arc<ArcSwap<Vec<Arc<Address>>>>,
    /// DNS refresh and health checks, until [`Upstream::start_background`] starts them.
    background: std::sync::Mutex<Option<Background>>,
    http1_pool: Option<Http1Pool>,
    /// Requests awaiting their response head, over all addresses.
    pending: AtomicUsize,
    budget: RetryBudget,
    stats: UpstreamStats,
}

struct Background {
    resolution: Option<resolve::Resolution>,
    health: Option<HealthWiring>,
}

/// What became of requests that did not simply go through, for `/metrics`.
#[derive(Default)]
struct UpstreamStats {
    retries: AtomicU64,
    retries_over_budget: AtomicU64,
    overloaded: AtomicU64,
}

/// How one attempt at a request ended, when it did not end in a response head.
struct Attempt {
    error: ProxyError,
    /// The request again, when nothing of it reached the upstream: safe to send elsewhere.
    resend: Option<Request<ProxyBody>>,
    /// The address's connection failed: eject it for a while.
    eject: bool,
}

impl Attempt {
    fn failed(error: ProxyError) -> Self {
        Attempt {
            error,
            resend: None,
            eject: false,
        }
    }
}

impl Upstream {
    pub fn new(spec: UpstreamSpec) -> Result<Self, String> {
        if spec.endpoints.is_empty() {
            return Err(format!("upstream {}: no endpoints", spec.name));
        }
        let slots = if spec.protocol.is_h2() {
            WORKER_SLOTS
        } else {
            0
        };
        let mut initial = Vec::with_capacity(spec.endpoints.len());
        let mut names = Vec::new();
        for endpoint in &spec.endpoints {
            let authority = endpoint
                .parse::<Authority>()
                .map_err(|e| format!("upstream {}: endpoint {endpoint:?}: {e}", spec.name))?;
            let socket = endpoint.parse::<SocketAddr>().ok();
            if socket.is_none() {
                names.push(resolve::Name::new(endpoint, &authority));
            }
            let address = Address::new(endpoint.clone(), socket, authority, slots)
                .map_err(|e| format!("upstream {}: {e}", spec.name))?;
            initial.push(Arc::new(address));
        }
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
        let health = spec
            .health_check
            .clone()
            .map(|check| HealthWiring::new(&spec.name, check, spec.tls.as_ref()));
        let resolution = (!names.is_empty()).then(|| resolve::Resolution {
            upstream: spec.name.clone(),
            names,
            refresh: spec.dns_refresh,
            servers: spec.dns_servers.clone(),
            h2_slots: slots,
            health: health.clone(),
            literals: spec
                .endpoints
                .iter()
                .filter(|e| e.parse::<SocketAddr>().is_ok())
                .cloned()
                .collect(),
        });
        let addresses = Arc::new(ArcSwap::from_pointee(initial));
        Ok(Upstream {
            spec,
            addresses,
            background: std::sync::Mutex::new(Some(Background { resolution, health })),
            http1_pool,
            pending: AtomicUsize::new(0),
            budget: RetryBudget::default(),
            stats: UpstreamStats::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Starts looking the endpoint names up again every `dns_refresh` and checking each
    /// address's health, on the current runtime, until the upstream is dropped (with its
    /// snapshot). Once; without a runtime (`pachgate check`) it does nothing. Until the
    /// first DNS answer a name's connections ask the system resolver.
    pub fn start_background(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let Some(background) = self
            .background
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
        else {
            return;
        };
        let _entered = runtime.enter();
        if let Some(health) = &background.health {
            for address in self.addresses.load().iter() {
                health.adopt(address);
            }
        }
        if let Some(resolution) = background.resolution {
            runtime.spawn(resolution.run(Arc::downgrade(&self.addresses)));
        }
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.spec.protocol
    }

    /// The endpoints as configured (names or addresses).
    pub fn endpoints(&self) -> impl Iterator<Item = &str> {
        self.spec.endpoints.iter().map(String::as_str)
    }

    /// Every address the endpoints stand for now, with its state.
    pub fn address_summaries(&self) -> Vec<AddressSummary> {
        self.addresses
            .load()
            .iter()
            .map(|a| AddressSummary {
                address: a.target.clone(),
                state: a.state_name(),
                pending: a.pending.load(Ordering::Relaxed),
                ejections: a.ejections.load(Ordering::Relaxed),
                requests: a.requests.load(Ordering::Relaxed),
            })
            .collect()
    }

    pub fn counts(&self) -> UpstreamCounts {
        UpstreamCounts {
            pending: self.pending.load(Ordering::Relaxed),
            retries: self.stats.retries.load(Ordering::Relaxed),
            retries_over_budget: self.stats.retries_over_budget.load(Ordering::Relaxed),
            overloaded: self.stats.overloaded.load(Ordering::Relaxed),
        }
    }

    fn pick(&self, tried: &Tried) -> Option<Arc<Address>> {
        addresses::pick(&self.addresses.load(), tried)
    }

    /// Sends a request whose URI holds only the path (and query); `authority` is what the
    /// client asked for and becomes `:authority` on h2 upstreams. `endpoint_used` hears which
    /// address was chosen (for the access log).
    pub async fn send(
        &self,
        request: Request<ProxyBody>,
        authority: Option<Authority>,
        endpoint_used: &mut Option<Arc<str>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if self.pending.load(Ordering::Relaxed) >= self.spec.max_pending_requests {
            self.stats.overloaded.fetch_add(1, Ordering::Relaxed);
            return Err(ProxyError::UpstreamOverloaded {
                upstream: self.spec.name.clone(),
                limit: self.spec.max_pending_requests,
            });
        }
        let _pending = Counted::new(&self.pending);
        let send = self.send_retrying(request, authority, endpoint_used);
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

    /// One attempt, then more while nothing of the request reached an upstream: a connection
    /// that failed before the request left goes to another address (up to
    /// `MAX_CONNECT_RETRIES` times), a stream refused unprocessed is sent again. All retries
    /// share the upstream's retry budget, so an outage does not become a retry storm.
    async fn send_retrying(
        &self,
        mut request: Request<ProxyBody>,
        authority: Option<Authority>,
        endpoint_used: &mut Option<Arc<str>>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let mut tried = Tried::default();
        let mut retries = 0;
        let mut _retrying: Option<RetryPermit<'_>> = None;
        let mut last_error = None;
        loop {
            let Some(address) = self.pick(&tried) else {
                return Err(last_error.unwrap_or_else(|| ProxyError::UpstreamConnect {
                    upstream: self.spec.name.clone(),
                    endpoint: self.spec.endpoints.join(", "),
                    reason: "no address to connect to".into(),
                }));
            };
            *endpoint_used = Some(address.label.clone());
            let may_resend = retries < MAX_CONNECT_RETRIES;
            let pending_here = PendingOn::new(address.clone());
            let attempt = match self.spec.protocol {
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                    self.send_h2(&address, request, &authority).await
                }
                UpstreamProtocol::Http1 | UpstreamProtocol::Http1Tls => {
                    let may_resend = may_resend && self.addresses.load().len() > 1;
                    self.send_http1(&address, request, may_resend).await
                }
            };
            drop(pending_here);
            let attempt = match attempt {
                Ok(response) => {
                    address.note_success();
                    return Ok(response);
                }
                Err(attempt) => attempt,
            };
            if attempt.eject {
                let ejected_for = address.note_connection_failure();
                tracing::debug!(upstream = %self.spec.name, address = %address.target, ?ejected_for, error = %attempt.error, "address ejected");
                tried.add(&address);
            }
            let Some(again) = attempt.resend.filter(|_| may_resend) else {
                return Err(attempt.error);
            };
            // A failed connection sends the request to another address, if one is left; a
            // refusal may go to the same one again, on a new connection.
            if attempt.eject && self.pick(&tried).is_none() {
                return Err(attempt.error);
            }
            match self.budget.acquire(self.pending.load(Ordering::Relaxed)) {
                Some(permit) => _retrying = Some(permit),
                None => {
                    self.stats
                        .retries_over_budget
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(attempt.error);
                }
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(upstream = %self.spec.name, error = %attempt.error, "sending the request again");
            retries += 1;
            request = again;
            last_error = Some(attempt.error);
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
        address: &Address,
        mut request: Request<ProxyBody>,
        may_resend: bool,
    ) -> Result<Response<ProxyBody>, Attempt> {
        // A request without a body can be sent again if the connection fails; with a body it
        // cannot (the pool has taken it).
        let copy = (may_resend && http_body::Body::is_end_stream(request.body()))
            .then(|| copy_bodiless(&request));
        // The pool connects to the URI's authority (the address itself); the Host header
        // keeps what the client asked for.
        set_uri(
            &mut request,
            self.scheme(),
            address.target_authority.clone(),
        );
        *request.version_mut() = Version::HTTP_11;
        let pool = self.http1_pool.as_ref().expect("http1 upstream has a pool");
        let result = match pool {
            Http1Pool::Plain(pool) => pool.request(request).await,
            Http1Pool::Tls(pool) => pool.request(request).await,
        };
        result.map(|r| r.map(ProxyBody::Stream)).map_err(|e| {
            if is_tls_handshake_failure(&e) {
                Attempt {
                    error: ProxyError::UpstreamTls {
                        upstream: self.spec.name.clone(),
                        endpoint: address.target.clone(),
                        reason: error_chain(&e),
                    },
                    resend: None,
                    eject: true,
                }
            } else if e.is_connect() {
                Attempt {
                    error: self.connect_error(address, &e),
                    resend: copy,
                    eject: true,
                }
            } else {
                Attempt::failed(self.failed(&e))
            }
        })
    }

    async fn send_h2(
        &self,
        address: &Address,
        mut request: Request<ProxyBody>,
        authority: &Option<Authority>,
    ) -> Result<Response<ProxyBody>, Attempt> {
        let authority = authority
            .clone()
            .unwrap_or_else(|| address.endpoint_authority.clone());
        set_uri(&mut request, self.scheme(), authority);
        *request.version_mut() = Version::HTTP_2;
        let connection = match self.h2_connection(address).await {
            Ok(connection) => connection,
            Err(error) => {
                return Err(Attempt {
                    error,
                    resend: Some(request),
                    eject: true,
                })
            }
        };
        let (head, body) = request.into_parts();
        let end_of_stream = http_body::Body::is_end_stream(&body);
        let mut stream = match connection.open(&head, end_of_stream).await {
            Ok(stream) => stream,
            // The connection ended (closed, GOAWAY) before this request left: nothing
            // reached the upstream, so one more try on a fresh connection is safe even for
            // non-idempotent calls.
            Err(Failure::Refused) => {
                connection.retire();
                let fresh = match self.h2_connection(address).await {
                    Ok(connection) => connection,
                    Err(error) => {
                        return Err(Attempt {
                            error,
                            resend: Some(Request::from_parts(head, body)),
                            eject: true,
                        })
                    }
                };
                match fresh.open(&head, end_of_stream).await {
                    Ok(stream) => stream,
                    Err(Failure::Refused) => {
                        return Err(Attempt {
                            error: self.h2_failed(address, Failure::Refused),
                            resend: Some(Request::from_parts(head, body)),
                            eject: !fresh.peer_spoke(),
                        })
                    }
                    Err(e) => return Err(Attempt::failed(self.h2_failed(address, e))),
                }
            }
            Err(e) => return Err(Attempt::failed(self.h2_failed(address, e))),
        };
        // The request body is forwarded from this task while the response is awaited: a
        // unary call's message arrives with its headers or just after them, and needs no task
        // of its own. Only a body still going when the response headers arrive (a client or
        // bidi stream) gets one.
        let mut pump = (!end_of_stream).then(|| RequestPump::new(body, stream.clone_ref(), true));
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
                Ok(response.map(|()| ProxyBody::Upstream(UpstreamBody::new(stream))))
            }
            // REFUSED_STREAM, a GOAWAY below this stream's id, or a connection that ended
            // before the upstream said a word: the upstream did not process it (RFC 9113
            // §8.7), so sending it again is safe whatever the method, if the whole body is
            // still at hand.
            Err(Failure::Refused) => {
                let again = match pump.as_mut() {
                    None => Some(ProxyBody::Empty),
                    Some(pump) => poll_fn(|cx| Poll::Ready(pump.take_resend(cx))).await,
                };
                Err(Attempt {
                    error: self.h2_failed(address, Failure::Refused),
                    resend: again.map(|body| Request::from_parts(head, body)),
                    eject: !connection.peer_spoke(),
                })
            }
            Err(e @ Failure::Connection(_)) => Err(Attempt {
                error: self.h2_failed(address, e),
                resend: None,
                eject: true,
            }),
            Err(e) => Err(Attempt::failed(self.h2_failed(address, e))),
        }
    }

    /// This worker's live h2 connection to the address, or a new one.
    async fn h2_connection(
        &self,
        address: &Address,
    ) -> Result<Arc<h2_client::Connection>, ProxyError> {
        if let Some(connection) = h2_slot(address).connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        // Boxed: connecting (TCP, TLS, the h2 start) is rare, and inline its state would be
        // part of every request's future.
        Box::pin(self.connect_h2(address)).await
    }

    /// Makes this worker's h2 connection to the address, unless a request that waited for
    /// the same slot already has.
    async fn connect_h2(
        &self,
        address: &Address,
    ) -> Result<Arc<h2_client::Connection>, ProxyError> {
        let slot = h2_slot(address);
        let _connecting = slot.connecting.lock().await;
        if let Some(connection) = slot.connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        let io = self.connect_io(address).await?;
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
        let label = address.label.clone();
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
        // An address that stopped being listed while this connected takes no new streams.
        if address.draining.load(Ordering::Relaxed) {
            connection.retire();
        } else {
            slot.connection.store(Some(connection.clone()));
        }
        Ok(connection)
    }

    async fn connect_tcp(&self, address: &Address) -> Result<TcpStream, ProxyError> {
        let connecting = async {
            match address.socket {
                Some(socket) => TcpStream::connect(socket).await,
                None => TcpStream::connect(address.target.as_str()).await,
            }
        };
        let tcp = tokio::time::timeout(self.spec.connect_timeout, connecting)
            .await
            .map_err(|_| ProxyError::UpstreamConnect {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: format!("timed out after {:?}", self.spec.connect_timeout),
            })?
            .map_err(|e| self.connect_error(address, &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| self.connect_error(address, &e))?;
        Ok(tcp)
    }

    /// TCP, then TLS when the upstream is configured for it. A certificate problem is
    /// reported as what it is: a TLS verification failure.
    async fn connect_io(
        &self,
        address: &Address,
    ) -> Result<Box<dyn h2_client::Transport>, ProxyError> {
        let tcp = self.connect_tcp(address).await?;
        let Some(tls) = &self.spec.tls else {
            return Ok(Box::new(tcp));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
        match tokio::time::timeout(self.spec.connect_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(ProxyError::UpstreamTls {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(ProxyError::UpstreamConnect {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: "TLS handshake timed out".into(),
            }),
        }
    }

    /// An address for a websocket tunnel (no retries: a tunnel is not replayed).
    fn pick_for_tunnel(&self) -> Result<Arc<Address>, ProxyError> {
        self.pick(&Tried::default()).ok_or_else(|| {
            ProxyError::UpgradeFailed(format!("upstream {} has no address", self.spec.name))
        })
    }

    /// A dedicated HTTP/1.1 connection for one websocket upgrade; it leaves the pool's
    /// accounting because after the upgrade it is a byte tunnel, not an HTTP connection.
    /// On an `http1-tls` upstream it is TLS, made with the same client configuration (CA,
    /// server name, client certificate) as the upstream's pool. h2 and h2c upstreams never get
    /// an HTTP/1.1 handshake (on `h2` it would be cleartext to a TLS port): their websockets
    /// go through [`Upstream::open_websocket_h2`], and this refuses them as a safeguard.
    /// Also returns the endpoint's authority and the address's label (for the access log).
    pub async fn connect_for_upgrade(
        &self,
    ) -> Result<(hyper_http1::SendRequest<ProxyBody>, Authority, Arc<str>), ProxyError> {
        if self.spec.protocol.is_h2() {
            return Err(ProxyError::UpgradeFailed(format!(
                "upstream {} speaks {}: its websockets take extended CONNECT, not an \
                 HTTP/1.1 upgrade",
                self.spec.name,
                self.spec.protocol.name()
            )));
        }
        let address = self.pick_for_tunnel()?;
        // TCP, then TLS for http1-tls (connect_io reports a certificate problem as such).
        let io = match self.connect_io(&address).await {
            Ok(io) => io,
            Err(error) => {
                address.note_connection_failure();
                return Err(error);
            }
        };
        let (sender, connection) = hyper_http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(&address, &e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok((
            sender,
            address.endpoint_authority.clone(),
            address.label.clone(),
        ))
    }

    /// Opens an RFC 8441 extended CONNECT stream (`:protocol websocket`) on an h2 or h2c
    /// upstream, on the same connections its requests use, and waits for the response head
    /// (within `response_timeout`). `head` carries the path and the websocket headers to
    /// forward; `authority` becomes `:authority`. Where the upstream's SETTINGS do not enable
    /// extended CONNECT no stream is opened: the caller gets a 502 that says why. Also
    /// returns the address's label (for the access log).
    pub(crate) async fn open_websocket_h2(
        &self,
        mut head: http::request::Parts,
        authority: Option<Authority>,
    ) -> Result<(StreamRef, Response<()>, Arc<str>), ProxyError> {
        let address = self.pick_for_tunnel()?;
        let authority = authority.unwrap_or_else(|| address.endpoint_authority.clone());
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
            let connection = match self.h2_connection(&address).await {
                Ok(connection) => connection,
                Err(error) => {
                    address.note_connection_failure();
                    return Err(error);
                }
            };
            let enabled = connection
                .connect_protocol_enabled()
                .await
                .map_err(|e| self.h2_failed(&address, e))?;
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
                .map_err(|e| self.h2_failed(&address, e))?;
            let response = poll_fn(|cx| stream.poll_response(cx))
                .await
                .map_err(|e| self.h2_failed(&address, e))?;
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
        Ok((stream, response, address.label.clone()))
    }

    fn connect_error(&self, address: &Address, error: &dyn std::error::Error) -> ProxyError {
        ProxyError::UpstreamConnect {
            upstream: self.spec.name.clone(),
            endpoint: address.target.clone(),
            reason: error_chain(error),
        }
    }

    /// An h2 stream's failure as the caller's error: the upstream's protocol violations
    /// (ours to detect: limits, flow control, malformed frames) apart from plain failures.
    fn h2_failed(&self, address: &Address, failure: Failure) -> ProxyError {
        match failure {
            Failure::Violation(detail) => ProxyError::UpstreamProtocol {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
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

/// Retries in progress on one upstream: at most 20 % of its pending requests, and at least
/// 3 (Envoy's retry budget), so a failing upstream sees at most a fifth more load from
/// retries instead of five times as much.
#[derive(Default)]
struct RetryBudget {
    active: AtomicUsize,
}

const RETRY_BUDGET_PERCENT: usize = 20;
const RETRY_BUDGET_MIN: usize = 3;

impl RetryBudget {
    fn acquire(&self, pending: usize) -> Option<RetryPermit<'_>> {
        let allowed = (pending * RETRY_BUDGET_PERCENT / 100).max(RETRY_BUDGET_MIN);
        let mut active = self.active.load(Ordering::Relaxed);
        loop {
            if active >= allowed {
                return None;
            }
            match self.active.compare_exchange_weak(
                active,
                active + 1,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(RetryPermit(&self.active)),
                Err(now) => active = now,
            }
        }
    }
}

struct RetryPermit<'a>(&'a AtomicUsize);

impl Drop for RetryPermit<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts one in `counter` until dropped.
struct Counted<'a>(&'a AtomicUsize);

impl<'a> Counted<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Counted(counter)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A bodiless request's head again, for a resend after a failed connection.
fn copy_bodiless(request: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(ProxyBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
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

/// What `/metrics` reads of an upstream at each scrape.
impl crate::metrics::UpstreamFigures for Upstream {
    fn name(&self) -> &str {
        Upstream::name(self)
    }

    fn counts(&self) -> UpstreamCounts {
        Upstream::counts(self)
    }

    fn address_summaries(&self) -> Vec<AddressSummary> {
        Upstream::address_summaries(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    #[test]
    fn upstream_addresses_are_read_at_each_scrape() {
        let metrics = Metrics::new();
        assert!(!metrics.encode().contains("pachgate_upstream_"));
        let upstream = Arc::new(
            Upstream::new(UpstreamSpec::new(
                "pachd",
                vec!["127.0.0.1:1650".into(), "127.0.0.2:1650".into()],
                UpstreamProtocol::H2c,
            ))
            .unwrap(),
        );
        metrics.read_upstreams_from(move || vec![upstream.clone()]);
        let text = metrics.encode();
        for line in [
            r#"pachgate_upstream_pending_requests{upstream="pachd"} 0"#,
            r#"pachgate_upstream_retries_total{upstream="pachd"} 0"#,
            r#"pachgate_upstream_retries_over_budget_total{upstream="pachd"} 0"#,
            r#"pachgate_upstream_overloaded_total{upstream="pachd"} 0"#,
            r#"pachgate_upstream_address_healthy{upstream="pachd",address="127.0.0.2:1650"} 1"#,
            r#"pachgate_upstream_address_state{upstream="pachd",address="127.0.0.1:1650",state="healthy"} 1"#,
            r#"pachgate_upstream_address_state{upstream="pachd",address="127.0.0.1:1650",state="ejected"} 0"#,
            r#"pachgate_upstream_address_pending{upstream="pachd",address="127.0.0.1:1650"} 0"#,
            r#"pachgate_upstream_address_ejections_total{upstream="pachd",address="127.0.0.1:1650"} 0"#,
            r#"pachgate_upstream_address_requests_total{upstream="pachd",address="127.0.0.2:1650"} 0"#,
            "# TYPE pachgate_upstream_address_requests counter",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn the_retry_budget_is_a_fifth_of_pending_and_at_least_three() {
        let budget = RetryBudget::default();
        let few: Vec<_> = (0..3).map(|_| budget.acquire(1)).collect();
        assert!(few.iter().all(Option::is_some));
        assert!(
            budget.acquire(1).is_none(),
            "a fourth retry with one pending"
        );
        drop(few);
        let many: Vec<_> = (0..20).map(|_| budget.acquire(100)).collect();
        assert!(many.iter().all(Option::is_some));
        assert!(budget.acquire(100).is_none(), "21 retries with 100 pending");
        drop(many);
        assert_eq!(
            budget.active.load(Ordering::Relaxed),
            0,
            "permits give back"
        );
    }
}
