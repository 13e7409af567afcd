//! The gateway: listeners, TLS accept, the HTTP server, and one request's journey through
//! route → forward (or websocket tunnel), readable top to bottom in [`Gateway::handle`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HeaderValue, CONTENT_TYPE, HOST, LOCATION};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use pachgate_auth_gate::{
    AllowReason, DenyReason, PachydermAuthSettings, PachydermGate, StaticTokens,
};
use pachgate_client_policy::{CidrSet, RateLimiter};
use pachgate_routing::{is_grpc_content_type, normalize_path, MatchSpec, RequestFacts, RouteTable};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::auth::{denial_style, deny_response, AuthGates, RouteGate, UpstreamWhoAmI};
use crate::body::ProxyBody;
use crate::closing::{close_cleanly, Reclaimable};
use crate::error::ProxyError;
use crate::exchange::{ensure_request_id, ClientAddress, Exchange, ObservedBody};
use crate::framing_guard::{FramingGuard, FramingVerdicts};
use crate::headers::{is_websocket_upgrade, set_forwarded, strip_hop_by_hop};
use crate::idle::ConnActivity;
use crate::metrics::{Metrics, RouteMetrics};
use crate::proxy_protocol::read_header as read_proxy_header;
use crate::route_timeouts::{bounded, RouteTimeouts};
use crate::upstream::{Upstream, UpstreamProtocol, UpstreamSpec};

/// Protocol limits, each set on purpose (hyper's defaults are not an ingress's defaults).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub h2_max_concurrent_streams: u32,
    /// Largest request header list accepted; larger ones are answered 431. HTTP/1: hyper's
    /// read buffer. HTTP/2: checked per request, see [`H2_HEADER_LIST_SLACK`].
    pub max_header_list_size: u32,
    /// Requests with an underscore in a header name are answered 400 (as Pachyderm's own
    /// proxy, Envoy with `headers_with_underscores_action: REJECT_REQUEST`, does).
    pub reject_underscore_headers: bool,
    /// Streams a client may open and reset before they are accepted (CVE-2023-44487).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams pachgate may reset for protocol errors before it closes the connection
    /// (CVE-2024-27316-style floods).
    pub h2_max_local_error_reset_streams: usize,
    /// PING interval toward idle clients; `None` disables pings.
    pub h2_keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// Time allowed for an HTTP/1 client to send a complete request head (slowloris).
    pub h1_header_read_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (h2: GOAWAY).
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    pub drain_timeout: Duration,
    /// h2 flow-control window per stream, in bytes.
    pub h2_stream_window: u32,
    /// h2 flow-control window per connection, in bytes. h2 also sizes its flood guard on
    /// small DATA frames from this (half of it): a 64 KiB window lets ~130 small frames be
    /// buffered before the connection is closed with ENHANCE_YOUR_CALM, which legitimate
    /// gRPC streams of small messages hit as soon as the upstream is a little slower.
    pub h2_connection_window: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            h2_max_concurrent_streams: 1024,
            max_header_list_size: 64 * 1024,
            reject_underscore_headers: false,
            h2_max_pending_accept_reset_streams: 100,
            h2_max_local_error_reset_streams: 1024,
            h2_keepalive_interval: Some(Duration::from_secs(60)),
            h2_keepalive_timeout: Duration::from_secs(20),
            h1_header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(180)),
            drain_timeout: Duration::from_secs(30),
            h2_stream_window: 2 * 1024 * 1024,
            h2_connection_window: 8 * 1024 * 1024,
        }
    }
}

/// Edge authentication for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteAuth {
    None,
    /// Pachyderm tokens, checked with pachd's WhoAmI (see `pachgate-auth-gate`).
    Pachyderm,
    /// Static bearer tokens from a file of SHA-256 hashes.
    Token,
}

/// A route as the binary's config describes it.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: MatchSpec,
    pub upstream: String,
    pub auth: RouteAuth,
    /// Client addresses allowed on this route; empty: all.
    pub allow: CidrSet,
    /// Forward the request target (path and query) exactly as the client sent it instead of
    /// its normal form; routing still matches on the normal form. For S3, whose signatures
    /// cover the exact path. Only on routes without auth (the gate must see what pachd sees).
    pub forward_as_sent: bool,
    /// `timeout` and `idle_timeout`; both off by default.
    pub timeouts: RouteTimeouts,
}

/// `[auth.pachyderm]`: where WhoAmI is asked and how answers are kept.
#[derive(Debug, Clone)]
pub struct PachydermAuthSpec {
    pub upstream: String,
    pub who_am_i_method: String,
    pub settings: PachydermAuthSettings,
}

#[derive(Debug, Clone)]
struct RouteTarget {
    /// Position in the config, which is also the index of the route's metric handles.
    index: usize,
    upstream: usize,
    auth: RouteAuth,
    allow: CidrSet,
    forward_as_sent: bool,
    timeouts: RouteTimeouts,
    /// For the log line when a timeout cuts a response (only read then).
    name: Arc<str>,
}

/// Who may connect and how often: listener-wide allow-list (checked before TLS), and
/// per-address rate limits for all requests and for failed authentications.
#[derive(Default)]
pub struct ClientPolicy {
    /// `Strict-Transport-Security` value added to responses on TLS connections
    /// (`max-age=…`); `None`: not sent.
    pub hsts: Option<HeaderValue>,
    pub listener_allow: CidrSet,
    /// Peers whose PROXY headers and `X-Forwarded-For` are believed; empty: none for
    /// `X-Forwarded-For`, any peer for PROXY headers on a listener that expects them.
    pub trusted_proxies: CidrSet,
    pub requests: Option<RateLimiter>,
    pub failed_auth: Option<RateLimiter>,
    /// Expect a PROXY protocol v1/v2 header at the start of every connection.
    pub proxy_protocol: bool,
}

