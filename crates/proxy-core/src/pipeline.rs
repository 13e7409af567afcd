//! One request's journey through pachgate, stage by stage. Each stage is a function that
//! answers one question; read this file top to bottom:
//!
//! 1. [`sanitize`]: is the request fit to route, and what is its one view? (HTTP/1 framing
//!    verdict, head limits, hop-by-hop headers gone, the path's normal form, a request id)
//! 2. [`route`]: which route and upstream serve it?
//! 3. [`admit`]: may this client make it? (route allow-list, request rate, the route's gate)
//! 4. [`forward`] or [`tunnel`]: the upstream's answer, streamed back (or a websocket).
//! 5. [`finish`]: what every answer gets on the way out (HSTS); a refusal from any stage is
//!    a [`Rejection`], written in the caller's protocol by `rejection.rs` alone.
//! 6. log: the request's [`Exchange`] starts in [`Gateway::respond`] and is booked when the
//!    answer's body ends (`ObservedBody`, see `exchange.rs`), or when a tunnel closes.
//!
//! The pipeline knows nothing about sockets: `connection.rs` accepts, handshakes and keeps
//! connections, and hands each request here with a [`Caller`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{HeaderValue, CONTENT_TYPE, HOST};
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use pachgate_auth_gate::{AllowReason, DenyReason};
use pachgate_routing::{is_grpc_content_type, RequestFacts, Route};

use crate::auth::{AuthGates, RouteGate};
use crate::body::ProxyBody;
use crate::connection::ServerLimits;
use crate::error::ProxyError;
use crate::exchange::{ClientAddress, Exchange, ObservedBody};
use crate::framing_guard::FramingVerdicts;
use crate::gateway::Gateway;
use crate::headers::{
    is_websocket_upgrade, join_cookies, set_forwarded, strip_for_upstream, strip_hop_by_hop,
};
use crate::idle::ConnActivity;
use crate::rejection::{Rejection, Rendering};
use crate::request_id::{insert_request_id, request_id};
use crate::request_view::{
    forwarded_client, normalize_request_path, refuse_head, restore_request_target, Facts,
};
use crate::route_timeouts::bounded;
use crate::snapshot::{RouteAuth, RouteTarget, Snapshot};
use crate::stall_watch::StallWatch;
use crate::upstream::Upstream;
use crate::websocket::ClientSide;

/// What the pipeline knows about who sent a request: facts about its connection, computed
/// once at accept rather than per request.
pub(crate) struct Caller {
    pub(crate) peer: SocketAddr,
    pub(crate) tls: bool,
    client_ip: HeaderValue,
    proto: HeaderValue,
    /// Set when the connection may carry HTTP/1 (see `framing_guard`).
    framing: Option<Arc<FramingVerdicts>>,
    pub(crate) activity: Arc<ConnActivity>,
    /// Timed answers to an HTTP/2 client, watched for streams it stopped taking.
    pub(crate) stalls: StallWatch,
}

impl Caller {
    pub(crate) fn new(
        peer: SocketAddr,
        tls: bool,
        framing: Option<Arc<FramingVerdicts>>,
    ) -> Arc<Self> {
        Arc::new(Caller {
            peer,
            tls,
            client_ip: HeaderValue::from_str(&peer.ip().to_string())
                .expect("an IP address is a valid header value"),
            proto: HeaderValue::from_static(if tls { "https" } else { "http" }),
            framing,
            activity: ConnActivity::new(ClientAddress::new(peer)),
            stalls: StallWatch::default(),
        })
    }
}

