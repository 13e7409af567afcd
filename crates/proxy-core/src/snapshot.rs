//! The configuration snapshot: routes, upstreams, gates and client policy as one immutable
//! value that requests read and a reload swaps whole. Built from the binary's typed specs.

use std::sync::Arc;

use http::header::HeaderValue;
use http::uri::PathAndQuery;
use pachgate_auth_gate::{PachydermAuthSettings, PachydermGate, StaticTokens};
use pachgate_client_policy::{CidrSet, RateLimiter};
use pachgate_routing::{MatchSpec, RouteTable};

use crate::auth::who_am_i_over;
use crate::metrics::{Metrics, RouteMetrics};
use crate::route_timeouts::RouteTimeouts;
use crate::upstream::{AddressSummary, Upstream, UpstreamCounts, UpstreamSpec};

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
#[derive(Debug, Clone, PartialEq)]
pub struct PachydermAuthSpec {
    pub upstream: String,
    pub who_am_i_method: String,
    pub settings: PachydermAuthSettings,
}

#[derive(Debug, Clone)]
pub(crate) struct RouteTarget {
    /// Position in the config, which is also the index of the route's metric handles.
    pub(crate) index: usize,
    pub(crate) upstream: usize,
    pub(crate) auth: RouteAuth,
    pub(crate) allow: CidrSet,
    pub(crate) forward_as_sent: bool,
    pub(crate) timeouts: RouteTimeouts,
    /// For the log line when a timeout cuts a response (only read then).
    pub(crate) name: Arc<str>,
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
    pub(crate) routes: RouteTable<RouteTarget>,
    pub(crate) route_specs: Vec<RouteSpec>,
    /// Filled in when the snapshot is installed in a gateway (which owns the metrics).
    pub(crate) route_metrics: Vec<Arc<RouteMetrics>>,
    pub(crate) upstreams: Vec<Arc<Upstream>>,
    /// `[auth.pachyderm]` as configured, to tell on reload whether the gate changed, with
    /// its WhoAmI method parsed (so a gate can be built again without a way to fail).
    pachyderm: Option<(PachydermAuthSpec, PathAndQuery)>,
    /// Shared with the snapshot this one replaced when the gate and its upstream did not
    /// change, so that its token cache goes on.
    pub(crate) pachyderm_gate: Option<Arc<PachydermGate>>,
    pub(crate) static_tokens: Option<StaticTokens>,
    pub(crate) clients: ClientPolicy,
    /// Questions to pachd in flight per client address (the failed-auth budget's turns).
    pub(crate) pending_asks: Arc<crate::auth::PendingAsks>,
    pub(crate) access_log: bool,
    pub(crate) plain_mode: PlainMode,
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
    /// Every address the endpoints stand for now, with its state and counts.
    pub addresses: Vec<AddressSummary>,
    pub counts: UpstreamCounts,
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
        let pachyderm = match pachyderm {
            None => None,
            Some(spec) => {
                let method = spec
                    .who_am_i_method
                    .parse()
                    .map_err(|e| format!("auth.pachyderm.who_am_i_method: {e}"))?;
                Some((spec, method))
            }
        };
        let pachyderm_gate = match &pachyderm {
            None => None,
            Some((spec, method)) => {
                let upstream = upstreams
                    .iter()
                    .find(|u| u.name() == spec.upstream)
                    .ok_or_else(|| {
                        format!("auth.pachyderm: unknown upstream {:?}", spec.upstream)
                    })?;
                Some(pachyderm_gate(spec, method, upstream))
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
            pachyderm,
            pachyderm_gate,
            static_tokens,
            clients,
            pending_asks: Default::default(),
            access_log: true,
            plain_mode: PlainMode::Serve,
        })
    }

    /// What the plaintext listener does (redirect or serve).
    pub fn with_plain_mode(mut self, mode: PlainMode) -> Self {
        self.plain_mode = mode;
        self
    }

    /// What the plaintext listener does.
    pub fn plain_mode(&self) -> PlainMode {
        self.plain_mode
    }

    /// One JSON (or text) line per request on stdout; on by default.
    pub fn with_access_log(mut self, on: bool) -> Self {
        self.access_log = on;
        self
    }

    pub(crate) fn attach_metrics(&mut self, metrics: &Metrics) {
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

    /// Takes over from `previous`, the snapshot this one replaces, what has not changed, so
    /// that a reload costs no state: each upstream whose spec is the same (its connections,
    /// health states, DNS answers and counts), the Pachyderm gate when it and its upstream
    /// are the same (its token cache), and the rate limiters' counts. Before
    /// [`Snapshot::start_upstreams`]: an upstream built for this snapshot and replaced here
    /// never starts its background work.
    pub(crate) fn carry_over(&mut self, previous: &Snapshot) -> CarriedOver {
        let mut carried = CarriedOver::default();
        for upstream in &mut self.upstreams {
            let running = previous
                .upstreams
                .iter()
                .find(|old| old.name() == upstream.name() && old.spec() == upstream.spec());
            match running {
                Some(running) => {
                    *upstream = running.clone();
                    carried.upstreams_kept += 1;
                }
                None => carried.upstreams_new += 1,
            }
        }
        if let Some((spec, method)) = &self.pachyderm {
            let upstream = |snapshot: &Snapshot| {
                snapshot
                    .upstreams
                    .iter()
                    .find(|u| u.name() == spec.upstream)
                    .cloned()
            };
            let kept = match (upstream(self), upstream(previous)) {
                (Some(now), Some(before)) if Arc::ptr_eq(&now, &before) => Some(now),
                _ => None,
            };
            let previous_spec = previous.pachyderm.as_ref().map(|(spec, _)| spec);
            match (&previous.pachyderm_gate, kept) {
                (Some(gate), Some(_)) if previous_spec == Some(spec) => {
                    self.pachyderm_gate = Some(gate.clone());
                    carried.token_cache_kept = true;
                }
                // Built over the upstream made for this snapshot, which was just replaced
                // by the running one: asked over that instead.
                (_, Some(upstream)) => {
                    self.pachyderm_gate = Some(pachyderm_gate(spec, method, &upstream));
                }
                (_, None) => {}
            }
        }
        let limiters = [
            (&mut self.clients.requests, &previous.clients.requests),
            (&mut self.clients.failed_auth, &previous.clients.failed_auth),
        ];
        for (limiter, running) in limiters {
            if let (Some(limiter), Some(running)) = (limiter, running) {
                limiter.keep_counts_of(running);
            }
        }
        self.pending_asks = previous.pending_asks.clone();
        carried
    }

    /// Starts each upstream's DNS refresh and health checks (on the current runtime).
    pub(crate) fn start_upstreams(&self) {
        for upstream in &self.upstreams {
            upstream.start_background();
        }
    }

    pub fn upstreams(&self) -> Vec<UpstreamSummary> {
        self.upstreams
            .iter()
            .map(|upstream| UpstreamSummary {
                name: upstream.name().to_string(),
                protocol: upstream.protocol().name(),
                endpoints: upstream.endpoints().map(str::to_string).collect(),
                addresses: upstream.address_summaries(),
                counts: upstream.counts(),
            })
            .collect()
    }
}