/// One immutable configuration as requests see it; reload swaps the whole snapshot.
pub struct Snapshot {
    routes: RouteTable<RouteTarget>,
    route_specs: Vec<RouteSpec>,
    /// Filled in when the snapshot is installed in a gateway (which owns the metrics).
    route_metrics: Vec<Arc<RouteMetrics>>,
    upstreams: Vec<Arc<Upstream>>,
    pachyderm_gate: Option<PachydermGate>,
    static_tokens: Option<StaticTokens>,
    clients: ClientPolicy,
    access_log: bool,
    plain_mode: PlainMode,
}

/// A route as the status page shows it.
pub struct RouteSummary {
    pub name: String,
    pub matcher: String,
    pub upstream: String,
    pub auth: &'static str,
}

/// An upstream as the status page shows it.
pub struct UpstreamSummary {
    pub name: String,
    pub protocol: &'static str,
    pub endpoints: Vec<String>,
}

impl Snapshot {
    pub fn build(
        routes: Vec<RouteSpec>,
        upstreams: Vec<UpstreamSpec>,
        pachyderm: Option<PachydermAuthSpec>,
        static_tokens: Option<StaticTokens>,
        clients: ClientPolicy,
    ) -> Result<Self, String> {
        let upstreams = upstreams
            .into_iter()
            .map(|spec| Upstream::new(spec).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let pachyderm_gate = match pachyderm {
            None => None,
            Some(spec) => {
                let upstream = upstreams
                    .iter()
                    .find(|u| u.name() == spec.upstream)
                    .ok_or_else(|| format!("auth.pachyderm: unknown upstream {:?}", spec.upstream))?
                    .clone();
                let method = spec
                    .who_am_i_method
                    .parse()
                    .map_err(|e| format!("auth.pachyderm.who_am_i_method: {e}"))?;
                let who_am_i = Arc::new(UpstreamWhoAmI { upstream, method });
                Some(PachydermGate::new(spec.settings, who_am_i))
            }
        };
        let route_specs = routes.clone();
        let mut specs = Vec::with_capacity(routes.len());
        for (position, route) in routes.into_iter().enumerate() {
            let index = upstreams
                .iter()
                .position(|u| u.name() == route.upstream)
                .ok_or_else(|| {
                    format!(
                        "route {}: unknown upstream {:?}",
                        route.name, route.upstream
                    )
                })?;
            if route.auth == RouteAuth::Token && static_tokens.is_none() {
                return Err(format!(
                    "route {}: auth = \"token\" needs an [auth.token] section",
                    route.name
                ));
            }
            if route.forward_as_sent && route.auth != RouteAuth::None {
                return Err(format!(
                    "route {}: forwarding the path as sent needs auth = \"none\"",
                    route.name
                ));
            }
            if route.auth == RouteAuth::Pachyderm && pachyderm_gate.is_none() {
                return Err(format!(
                    "route {}: auth = \"pachyderm\" needs an [auth.pachyderm] section",
                    route.name
                ));
            }
            let target = RouteTarget {
                index: position,
                upstream: index,
                auth: route.auth,
                allow: route.allow,
                forward_as_sent: route.forward_as_sent,
                timeouts: route.timeouts,
                name: Arc::from(route.name.as_str()),
            };
            specs.push((route.name, route.matcher, target));
        }
        let names: Vec<String> = specs.iter().map(|(n, _, _)| n.clone()).collect();
        let routes = RouteTable::compile(specs)
            .map_err(|(index, e)| format!("route {}: {e}", names[index]))?;
        Ok(Snapshot {
            routes,
            route_specs,
            route_metrics: Vec::new(),
            upstreams,
            pachyderm_gate,
            static_tokens,
            clients,
            access_log: true,
            plain_mode: PlainMode::Serve,
        })
    }

    /// What the plaintext listener does (redirect or serve).
    pub fn with_plain_mode(mut self, mode: PlainMode) -> Self {
        self.plain_mode = mode;
        self
    }

    /// One JSON (or text) line per request on stdout; on by default.
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    fn attach_metrics(&mut self, metrics: &Metrics) {
        self.route_metrics = self
            .route_specs
            .iter()
            .map(|spec| metrics.route(&spec.name))
            .collect();
    }

    pub fn routes(&self) -> Vec<RouteSummary> {
        self.route_specs
            .iter()
            .map(|spec| RouteSummary {
                name: spec.name.clone(),
                matcher: spec.matcher.to_string(),
                upstream: spec.upstream.clone(),
                auth: match spec.auth {
                    RouteAuth::None => "none",
                    RouteAuth::Pachyderm => "pachyderm",
                    RouteAuth::Token => "token",
                },
            })
            .collect()
    }

    pub fn upstreams(&self) -> Vec<UpstreamSummary> {
        self.upstreams
            .iter()
            .map(|upstream| UpstreamSummary {
                name: upstream.name().to_string(),
                protocol: upstream.protocol().name(),
                endpoints: upstream.endpoints().map(str::to_string).collect(),
            })
            .collect()
    }
}

/// What the plaintext listener does with requests.
#[derive(Debug, Clone, Copy)]
pub enum PlainMode {
    /// Answer 308 to the same host, path and query on https (at this port).
    Redirect { https_port: u16 },
    /// Serve HTTP/1.1 and h2c (prior knowledge) like the TLS listener.
    Serve,
}

/// Per-connection facts, computed once at accept rather than per request.
struct ConnInfo {
    peer: SocketAddr,
    /// The peer as the access log writes it.
    client: ClientAddress,
    tls: bool,
    client_ip: HeaderValue,
    proto: HeaderValue,
    /// Set when the connection may carry HTTP/1 (see `framing_guard`).
    framing: Option<Arc<FramingVerdicts>>,
    activity: Arc<ConnActivity>,
}

impl ConnInfo {
    fn new(peer: SocketAddr, tls: bool, framing: Option<Arc<FramingVerdicts>>) -> Arc<Self> {
        Arc::new(ConnInfo {
            peer,
            client: ClientAddress::new(peer),
            tls,
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            framing,
            activity: ConnActivity::new(),
        })
    }
}

pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    metrics: Arc<Metrics>,
    limits: ServerLimits,
    /// Set once on shutdown: listeners stop accepting, connections are told to finish.
    draining: tokio::sync::watch::Sender<bool>,
    /// Connections and tunnels still open, for the drain.
    work: Arc<OpenWork>,
    /// Chosen by ALPN: h2 and http/1.1 skip preface sniffing; no ALPN gets auto-detection.
    auto: auto::Builder<TokioExecutor>,
    h1_only: auto::Builder<TokioExecutor>,
    h2_only: auto::Builder<TokioExecutor>,
}