impl Gateway {
    /// One request, start to end: the log record opens, the stages run, the answer leaves
    /// with what every answer gets, carrying the record until its body ends.
    pub(crate) async fn respond(
        &self,
        request: Request<Incoming>,
        caller: &Caller,
    ) -> Response<ObservedBody> {
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
                grpc,
                snapshot.access_log,
                caller.activity.begin(),
            )),
        };
        let head = request.method() == http::Method::HEAD;
        let mut response = self
            .stages(request, caller, &snapshot, grpc, &mut record)
            .await;
        if head {
            crate::body::without_own_body(&mut response);
        }
        finish(response, caller, &snapshot, record)
    }

    /// sanitize → route → admit → forward | tunnel. A stage that refuses ends the journey
    /// with its [`Rejection`]; before the request is handed upstream the rejection may
    /// first read what the client is still sending ([`Rejection::answer`]).
    async fn stages(
        &self,
        mut request: Request<Incoming>,
        caller: &Caller,
        snapshot: &Snapshot,
        grpc: bool,
        record: &mut RequestRecord,
    ) -> Response<ProxyBody> {
        // By the caller's protocol alone; only the gate's denials look at the route too.
        let rendering = Rendering::for_caller(grpc);
        let mut view = match sanitize(&mut request, caller, &self.limits, snapshot, grpc, record) {
            Ok(view) => view,
            Err(rejection) => return rejection.answer(request, rendering).await,
        };
        let (route, upstream) = match route(&mut request, &mut view, snapshot, caller, grpc, record)
        {
            Ok(routed) => routed,
            Err(rejection) => return rejection.answer(request, rendering).await,
        };
        if let Err(rejection) = self.admit(&request, route, snapshot, grpc, caller).await {
            let made_id = record.exchange().made_request_id();
            let pachyderm_route = route.target.auth == RouteAuth::Pachyderm;
            let rendering = Rendering::on_route(grpc, pachyderm_route, &request, made_id.as_ref());
            return rejection.answer(request, rendering).await;
        }
        let answered = if view.websocket_upgrade
            || crate::websocket::is_extended_connect_websocket(&request)
        {
            self.tunnel(request, route, upstream, caller, view, record)
                .await
        } else {
            forward(
                request,
                upstream,
                caller,
                view.addressing,
                record,
                (&route.target, grpc),
            )
            .await
        };
        answered.unwrap_or_else(|error| {
            if let ProxyError::UpstreamConnect { upstream, .. }
            | ProxyError::UpstreamTls { upstream, .. } = &error
            {
                self.metrics.upstream_connect_failed(upstream);
            }
            tracing::warn!(route = %route.name, client = %caller.peer, %error, "request failed");
            Rejection::from(error).render(rendering)
        })
    }
}

/// What `sanitize` learned about a request, for the stages after it.
struct View {
    /// An HTTP/1.1 `Upgrade: websocket` (seen before the hop-by-hop headers go).
    websocket_upgrade: bool,
    /// The request target as the client sent it, when the normal form differs.
    as_sent: Option<PathAndQuery>,
    /// How the request is addressed upstream.
    addressing: Addressing,
}

/// What `address_to_upstream` needs besides the request: the authority the client asked
/// for (`host[:port]`, for `:authority` / `Host` upstream), and whether the peer is a
/// trusted proxy whose `X-Forwarded-For` goes on.
struct Addressing {
    authority: Option<Authority>,
    keep_forwarded_chain: bool,
}

/// Stage 1, sanitize: is the request fit to route, and what is its one view? Routing, the
/// gate and the upstream all see the same request: hop-by-hop headers (and any header named
/// in Connection, authn-token included) gone, the path normalised, so no trick can show the
/// gate one thing and pachd another.
fn sanitize(
    request: &mut Request<Incoming>,
    caller: &Caller,
    limits: &ServerLimits,
    snapshot: &Snapshot,
    grpc: bool,
    record: &mut RequestRecord,
) -> Result<View, Rejection> {
    if request.version() <= Version::HTTP_11 {
        if let Some(framing) = &caller.framing {
            if framing.next_request_is_ambiguous() {
                tracing::warn!(client = %caller.peer, "refused a request with both Content-Length and Transfer-Encoding");
                return Err(Rejection::AmbiguousFraming);
            }
        }
    }
    if let Some(refusal) = refuse_head(request, limits) {
        tracing::debug!(client = %caller.peer, refusal = refusal.kind(), "request head refused");
        return Err(refusal);
    }
    let websocket_upgrade =
        request.version() <= Version::HTTP_11 && is_websocket_upgrade(request.headers());
    // X-Forwarded-For, Forwarded and X-Real-IP from a peer that is not a trusted proxy are
    // the client's own claims: pachgate never believes them (`forwarded_client`), and
    // upstreams (their logs, Dex, the console) get the client's address alone rather than a
    // chain it could write the start of. Traefik's forwarded-headers middleware deletes
    // X-Forwarded-* and X-Real-Ip from untrusted peers, and Caddy sets X-Forwarded-For anew.
    let keep_forwarded_chain = snapshot.clients.trusted_proxies.contains(caller.peer.ip());
    strip_for_upstream(request.headers_mut(), !keep_forwarded_chain);
    // The request id ties the access-log line to the upstream's logs; without an access
    // log a client's id passes through untouched and none is made. A made one is added as
    // the request leaves (`forward`, `tunnel`).
    let request_id = snapshot.access_log.then(|| {
        let sent = record.exchange().request_id_sent();
        request_id(request.headers_mut(), sent)
    });
    // An extended CONNECT (an h2 websocket) has a path like any request, routed and gated
    // on its normal form too; a plain CONNECT has none, and nothing is done.
    let as_sent = normalize_request_path(request)?;
    let authority = Facts::of(request, grpc).authority();
    if let Some(request_id) = request_id {
        record
            .exchange()
            .set_request_details(request_id, authority.clone());
    }
    Ok(View {
        websocket_upgrade,
        as_sent,
        addressing: Addressing {
            authority,
            keep_forwarded_chain,
        },
    })
}