/// The gate of `[auth.pachyderm]`, asking `method` over `upstream`.
fn pachyderm_gate(
    spec: &PachydermAuthSpec,
    method: &PathAndQuery,
    upstream: &Arc<Upstream>,
) -> Arc<PachydermGate> {
    let who_am_i = who_am_i_over(upstream.clone(), method.clone());
    Arc::new(PachydermGate::new(spec.settings.clone(), who_am_i))
}

/// What a reload kept of the running configuration's state ([`Gateway::replace_snapshot`]).
///
/// [`Gateway::replace_snapshot`]: crate::Gateway::replace_snapshot
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CarriedOver {
    /// Upstreams whose spec did not change: connections, health, DNS answers and counts go on.
    pub upstreams_kept: usize,
    /// Upstreams new or changed: they start afresh.
    pub upstreams_new: usize,
    /// The Pachyderm gate and its upstream did not change: its token cache goes on.
    pub token_cache_kept: bool,
}

/// What the plaintext listener does with requests.
#[derive(Debug, Clone, Copy)]
pub enum PlainMode {
    /// Answer 308 to the same host, path and query on https (at this port).
    Redirect { https_port: u16 },
    /// Serve HTTP/1.1 and h2c (prior knowledge) like the TLS listener.
    Serve,
}