impl Gateway {
    pub fn new(mut snapshot: Snapshot, limits: ServerLimits) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        snapshot.attach_metrics(&metrics);
        let work = Arc::new(OpenWork {
            active: std::sync::atomic::AtomicUsize::new(0),
            all_closed: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
            close_tunnels: tokio::sync::watch::channel(false).0,
        });
        let auto = server_builder(&limits);
        let h1_only = server_builder(&limits).http1_only();
        let h2_only = server_builder(&limits).http2_only();
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            metrics,
            limits,
            draining: tokio::sync::watch::channel(false).0,
            work,
            auto,
            h1_only,
            h2_only,
        })
    }

    /// Graceful drain, step one: stop accepting, tell every connection to finish (GOAWAY to
    /// h2 clients, `Connection: close` to HTTP/1), keep serving what is in flight.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Step two: resolves once every connection and websocket tunnel has closed.
    pub async fn drained(&self) {
        loop {
            let notified = self.work.all_closed.notified();
            if self.work.active.load(std::sync::atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Step three, at the drain deadline: websocket tunnels send close frames (1001, going
    /// away) to both sides at the next frame boundary and end.
    pub fn close_tunnels(&self) {
        self.work.close_tunnels.send_replace(true);
    }

    fn tunnels(&self) -> TunnelTicket {
        TunnelTicket(self.work.clone())
    }

    /// Swaps in a new configuration; requests in flight finish on the old one.
    pub fn replace_snapshot(&self, mut snapshot: Snapshot) {
        snapshot.attach_metrics(&self.metrics);
        self.snapshot.store(Arc::new(snapshot));
    }

    /// The configuration new requests use now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The pipeline, plus response headers every answer on this connection gets.
    async fn respond(&self, request: Request<Incoming>, conn: &ConnInfo) -> Response<ObservedBody> {
        // One snapshot for the whole request: the configuration it started with.
        let snapshot = self.snapshot.load_full();
        let grpc = request
            .headers()
            .get(CONTENT_TYPE)
            .is_some_and(|v| is_grpc_content_type(v.as_bytes()));
        let mut record = RequestRecord {
            exchange: Some(Exchange::start(
                &self.metrics,
                &request,
                &conn.client,
                grpc,
                snapshot.access_log,
                conn.activity.begin(),
            )),
        };
        let mut response = self
            .handle(request, conn, &snapshot, grpc, &mut record)
            .await;
        if let (true, Some(hsts)) = (conn.tls, &snapshot.clients.hsts) {
            response
                .headers_mut()
                .insert(http::header::STRICT_TRANSPORT_SECURITY, hsts.clone());
        }
        // A tunnel took its exchange along; every other exchange ends with the body.
        if let Some(exchange) = record.exchange.as_deref_mut() {
            exchange.set_status(response.status().as_u16());
            exchange.note_grpc(response.headers());
        }
        response.map(|body| ObservedBody::new(body, record.exchange))
    }

    /// One request's journey: route → (websocket tunnel | forward) → response.
    async fn handle(
        &self,
        mut request: Request<Incoming>,
        conn: &ConnInfo,
        snapshot: &Snapshot,
        grpc: bool,
        record: &mut RequestRecord,
    ) -> Response<ProxyBody> {
        if request.version() <= Version::HTTP_11 {
            if let Some(framing) = &conn.framing {
                if framing.next_request_is_ambiguous() {
                    tracing::warn!(client = %conn.peer, "refused a request with both Content-Length and Transfer-Encoding");
                    return ProxyError::BadRequest(
                        "ambiguous message framing: both Content-Length and Transfer-Encoding\n",
                    )
                    .into_response(false);
                }
            }
        }
        if let Some(refusal) = refuse_head(&request, &self.limits, grpc) {
            tracing::debug!(client = %conn.peer, status = refusal.status().as_u16(), "request head refused");
            return answer_once_body_is_in(request, refusal).await;
        }
        let websocket_upgrade =
            request.version() <= Version::HTTP_11 && is_websocket_upgrade(request.headers());
        // Routing, the gate and the upstream all see the same request: hop-by-hop headers
        // (and any header named in Connection, authn-token included) gone, the path
        // normalised, so no trick can show the gate one thing and pachd another.
        strip_hop_by_hop(request.headers_mut());
        // The request id ties the access-log line to the upstream's logs; without an access
        // log a client's id passes through untouched and none is made.
        let request_id = snapshot
            .access_log
            .then(|| ensure_request_id(request.headers_mut()));
        let mut as_sent = None;
        if request.method() != http::Method::CONNECT {
            match normalize_request_path(&mut request) {
                Ok(original) => as_sent = original,
                Err(error) => return error.into_response(grpc),
            }
        }
        let facts = Facts::of(&request, grpc);
        let authority = facts.authority();
        if let Some(request_id) = request_id {
            record
                .exchange()
                .set_request_details(request_id, authority.clone());
        }
        let Some(route) = snapshot.routes.pick(&facts) else {
            tracing::debug!(path = facts.path(), client = %conn.peer, "no route");
            return ProxyError::NoRoute.into_response(grpc);
        };
        // S3 signs the exact target it sends: such routes (never gated) forward that.
        if let (true, Some(original)) = (route.target.forward_as_sent, as_sent) {
            if let Err(error) = restore_request_target(&mut request, original) {
                return error.into_response(grpc);
            }
        }
        let upstream = &snapshot.upstreams[route.target.upstream];
        let route_metrics = &snapshot.route_metrics[route.target.index];
        record.exchange().set_route(route_metrics);
        let client_ip = forwarded_client(
            request.headers(),
            conn.peer.ip(),
            &snapshot.clients.trusted_proxies,
        );

        let admitted = admit(&request, &route.target, snapshot, grpc, client_ip).await;
        if let Err(reason) = admitted {
            self.metrics
                .auth_decision(&route_metrics.name, false, reason.kind());
            // The audit line: never a token, only why.
            tracing::warn!(
                target: "pachgate::audit",
                route = %route.name,
                path = request.uri().path(),
                client = %conn.peer,
                reason = reason.kind(),
                detail = %reason.message(),
                "request denied"
            );
            let style = denial_style(
                grpc,
                route.target.auth == RouteAuth::Pachyderm,
                request.uri().path(),
            );
            let refusal = deny_response(&reason, style);
            return answer_once_body_is_in(request, refusal).await;
        }
        if let Ok(Some(allowed)) = admitted {
            self.metrics
                .auth_decision(&route_metrics.name, true, allowed.kind())
        }

        let upstream_protocol = upstream.protocol().name();
        // The websocket handshakes are boxed: inline, their connect and handshake state
        // would be part of every request's future, which hyper moves into a task per
        // stream (a memmove of all of it per gRPC call).
        let result = if websocket_upgrade {
            record.exchange().set_upstream(upstream_protocol, None);
            Box::pin(crate::websocket::tunnel(
                request,
                upstream,
                authority,
                self.tunnels(),
                &mut record.exchange,
                route.target.timeouts,
            ))
            .await
        } else if crate::websocket::is_extended_connect_websocket(&request) {
            record.exchange().set_upstream(upstream_protocol, None);
            Box::pin(crate::websocket::tunnel_extended_connect(
                request,
                upstream,
                authority,
                self.tunnels(),
                &mut record.exchange,
                route.target.timeouts,
            ))
            .await
        } else {
            let mut endpoint = None;
            let limits = (&route.target, grpc);
            let result = forward(
                request,
                upstream,
                conn,
                authority,
                record,
                &mut endpoint,
                limits,
            )
            .await;
            record
                .exchange()
                .set_upstream(upstream_protocol, endpoint.as_ref());
            result
        };
        result.unwrap_or_else(|error| {
            if let ProxyError::UpstreamConnect { upstream, .. }
            | ProxyError::UpstreamTls { upstream, .. } = &error
            {
                self.metrics.upstream_connect_failed(upstream);
            }
            tracing::warn!(route = %route.name, client = %conn.peer, %error, "request failed");
            error.into_response(grpc)
        })
    }

    /// Learns the client address (the PROXY header, when the listener expects one and the
    /// sender may send it) and applies the listener-wide allow-list. `None`: close it.
    async fn admit(&self, mut tcp: TcpStream, peer: SocketAddr) -> Option<(TcpStream, SocketAddr)> {
        let snapshot = self.snapshot.load_full();
        let mut client = peer;
        if snapshot.clients.proxy_protocol {
            let trusted = &snapshot.clients.trusted_proxies;
            if !trusted.is_empty() && !trusted.allows(peer.ip()) {
                tracing::warn!(target: "pachgate::audit", peer = %peer, reason = "untrusted_proxy", "PROXY header sender is not in trusted_proxies; connection refused");
                return None;
            }
            match read_proxy_header(&mut tcp, self.limits.tls_handshake_timeout).await {
                Ok(Some(address)) => client = address,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(target: "pachgate::audit", peer = %peer, %error, reason = "bad_proxy_header", "connection refused");
                    return None;
                }
            }
        }
        if !snapshot.clients.listener_allow.allows(client.ip()) {
            tracing::warn!(target: "pachgate::audit", client = %client, reason = "address_not_allowed", "connection refused");
            return None;
        }
        Some((tcp, client))
    }

    /// Accepts TLS connections until the drain (or until the task is aborted, when a reload
    /// moves the listener). `tls` may be swapped at any time; each handshake uses the
    /// configuration current when it starts.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<ArcSwap<ServerConfig>>,
    ) {
        let mut draining = self.draining.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                // Dropping the listener on return closes it: new connections are refused.
                _ = draining.wait_for(|draining| *draining) => return,
            };
            let Some((tcp, peer)) = accepted else {
                continue;
            };
            let gateway = self.clone();
            let acceptor = TlsAcceptor::from(tls.load_full());
            tokio::spawn(async move {
                // Dropped connections are closed before any TLS byte.
                let Some((tcp, peer)) = gateway.admit(tcp, peer).await else {
                    return;
                };
                let handshake = tokio::time::timeout(
                    gateway.limits.tls_handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        let reason = handshake_failure_reason(&e);
                        gateway.metrics.tls_handshake_failed(reason);
                        tracing::debug!(client = %peer, error = %e, reason, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        gateway.metrics.tls_handshake_failed("timeout");
                        tracing::debug!(client = %peer, "TLS handshake timed out");
                        return;
                    }
                };
                let builder = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => {
                        let conn = ConnInfo::new(peer, true, None);
                        return gateway
                            .serve_connection(&gateway.h2_only, stream, conn, true)
                            .await;
                    }
                    Some(b"http/1.1") => &gateway.h1_only,
                    _ => &gateway.auto,
                };
                let verdicts = Arc::new(FramingVerdicts::default());
                let conn = ConnInfo::new(peer, true, Some(verdicts.clone()));
                let guarded = FramingGuard::new(stream, verdicts);
                gateway
                    .serve_connection(builder, guarded, conn, false)
                    .await;
            });
        }
    }

    /// Accepts plaintext connections: HTTP/1.1 and h2c, or redirects to https (as the
    /// current configuration says).
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener) {
        let mut draining = self.draining.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = draining.wait_for(|draining| *draining) => return,
            };
            let Some((tcp, peer)) = accepted else {
                continue;
            };
            let gateway = self.clone();
            tokio::spawn(async move {
                let Some((tcp, peer)) = gateway.admit(tcp, peer).await else {
                    return;
                };
                let mode = gateway.snapshot.load().plain_mode;
                match mode {
                    PlainMode::Serve => {
                        let verdicts = Arc::new(FramingVerdicts::default());
                        let conn = ConnInfo::new(peer, false, Some(verdicts.clone()));
                        let guarded = FramingGuard::new(tcp, verdicts);
                        gateway
                            .serve_connection(&gateway.auto, guarded, conn, false)
                            .await
                    }
                    PlainMode::Redirect { https_port } => {
                        let service = service_fn(move |request: Request<Incoming>| async move {
                            Ok::<_, Infallible>(redirect_to_https(&request, https_port))
                        });
                        let serving = gateway.auto.serve_connection(TokioIo::new(tcp), service);
                        // A connection that only ever gets redirects has no reason to stay
                        // longer than an idle one would, and a silent client (no bytes, so
                        // not even HTTP/1's head timeout starts) must not stay forever.
                        match gateway.limits.idle_timeout {
                            Some(limit) => {
                                if tokio::time::timeout(limit, serving).await.is_err() {
                                    gateway.metrics.idle_connection_closed();
                                }
                            }
                            None => {
                                let _ = serving.await;
                            }
                        }
                    }
                }
            });
        }
    }

    /// Serves one client connection. `h2_preface`: the client chose h2 by ALPN, so its first
    /// bytes must be the HTTP/2 preface (a bad one is answered GOAWAY, see `closing`).
    async fn serve_connection<I>(
        self: &Arc<Self>,
        builder: &auto::Builder<TokioExecutor>,
        io: I,
        conn: Arc<ConnInfo>,
        h2_preface: bool,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = WorkGuard::new(self.work.clone(), WorkKind::Connection);
        let gateway = self.clone();
        // Every open connection's task holds this function's state, and every byte counts:
        // the task is 7,040 bytes, and 64 bytes more cost 1 KiB of RSS per idle connection
        // (measured; likely mimalloc placing the 128-byte-aligned task in its next size
        // class). So one pointer is kept here, and the address and activity are read
        // through it.
        let info = conn.clone();
        let service = service_fn(move |request: Request<Incoming>| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            // Boxed: the request's future is ~4 KB, and hyper and tokio move the future they
            // hold several times per request (into the stream task, through its stages).
            // With the release build unwinding, those moves are real copies (~4k
            // instructions per gRPC call, measured with callgrind); a box moves a pointer.
            Box::pin(async move { Ok::<_, Infallible>(gateway.respond(request, &conn).await) })
        });
        // hyper drops the I/O when it is done with the connection; it comes back here then
        // (unless a websocket upgrade took it), for a close that lets the last answer arrive.
        let (io, mut returned) = Reclaimable::new(io, h2_preface);
        let result = {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            let mut draining = self.draining.subscribe();
            let mut finishing = Finishing::No;
            // Looked at when the connection may have become idle; a request since moves it on.
            // Boxed, for the same reason.
            let mut idle_check = self
                .limits
                .idle_timeout
                .map(|timeout| Box::pin(tokio::time::sleep(timeout)));
            loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = draining.wait_for(|draining| *draining), if finishing != Finishing::Drain => {
                        connection.as_mut().graceful_shutdown();
                        finishing = Finishing::Drain;
                    }
                    _ = idle_tick(&mut idle_check), if finishing != Finishing::Drain => {
                        let timeout = self.limits.idle_timeout.unwrap_or_default();
                        let now = tokio::time::Instant::now();
                        let deadline = info.activity.idle_deadline(timeout);
                        if finishing == Finishing::Idle && deadline.is_some() {
                            // The GOAWAY went unanswered and still nothing is in flight (a
                            // client that never finished the h2 handshake, or stopped reading):
                            // close without it. A stream that slipped in as the GOAWAY left
                            // keeps the connection until it ends.
                            tracing::debug!(client = %info.peer, "idle connection did not close after GOAWAY");
                            break Ok(());
                        }
                        let next = match deadline.map(tokio::time::Instant::from_std) {
                            _ if finishing == Finishing::Idle => now + self.limits.h2_keepalive_timeout,
                            Some(deadline) if deadline <= now => {
                                // h2: GOAWAY, and the connection ends once the client has seen
                                // it; HTTP/1: closed now, between requests.
                                tracing::debug!(client = %info.peer, "closing idle connection");
                                self.metrics.idle_connection_closed();
                                connection.as_mut().graceful_shutdown();
                                finishing = Finishing::Idle;
                                now + self.limits.h2_keepalive_timeout
                            }
                            Some(deadline) => deadline,
                            None => now + timeout,
                        };
                        if let Some(check) = idle_check.as_mut() {
                            check.as_mut().reset(next);
                        }
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::debug!(client = %info.peer, error = %e, "connection ended with an error");
        }
        // The connection is gone, so hyper has dropped the I/O (unless a websocket took it).
        // Ended by an error (a refused head, a bad preface, a protocol error): the client may
        // still be sending. A clean end needs nothing more.
        if let Ok(returned) = returned.try_recv() {
            if result.is_err() || returned.bad_preface {
                Box::pin(close_cleanly(*returned)).await;
            }
        }
    }
}