/// Stage 2, route: which route and upstream serve this request? The first route that
/// matches the request's normal form.
fn route<'s>(
    request: &mut Request<Incoming>,
    view: &mut View,
    snapshot: &'s Snapshot,
    caller: &Caller,
    grpc: bool,
    record: &mut RequestRecord,
) -> Result<(&'s Route<RouteTarget>, &'s Upstream), Rejection> {
    let facts = Facts::of(request, grpc);
    let Some(route) = snapshot.routes.pick(&facts) else {
        tracing::debug!(path = facts.path(), client = %caller.peer, "no route");
        return Err(ProxyError::NoRoute.into());
    };
    // S3 signs the exact target it sends: such routes (never gated) forward that.
    if let (true, Some(original)) = (route.target.forward_as_sent, view.as_sent.take()) {
        restore_request_target(request, original)?;
    }
    record
        .exchange()
        .set_route(&snapshot.route_metrics[route.target.index]);
    Ok((route, &snapshot.upstreams[route.target.upstream]))
}

impl Gateway {
    /// Stage 3, admit: may this client make this request? The verdict is counted, and a
    /// refusal written to the audit log (never a token, only why).
    async fn admit(
        &self,
        request: &Request<Incoming>,
        route: &Route<RouteTarget>,
        snapshot: &Snapshot,
        grpc: bool,
        caller: &Caller,
    ) -> Result<(), Rejection> {
        let client_ip = forwarded_client(
            request.headers(),
            caller.peer.ip(),
            &snapshot.clients.trusted_proxies,
        );
        let route_metrics = &snapshot.route_metrics[route.target.index];
        match admit(request, &route.target, snapshot, grpc, client_ip).await {
            Ok(None) => Ok(()),
            Ok(Some(allowed)) => {
                self.metrics
                    .auth_decision(&route_metrics.name, true, allowed.kind());
                if allowed == AllowReason::AnsweredByPachd {
                    // Possibly a refused token that pachd reports itself (`/archive`).
                    tracing::debug!(
                        target: "pachgate::audit",
                        route = %route.name,
                        path = request.uri().path(),
                        client = %caller.peer,
                        reason = allowed.kind(),
                        "request passed to pachd, which answers it itself"
                    );
                }
                Ok(())
            }
            Err(reason) => {
                self.metrics
                    .auth_decision(&route_metrics.name, false, reason.kind());
                tracing::warn!(
                    target: "pachgate::audit",
                    route = %route.name,
                    path = request.uri().path(),
                    client = %caller.peer,
                    reason = reason.kind(),
                    detail = %reason.message(),
                    "request denied"
                );
                Err(Rejection::Denied(reason))
            }
        }
    }

    /// Stage 4b, tunnel: a websocket, by HTTP/1.1 Upgrade or by extended CONNECT (RFC 8441).
    /// The tunnel takes the request's exchange along and books it when it closes.
    async fn tunnel(
        &self,
        mut request: Request<Incoming>,
        route: &Route<RouteTarget>,
        upstream: &Upstream,
        caller: &Caller,
        view: View,
        record: &mut RequestRecord,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let h2_client = request.version() == http::Version::HTTP_2;
        address_to_upstream(&mut request, caller, &view.addressing, upstream);
        // The handshake goes upstream with the request's own headers (on h2, as a field the
        // encoder sends without indexing): a made id joins them here, as `forward` hands it
        // to the upstream's `send`.
        if let Some(id) = record.exchange().made_request_id() {
            insert_request_id(request.headers_mut(), &id);
        }
        record
            .exchange()
            .set_upstream(upstream.protocol().name(), None);
        // The websocket handshakes are boxed: inline, their connect and handshake state
        // would be part of every request's future, which hyper moves into a task per
        // stream (a memmove of all of it per gRPC call).
        let side = if view.websocket_upgrade {
            ClientSide::Upgrade
        } else {
            ClientSide::ExtendedConnect
        };
        let (answer, timer) = Box::pin(crate::websocket::tunnel(
            request,
            upstream,
            view.addressing.authority,
            side,
            self.tunnels(),
            &mut record.exchange,
            route.target.timeouts,
        ))
        .await?;
        let status = answer.status();
        if let (http::StatusCode::SWITCHING_PROTOCOLS, Some(framing)) = (status, &caller.framing) {
            framing.connection_upgraded();
        }
        let switched = match side {
            ClientSide::Upgrade => status == http::StatusCode::SWITCHING_PROTOCOLS,
            ClientSide::ExtendedConnect => status.is_success(),
        };
        // A refused handshake is an ordinary answer: its body (the upstream's, passed on as
        // it comes) runs under the route's timers, as any answer's does.
        Ok(match (switched, timer) {
            (false, Some(timer)) => answer.map(|body| {
                timer.response_body(
                    body,
                    false,
                    route.target.name.clone(),
                    h2_client.then_some(&caller.stalls),
                )
            }),
            (_, _) => answer,
        })
    }
}

