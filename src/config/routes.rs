//! `[[routes]]`: names, matchers, the upstream and auth each route uses, path forwarding and
//! per-route timeouts, checked against the upstreams and auth sections.

use std::collections::{BTreeMap, HashSet};

use pachgate_proxy_core::{RouteAuth, RouteSpec, RouteTimeouts};
use pachgate_routing::{HeaderSpec, MatchSpec, RouteTable};
use toml::Spanned;

use super::keywords::{AuthKind, ForwardPath};
use super::types::{PachydermAuth, Route, Upstream};
use super::Validator;

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        routes: &[Spanned<Route>],
        upstreams: &BTreeMap<Spanned<String>, Spanned<Upstream>>,
        pachyderm: Option<&Spanned<PachydermAuth>>,
        has_token_auth: bool,
        allow_insecure: bool,
    ) -> Vec<RouteSpec> {
        let known: HashSet<&str> = upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        let mut seen = HashSet::new();
        let mut specs = Vec::new();
        for route in routes {
            let route = route.get_ref();
            let name = route.name.get_ref();
            if name.is_empty() {
                self.err(&route.name.span(), "route name is empty");
            } else if !seen.insert(name.clone()) {
                self.err(
                    &route.name.span(),
                    format!("route name {name:?} is used twice: route names must be unique"),
                );
            }
            let upstream = route.upstream.get_ref();
            if !known.contains(upstream.as_str()) {
                let mut names: Vec<&str> = known.iter().copied().collect();
                names.sort();
                self.err(
                    &route.upstream.span(),
                    format!(
                        "route {name:?}: upstream {upstream:?} is not defined: expected one of [{}]",
                        names.join(", ")
                    ),
                );
            }
            let auth = match &route.auth {
                None => RouteAuth::None,
                Some(auth) => {
                    let (section, needs) = match auth.get_ref() {
                        AuthKind::None => (true, ""),
                        AuthKind::Pachyderm => (
                            pachyderm.is_some(),
                            "auth = \"pachyderm\" needs an [auth.pachyderm] section with `upstream` (pachd's gRPC port, where WhoAmI is asked)",
                        ),
                        AuthKind::Token => (
                            has_token_auth,
                            "auth = \"token\" needs an [auth.token] section with `hashes_file` (SHA-256 hashes of the accepted tokens)",
                        ),
                    };
                    if !section {
                        self.err(&auth.span(), needs);
                    }
                    RouteAuth::from(*auth.get_ref())
                }
            };
            // Secure by default: pachd reached without the gate is an open cluster if its own
            // auth is off. Only an explicit allow_insecure lets that start.
            if let Some(pachyderm) = pachyderm {
                if auth == RouteAuth::None
                    && upstream == pachyderm.get_ref().upstream.get_ref()
                    && !allow_insecure
                {
                    let span = route
                        .auth
                        .as_ref()
                        .map(|a| a.span())
                        .unwrap_or(route.upstream.span());
                    self.err(
                        &span,
                        format!(
                            "route {name:?} reaches pachd (upstream {upstream:?}, the one [auth.pachyderm] names) without auth: set auth = \"pachyderm\", or allow_insecure = true to accept an unauthenticated path to pachd"
                        ),
                    );
                }
            }
            let m = route.matcher.get_ref();
            let spec = MatchSpec {
                host: m.host.clone(),
                path_prefix: m.path_prefix.clone(),
                grpc: m.grpc,
                header: m.header.as_ref().map(|h| HeaderSpec {
                    name: h.name.clone(),
                    exact: h.exact.clone(),
                    prefix: h.prefix.clone(),
                }),
                query: m.query.clone().unwrap_or_default(),
            };
            // Compile alone so the error points at this route's match table.
            if let Err((_, e)) = RouteTable::compile([(name.clone(), spec.clone(), ())]) {
                self.err(&route.matcher.span(), format!("route {name:?}: {e}"));
            }
            let forward_as_sent = match &route.forward_path {
                None => false,
                Some(mode) => match mode.get_ref() {
                    ForwardPath::Normalized => false,
                    ForwardPath::AsSent => {
                        // The gate would judge the normal form while pachd serves the path
                        // as sent: `/pfs/../x` is not what the gate allowed.
                        if auth != RouteAuth::None {
                            self.err(
                                &mode.span(),
                                format!("route {name:?}: forward_path = \"as-sent\" needs auth = \"none\": the gate checks the normalised path, so the upstream must get that one"),
                            );
                        }
                        // Likewise a path rule: `/pfs/%2e%2e/public/x` would match
                        // `path_prefix = "/public"` and reach the upstream as `/pfs/...`.
                        if route.matcher.get_ref().path_prefix.is_some() {
                            self.err(
                                &mode.span(),
                                format!("route {name:?}: forward_path = \"as-sent\" cannot go with path_prefix: routing matches the normalised path, and the upstream would get another one (match by host, header or query)"),
                            );
                        }
                        true
                    }
                },
            };
            let allow = route
                .allow_cidrs
                .as_deref()
                .map(|c| self.cidrs(c))
                .unwrap_or_default();
            // Off unless set: long gRPC streams and websockets are the point of some routes.
            let timeouts = RouteTimeouts {
                total: route
                    .timeout
                    .as_ref()
                    .and_then(|v| self.optional_duration(v, "timeout"))
                    .flatten(),
                idle: route
                    .idle_timeout
                    .as_ref()
                    .and_then(|v| self.optional_duration(v, "idle_timeout"))
                    .flatten(),
            };
            specs.push(RouteSpec {
                name: name.clone(),
                matcher: spec,
                upstream: upstream.clone(),
                auth,
                allow,
                forward_as_sent,
                timeouts,
            });
        }
        specs
    }
}