/// The idle check's timer; never, when the idle timeout is off. A plain poll function: its
/// future is one pointer in the connection task's state.
fn idle_tick(
    check: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match check {
        Some(sleep) => std::future::Future::poll(sleep.as_mut(), cx),
        None => std::task::Poll::Pending,
    })
}

/// Why a connection was told to finish, if it was.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finishing {
    No,
    /// Shutdown: the drain bounds how long it may take.
    Drain,
    /// `idle_timeout`: closed outright if the client does not end it soon.
    Idle,
}

/// What `respond` keeps about one request while `handle` runs.
struct RequestRecord {
    /// Taken by a websocket tunnel, which books it when the tunnel closes.
    exchange: Option<Box<Exchange>>,
}

impl RequestRecord {
    fn exchange(&mut self) -> &mut Exchange {
        self.exchange
            .as_deref_mut()
            .expect("only a tunnel takes the exchange, after the pipeline is done with it")
    }
}

/// Connections and tunnels in flight: what the drain waits for.
struct OpenWork {
    active: std::sync::atomic::AtomicUsize,
    all_closed: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    /// Set at the drain deadline: tunnels end with close frames.
    close_tunnels: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone, Copy)]
enum WorkKind {
    Connection,
    Tunnel,
}

/// Counts a connection or tunnel as open (for the drain and the gauges) until dropped.
pub(crate) struct WorkGuard {
    work: Arc<OpenWork>,
    kind: WorkKind,
}