/// The admit question itself: the route's client allow-list, the per-address request rate, then the
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
        pending_asks: &snapshot.pending_asks,
    };
    gates.check(request, grpc, client_ip, now).await.map(Some)
}

/// Stage 4a, forward: the upstream's answer. The endpoint that took the request goes in
/// the record, whatever the outcome.
async fn forward(
    request: Request<Incoming>,
    upstream: &Upstream,
    caller: &Caller,
    addressing: Addressing,
    record: &mut RequestRecord,
    limits: (&RouteTarget, bool),
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut endpoint = None;
    let result = send_upstream(
        request,
        upstream,
        caller,
        addressing,
        record,
        &mut endpoint,
        limits,
    )
    .await;
    record
        .exchange()
        .set_upstream(upstream.protocol().name(), endpoint.as_ref());
    result
}

/// Streams the request to the upstream and the response back, frame by frame: data,
/// trailers and resets pass through; nothing is buffered. `limits`: the route, for its
/// timeouts, and whether the caller speaks gRPC, for how a cut is told.
async fn send_upstream(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    conn: &Caller,
    addressing: Addressing,
    record: &mut RequestRecord,
    endpoint: &mut Option<Arc<str>>,
    (route, grpc): (&RouteTarget, bool),
) -> Result<Response<ProxyBody>, ProxyError> {
    let h2_client = request.version() == http::Version::HTTP_2;
    address_to_upstream(&mut request, conn, &addressing, upstream);
    let (parts, body) = request.into_parts();
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
    let request_id = record.exchange().made_request_id();
    let sending = upstream.send(request, addressing.authority, request_id.as_ref(), endpoint);
    let response = bounded(sending, timer.as_mut())
        .await
        .map_err(|expired| expired.into_error(upstream.name()))??;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let body = match timer {
        Some(timer) => timer.response_body(
            body,
            grpc,
            route.name.clone(),
            h2_client.then_some(&conn.stalls),
        ),
        None => body,
    };
    Ok(Response::from_parts(parts, body))
}

/// Stage 5, finish: what every answer gets on the way out (HSTS on TLS connections), and
/// the answer's status noted in the request's record, which its body carries to the end.
fn finish(
    mut response: Response<ProxyBody>,
    caller: &Caller,
    snapshot: &Snapshot,
    mut record: RequestRecord,
) -> Response<ObservedBody> {
    if let (true, Some(hsts)) = (caller.tls, &snapshot.clients.hsts) {
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

/// What `respond` keeps about one request while the stages run.
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

/// What every request leaving for an upstream carries, forwarded or tunnelled alike: who
/// the client is (X-Forwarded-*, set here whatever the client claimed), the host it was
/// routed on (Host toward HTTP/1.1; on h2 it travels as :authority, set from the same
/// value), and an h2 client's cookies as the one line HTTP/1.1 expects (RFC 9113 §8.2.3).
fn address_to_upstream<B>(
    request: &mut Request<B>,
    caller: &Caller,
    addressing: &Addressing,
    upstream: &Upstream,
) {
    let authority = addressing.authority.as_ref();
    let has_target_authority = request.uri().authority().is_some();
    let from_h2 = request.version() == Version::HTTP_2;
    let headers = request.headers_mut();
    set_forwarded(
        headers,
        &caller.client_ip,
        &caller.proto,
        authority.map(|a| a.host()),
        addressing.keep_forwarded_chain,
    );
    if upstream.protocol().is_h2() {
        headers.remove(HOST);
    } else {
        set_http1_host(headers, has_target_authority, authority);
        if from_h2 {
            join_cookies(headers);
        }
    }
}

/// Host toward an HTTP/1.1 upstream: the authority the request was routed on. When the
/// target carries one (an h2 client's :authority, an HTTP/1.1 absolute-form target) it
/// replaces whatever Host the client added (RFC 9112 §3.2.2), so the route, the gate and
/// the upstream all see one host; an origin-form request's Host stays as sent.
fn set_http1_host(
    headers: &mut http::HeaderMap,
    has_target_authority: bool,
    authority: Option<&Authority>,
) {
    if has_target_authority || !headers.contains_key(HOST) {
        if let Some(value) = authority.and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            headers.insert(HOST, value);
        }
    }
}
