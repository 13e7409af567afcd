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
//! body fits `RESEND_LIMIT`); all within one retry budget per upstream (`retry`).

mod addresses;
mod h2;
mod health;
mod http1;
mod resend;
mod resolve;
mod retry;
mod spec;
mod tunnel;

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use pachgate_h2_upstream::Failure;

use self::addresses::{Address, H2Slot, PendingOn, Tried};
use self::health::HealthWiring;
use self::http1::{Http1Pool, TlsHttpConnector};
use self::retry::{RetryBudget, RetryPermit};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::request_id::insert_request_id;

pub use self::spec::{
    HealthCheck, HealthCheckKind, UpstreamProtocol, UpstreamSpec, UpstreamTls, DEFAULT_DNS_REFRESH,
    DEFAULT_MAX_PENDING_REQUESTS,
};
pub use crate::metrics::{AddressSummary, UpstreamCounts};

const UPSTREAM_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const UPSTREAM_CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

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
    /// That failure was counted against the address already, by another request that saw
    /// the same connect or connection fail: one failure is one strike, however many
    /// requests it ends.
    counted: bool,
    /// Not a byte of the request left pachgate (no connection, or none that opened its
    /// stream): sending it elsewhere is its first send anywhere, not a retry that adds load
    /// to the upstream, so the retry budget does not bound it (gRPC's transparent retries).
    unsent: bool,
}

impl Attempt {
    fn failed(error: ProxyError) -> Self {
        Attempt {
            error,
            resend: None,
            eject: false,
            counted: false,
            unsent: false,
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
                    handshake_timeout: spec.connect_timeout,
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

    /// What the upstream was built from.
    pub(crate) fn spec(&self) -> &UpstreamSpec {
        &self.spec
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
    /// address was chosen (for the access log). `request_id`: an `x-request-id` made for
    /// the request and not in its headers, sent with them (on h2 encoded straight into the
    /// head: no header value or map insert per request).
    pub async fn send(
        &self,
        mut request: Request<ProxyBody>,
        authority: Option<Authority>,
        request_id: Option<&[u8; 32]>,
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
        if let (Some(id), false) = (request_id, self.spec.protocol.is_h2()) {
            insert_request_id(request.headers_mut(), id);
        }
        let send =
            std::pin::pin!(self.send_retrying(request, authority, request_id, endpoint_used));
        self.within_response_timeout(send).await
    }

    /// `answer` (the upstream's response head, however it is asked for), given up on after
    /// the upstream's `response_timeout` when one is set. Taken pinned where its caller
    /// keeps it: moved in by value, a request's whole sending state would be copied into
    /// this future (measured: ~450 instructions per gRPC call).
    pub(crate) async fn within_response_timeout<T, F>(
        &self,
        answer: Pin<&mut F>,
    ) -> Result<T, ProxyError>
    where
        F: std::future::Future<Output = Result<T, ProxyError>>,
    {
        match self.spec.response_timeout {
            None => answer.await,
            Some(limit) => tokio::time::timeout(limit, answer)
                .await
                .unwrap_or_else(|_| {
                    Err(ProxyError::UpstreamTimeout {
                        upstream: self.spec.name.clone(),
                        timeout_ms: limit.as_millis(),
                    })
                }),
        }
    }

    /// One attempt, then more while nothing of the request reached an upstream: a connection
    /// that failed before the request left goes to another address (up to
    /// `MAX_CONNECT_RETRIES` times), a stream refused unprocessed is sent again. Retries of
    /// requests that had left pachgate share the upstream's retry budget, so an outage does
    /// not become a retry storm; one that never left is sent on outside it.
    async fn send_retrying(
        &self,
        mut request: Request<ProxyBody>,
        authority: Option<Authority>,
        request_id: Option<&[u8; 32]>,
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
            let pending_here = PendingOn::new(&address);
            let attempt = match self.spec.protocol {
                UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
                    self.send_h2(&address, request, &authority, request_id)
                        .await
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
                if !attempt.counted {
                    let ejected_for = address.note_connection_failure();
                    tracing::debug!(upstream = %self.spec.name, address = %address.target, ?ejected_for, error = %attempt.error, "address ejected");
                }
                tried.add(&address);
            }
            let Some(again) = attempt.resend.filter(|_| may_resend) else {
                return Err(attempt.error);
            };
            // A failed connection sends the request to another address whose connections
            // have not just failed too, if one is left (with every address down, each request
            // gets one attempt, not a connect timeout per address); a refusal may go to the
            // same one again, on a new connection.
            if attempt.eject && !addresses::any_resendable(&self.addresses.load(), &tried) {
                return Err(attempt.error);
            }
            if !attempt.unsent {
                match self.budget.acquire(self.pending.load(Ordering::Relaxed)) {
                    Some(permit) => _retrying = Some(permit),
                    None => {
                        self.stats
                            .retries_over_budget
                            .fetch_add(1, Ordering::Relaxed);
                        return Err(attempt.error);
                    }
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
}