impl WorkGuard {
    fn new(work: Arc<OpenWork>, kind: WorkKind) -> Self {
        match kind {
            WorkKind::Connection => work.metrics.connection_opened(),
            WorkKind::Tunnel => work.metrics.tunnel_opened(),
        }
        work.active
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        WorkGuard { work, kind }
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        match self.kind {
            WorkKind::Connection => self.work.metrics.connection_closed(),
            WorkKind::Tunnel => self.work.metrics.tunnel_closed(),
        }
        let left = self
            .work
            .active
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if left == 1 {
            self.work.all_closed.notify_waiters();
        }
    }
}

/// What a websocket tunnel needs from the gateway: to be counted, and to hear when to close.
#[derive(Clone)]
pub(crate) struct TunnelTicket(Arc<OpenWork>);

impl TunnelTicket {
    pub(crate) fn open(&self) -> WorkGuard {
        WorkGuard::new(self.0.clone(), WorkKind::Tunnel)
    }

    pub(crate) fn close_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.close_tunnels.subscribe()
    }
}

/// The admit stage: the route's client allow-list, the per-address request rate, then the
/// route's gate. `Ok(Some(why))`: the gate let the request in; `Ok(None)`: no gate.
async fn admit(
    request: &Request<Incoming>,
    route: &RouteTarget,
    snapshot: &Snapshot,
    grpc: bool,
    client_ip: IpAddr,
) -> Result<Option<AllowReason>, DenyReason> {
    if !route.allow.allows(client_ip) {
        return Err(DenyReason::AddressNotAllowed);
    }
    let now = std::time::Instant::now();
    if let Some(limiter) = &snapshot.clients.requests {
        if let Err(wait) = limiter.take(client_ip, now) {
            return Err(DenyReason::RateLimited {
                retry_after_secs: wait.as_secs().max(1),
            });
        }
    }
    let gate = match route.auth {
        RouteAuth::None => return Ok(None),
        RouteAuth::Pachyderm => RouteGate::Pachyderm(
            snapshot
                .pachyderm_gate
                .as_ref()
                .expect("routes with auth = pachyderm are only built with a gate"),
        ),
        RouteAuth::Token => RouteGate::StaticTokens(
            snapshot
                .static_tokens
                .as_ref()
                .expect("routes with auth = token are only built with a token file"),
        ),
    };
    let gates = AuthGates {
        gate,
        failed_auth: snapshot.clients.failed_auth.as_ref(),
    };
    gates.check(request, grpc, client_ip, now).await.map(Some)
}

/// How long, and how many body bytes, a refused request may still send before its answer.
const REFUSED_BODY_WAIT: std::time::Duration = std::time::Duration::from_secs(1);
const REFUSED_BODY_LIMIT: usize = 64 * 1024;

/// Answers a refused request once its body has arrived (up to 64 KiB and 1 s), reading and
/// discarding it as nginx does. Answering first makes the h2 server reset the stream the
/// client is still sending on, which some clients (curl before 8.x among them) report as a
/// framing error instead of the answer; an HTTP/1.1 connection would be closed instead of
/// kept. A larger or slower body gets the answer without waiting.
async fn answer_once_body_is_in(
    request: Request<Incoming>,
    answer: Response<ProxyBody>,
) -> Response<ProxyBody> {
    // Not for a CONNECT (an RFC 8441 websocket's body is the tunnel and never ends), nor
    // for a client waiting on `Expect: 100-continue`: reading would invite the upload
    // being refused.
    let skip = request.method() == http::Method::CONNECT
        || request.headers().contains_key(http::header::EXPECT);
    let mut body = request.into_body();
    if skip || http_body::Body::is_end_stream(&body) {
        return answer;
    }
    let discard = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            seen += frame.data_ref().map_or(0, |data| data.len());
            if seen > REFUSED_BODY_LIMIT {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(REFUSED_BODY_WAIT, discard).await;
    answer
}

/// The client address behind trusted proxies: walking `X-Forwarded-For` from the right,
/// the first address that is not a trusted proxy. Untrusted peers' headers are ignored.
fn forwarded_client(headers: &http::HeaderMap, peer: IpAddr, trusted: &CidrSet) -> IpAddr {
    if trusted.is_empty() || !trusted.allows(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&crate::headers::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Ok(address) = entry.trim().parse::<IpAddr>() else {
            break; // garbage: trust nothing further left
        };
        client = address;
        if !trusted.allows(address) {
            break;
        }
    }
    client
}

/// Rewrites the request path to its normal form (see `normalize_path`), keeping the query.
/// Returns the target as sent when it changed it (a cheap clone: the bytes are shared).
fn normalize_request_path<B>(request: &mut Request<B>) -> Result<Option<PathAndQuery>, ProxyError> {
    let Some(path_and_query) = request.uri().path_and_query() else {
        return Ok(None);
    };
    let Some(path) = normalize_path(path_and_query.path()) else {
        return Ok(None);
    };
    let original = path_and_query.clone();
    let target = match path_and_query.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ProxyError::BadRequest("bad request target\n"))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    Ok(Some(original))
}

/// Puts back the target `normalize_request_path` replaced.
fn restore_request_target<B>(
    request: &mut Request<B>,
    original: PathAndQuery,
) -> Result<(), ProxyError> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.path_and_query = Some(original);
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    Ok(())
}

/// Streams the request to the upstream and the response back, frame by frame: data,
/// trailers and resets pass through; nothing is buffered. `limits`: the route, for its
/// timeouts, and whether the caller speaks gRPC, for how a cut is told.
async fn forward(
    request: Request<Incoming>,
    upstream: &Upstream,
    conn: &ConnInfo,
    authority: Option<Authority>,
    record: &mut RequestRecord,
    endpoint: &mut Option<Arc<str>>,
    (route, grpc): (&RouteTarget, bool),
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    set_forwarded(
        &mut parts.headers,
        &conn.client_ip,
        &conn.proto,
        authority.as_ref().map(|a| a.host()),
    );
    match upstream.protocol() {
        UpstreamProtocol::Http1 | UpstreamProtocol::Http1Tls => {
            // An h2 client sends :authority, not Host; an HTTP/1.1 upstream needs Host.
            if !parts.headers.contains_key(HOST) {
                if let Some(value) = authority
                    .as_ref()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
                {
                    parts.headers.insert(HOST, value);
                }
            }
        }
        UpstreamProtocol::H2c | UpstreamProtocol::H2 => {
            // On h2 the host travels as :authority (set from the same value).
            parts.headers.remove(HOST);
        }
    }
    let tally = (!http_body::Body::is_end_stream(&body))
        .then(|| record.exchange().received_tally())
        .flatten();
    let body = match tally {
        Some(tally) => ProxyBody::Metered(body, tally),
        None => ProxyBody::Stream(body),
    };
    // No timer at all (the default) unless the route sets a timeout.
    let mut timer = route.timeouts.start();
    let body = match &timer {
        Some(timer) => timer.request_body(body),
        None => body,
    };
    let request = Request::from_parts(parts, body);
    let response = bounded(upstream.send(request, authority, endpoint), timer.as_mut())
        .await
        .map_err(|expired| expired.into_error(upstream.name()))??;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match timer {
        Some(timer) => timer.response_body(body, grpc, route.name.clone()),
        None => body,
    };
    Ok(Response::from_parts(parts, body))
}

fn redirect_to_https(request: &Request<Incoming>, https_port: u16) -> Response<ProxyBody> {
    let facts = Facts::of(request, false);
    let Some(host) = facts.host() else {
        let mut response = Response::new(ProxyBody::text("a Host header is required\n"));
        *response.status_mut() = StatusCode::BAD_REQUEST;
        return response;
    };
    let path = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let location = if https_port == 443 {
        format!("https://{host}{path}")
    } else {
        format!("https://{host}:{https_port}{path}")
    };
    let mut response = Response::new(ProxyBody::Empty);
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(LOCATION, value);
        }
        Err(_) => *response.status_mut() = StatusCode::BAD_REQUEST,
    }
    response
}

/// Over HTTP/2 the h2 library is given this many times `max_header_list_size`, and the limit
/// itself is checked per request, answered 431 on the stream. At the library's own limit
/// the stream would be refused instead (a 431 the library sends is followed by a stream
/// reset), and clients also read the advertised SETTINGS_MAX_HEADER_LIST_SIZE: curl
/// refuses to send a larger header list and retries it on fresh connections, never seeing
/// a status. The library still stops keeping decoded headers at this size (HPACK bombs),
/// and ends the connection at four times it.
pub const H2_HEADER_LIST_SLACK: u32 = 4;

/// A request's header list size as RFC 9113 §6.5.2 counts it (name + value + 32 each,
/// pseudo-headers included), for HTTP/2 requests.
fn h2_header_list_size<B>(request: &Request<B>) -> usize {
    const ENTRY: usize = 32;
    let uri = request.uri();
    let mut size = ":method".len() + request.method().as_str().len() + ENTRY;
    if let Some(path) = uri.path_and_query() {
        size += ":path".len() + path.as_str().len() + ENTRY;
    }
    if let Some(scheme) = uri.scheme() {
        size += ":scheme".len() + scheme.as_str().len() + ENTRY;
    }
    if let Some(authority) = uri.authority() {
        size += ":authority".len() + authority.as_str().len() + ENTRY;
    }
    request.headers().iter().fold(size, |size, (name, value)| {
        size + name.as_str().len() + value.len() + ENTRY
    })
}

/// The answer to a request whose head pachgate refuses before routing it: header list over
/// `max_header_list_size` (HTTP/2; hyper answers HTTP/1 heads itself), or an underscore in a
/// header name when configured. `None`: go on.
fn refuse_head<B>(
    request: &Request<B>,
    limits: &ServerLimits,
    grpc: bool,
) -> Option<Response<ProxyBody>> {
    if request.version() == Version::HTTP_2
        && h2_header_list_size(request) > limits.max_header_list_size as usize
    {
        return Some(if grpc {
            crate::error::grpc_status_response(
                crate::error::GrpcCode::ResourceExhausted,
                "pachgate: request headers too large",
            )
        } else {
            crate::error::text_response(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "request header fields too large\n",
            )
        });
    }
    if limits.reject_underscore_headers
        && request
            .headers()
            .keys()
            .any(|name| name.as_str().contains('_'))
    {
        return Some(
            ProxyError::BadRequest("header names with underscores are not accepted\n")
                .into_response(grpc),
        );
    }
    None
}

fn server_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.h1_header_read_timeout)
        .max_buf_size((limits.max_header_list_size as usize).max(8192));
    builder
        .http2()
        // Without a timer hyper's h2 keep-alive silently does nothing.
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(
            limits
                .max_header_list_size
                .saturating_mul(H2_HEADER_LIST_SLACK),
        )
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .enable_connect_protocol();
    builder
}

async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((tcp, peer)) => {
            // Small h2 frames (gRPC headers, pings, window updates) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) => {
            // Typically EMFILE: back off instead of spinning, and keep serving.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// A TLS handshake failure as a metric label: what an operator would act on.
fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error as Tls;
    match error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
        Some(Tls::InvalidMessage(_) | Tls::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(Tls::InappropriateMessage { .. }) => "not_tls",
        Some(Tls::PeerIncompatible(_)) => "incompatible_client",
        Some(Tls::AlertReceived(_)) => "alert_from_client",
        Some(Tls::NoCertificatesPresented) => "client_certificate_missing",
        Some(Tls::InvalidCertificate(_)) => "client_certificate_invalid",
        Some(Tls::PeerMisbehaved(_)) => "client_misbehaved",
        Some(_) => "other",
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "client_closed",
            _ => "other",
        },
    }
}

/// Borrowed request parts for the route table.
struct Facts<'a> {
    request: &'a Request<Incoming>,
    host: Option<&'a str>,
    grpc: bool,
}

impl<'a> Facts<'a> {
    fn of(request: &'a Request<Incoming>, grpc: bool) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(HOST).and_then(|v| v.to_str().ok()));
        Facts {
            request,
            host: authority.map(strip_port),
            grpc,
        }
    }

    /// The authority the client asked for (`host[:port]`), for `:authority` / `Host` upstream.
    fn authority(&self) -> Option<Authority> {
        if let Some(authority) = self.request.uri().authority() {
            return Some(authority.clone());
        }
        self.request
            .headers()
            .get(HOST)
            .and_then(|v| Authority::try_from(v.as_bytes()).ok())
    }
}

impl RequestFacts for Facts<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn path(&self) -> &str {
        self.request.uri().path()
    }
    fn is_grpc(&self) -> bool {
        self.grpc
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.request.headers().get(name).map(|v| v.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.request.uri().query()
    }
}

/// `host:port` → `host`; `[::1]:443` → `::1`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn ports_are_stripped_from_hosts() {
        for (input, want) in [
            ("example.com", "example.com"),
            ("example.com:8443", "example.com"),
            ("[::1]:8443", "::1"),
            ("[::1]", "::1"),
            ("127.0.0.1:1", "127.0.0.1"),
        ] {
            assert_eq!(strip_port(input), want);
        }
    }
}
