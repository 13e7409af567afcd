//! `[upstreams.*]` and `[auth.pachyderm]`: endpoints, protocols, timeouts, upstream TLS and
//! the WhoAmI gate's settings, checked and turned into the specs proxy-core takes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use pachgate_proxy_core::upstream::{
    HealthCheck, HealthCheckKind, DEFAULT_DNS_REFRESH, DEFAULT_MAX_PENDING_REQUESTS,
    DEFAULT_MAX_RESPONSE_HEADERS, DEFAULT_MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS_CAP,
};
use pachgate_proxy_core::{
    PachydermAuthSettings, PachydermAuthSpec, PachydermLine, UpstreamProtocol, UpstreamSpec,
    UpstreamTls,
};
use toml::Spanned;

use super::keywords::Protocol;
use super::types::{Dns, HealthCheckConfig, PachydermAuth, Upstream};
use super::Validator;

impl Validator<'_> {
    pub(super) fn upstream(
        &mut self,
        name: &Spanned<String>,
        upstream: &Spanned<Upstream>,
        dns_servers: &[SocketAddr],
    ) -> Option<UpstreamSpec> {
        let before = self.errors.len();
        if !valid_name(name.get_ref()) {
            self.err(
                &name.span(),
                format!(
                    "upstream name {:?}: expected letters, digits, `-` or `_`",
                    name.get_ref()
                ),
            );
        }
        let u = upstream.get_ref();
        if u.endpoints.get_ref().is_empty() {
            self.err(
                &u.endpoints.span(),
                format!(
                    "upstreams.{}.endpoints is empty: list at least one \"host:port\"",
                    name.get_ref()
                ),
            );
        }
        for endpoint in u.endpoints.get_ref() {
            let text = endpoint.get_ref();
            let valid = match text.rsplit_once(':') {
                Some((host, port)) => {
                    !host.is_empty()
                        && port.parse::<u16>().is_ok_and(|p| p != 0)
                        && text.parse::<http::uri::Authority>().is_ok()
                }
                None => false,
            };
            if !valid {
                self.err(
                    &endpoint.span(),
                    format!(
                        "endpoint {text:?} is not host:port: expected e.g. \"pachd:1650\" or \"127.0.0.1:1650\""
                    ),
                );
            }
        }
        let protocol = UpstreamProtocol::from(u.protocol.unwrap_or(Protocol::H2c));
        let connect_timeout = u
            .connect_timeout
            .as_ref()
            .and_then(|v| self.nonzero_duration(v, "connect_timeout"))
            .unwrap_or(Duration::from_secs(5));
        let response_timeout = u
            .response_timeout
            .as_ref()
            .and_then(|v| self.optional_duration(v, "response_timeout"))
            .unwrap_or(None);
        let h2_keepalive_interval = match u.h2_keepalive_interval.as_ref() {
            None => Some(Duration::from_secs(30)),
            Some(v) if v.get_ref() == "off" => None,
            // pachd's gRPC server (grpc-go) closes a connection pinged more often than every
            // 5 s (`keepalive.EnforcementPolicy{MinTime: 5s}` in its grpcutil/server.go):
            // GOAWAY "too_many_pings", and every stream on it lost.
            Some(v) => self.duration_at_least(
                v,
                "h2_keepalive_interval",
                Duration::from_secs(5),
                "pachd (grpc-go) closes connections pinged more often",
            ),
        };
        let h2_keepalive_timeout = u
            .h2_keepalive_timeout
            .as_ref()
            .and_then(|v| self.nonzero_duration(v, "h2_keepalive_timeout"))
            .unwrap_or(Duration::from_secs(20));
        let h2_max_response_headers = match &u.h2_max_response_headers {
            Some(v) if !(1..=MAX_RESPONSE_HEADERS_CAP).contains(v.get_ref()) => {
                self.err(
                    &v.span(),
                    format!("h2_max_response_headers must be 1 to {MAX_RESPONSE_HEADERS_CAP}"),
                );
                0
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_MAX_RESPONSE_HEADERS,
        };
        let h2_max_response_header_bytes = match &u.h2_max_response_header_bytes {
            Some(v) if !(1024..=16 * 1024 * 1024).contains(v.get_ref()) => {
                self.err(
                    &v.span(),
                    "h2_max_response_header_bytes must be 1024 to 16777216 (16 MiB)",
                );
                0
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_MAX_RESPONSE_HEADER_BYTES,
        };
        let dns_refresh = u
            .dns_refresh
            .as_ref()
            .and_then(|v| {
                self.duration_at_least(
                    v,
                    "dns_refresh",
                    Duration::from_millis(100),
                    "answers are not cached, so each refresh asks the DNS server again",
                )
            })
            .unwrap_or(DEFAULT_DNS_REFRESH);
        let max_pending_requests = match &u.max_pending_requests {
            Some(v) if *v.get_ref() == 0 => {
                self.err(&v.span(), "max_pending_requests must be at least 1");
                0
            }
            Some(v) => *v.get_ref(),
            None => DEFAULT_MAX_PENDING_REQUESTS,
        };
        let health_check = u
            .health_check
            .as_ref()
            .and_then(|check| self.health_check(name, protocol, check));
        let tls = if protocol == UpstreamProtocol::H2 {
            self.upstream_tls(name, u, b"h2")
        } else if protocol == UpstreamProtocol::Http1Tls {
            self.upstream_tls(name, u, b"http/1.1")
        } else {
            if let Some(ca) = &u.ca {
                self.err(
                    &ca.span(),
                    "`ca` applies only to TLS upstreams (protocol = \"h2\" or \"http1-tls\")",
                );
            }
            None
        };
        if self.errors.len() != before {
            return None;
        }
        Some(UpstreamSpec {
            name: name.get_ref().clone(),
            endpoints: u
                .endpoints
                .get_ref()
                .iter()
                .map(|e| e.get_ref().clone())
                .collect(),
            protocol,
            connect_timeout,
            response_timeout,
            h2_keepalive_interval,
            h2_keepalive_timeout,
            tls,
            h2_max_response_headers,
            h2_max_response_header_bytes,
            dns_refresh,
            dns_servers: dns_servers.to_vec(),
            max_pending_requests,
            health_check,
        })
    }

    /// `[upstreams.NAME.health_check]`: gRPC health on h2/h2c upstreams (`service`), an HTTP
    /// GET of `path` on HTTP ones.
    fn health_check(
        &mut self,
        name: &Spanned<String>,
        protocol: UpstreamProtocol,
        check: &Spanned<HealthCheckConfig>,
    ) -> Option<HealthCheck> {
        let c = check.get_ref();
        let kind = match (protocol.is_h2(), &c.path, &c.service) {
            (true, Some(path), _) => {
                self.err(
                    &path.span(),
                    format!(
                        "upstreams.{}.health_check: `path` is for HTTP upstreams; an {} upstream is checked with gRPC health (`service`)",
                        name.get_ref(),
                        protocol.name()
                    ),
                );
                return None;
            }
            (true, None, service) => HealthCheckKind::Grpc {
                service: service
                    .as_ref()
                    .map(|s| s.get_ref().clone())
                    .unwrap_or_default(),
            },
            (false, _, Some(service)) => {
                self.err(
                    &service.span(),
                    "`service` (gRPC health) is for h2/h2c upstreams; HTTP upstreams are checked with `path`",
                );
                return None;
            }
            (false, None, None) => {
                self.err(
                    &check.span(),
                    format!(
                        "upstreams.{}.health_check needs `path`, the HTTP path to GET (e.g. \"/healthz\")",
                        name.get_ref()
                    ),
                );
                return None;
            }
            (false, Some(path), None) => {
                if !path.get_ref().starts_with('/') {
                    self.err(&path.span(), "health_check.path must start with `/`");
                    return None;
                }
                // As the request line will carry it: no spaces or control characters.
                if let Err(e) = path.get_ref().parse::<http::uri::PathAndQuery>() {
                    self.err(
                        &path.span(),
                        format!("health_check.path is not a valid request path ({e}): percent-encode spaces and other special characters"),
                    );
                    return None;
                }
                HealthCheckKind::HttpGet {
                    path: path.get_ref().clone(),
                }
            }
        };
        let interval = c
            .interval
            .as_ref()
            .and_then(|v| {
                self.duration_at_least(
                    v,
                    "health_check.interval",
                    Duration::from_millis(100),
                    "each check opens a new connection",
                )
            })
            .unwrap_or(Duration::from_secs(5));
        let timeout = c
            .timeout
            .as_ref()
            .and_then(|v| self.nonzero_duration(v, "health_check.timeout"))
            .unwrap_or(Duration::from_secs(1));
        let mut threshold = |value: &Option<Spanned<u32>>, key: &str, default: u32| match value {
            Some(v) if !(1..=100).contains(v.get_ref()) => {
                self.err(&v.span(), format!("health_check.{key} must be 1 to 100"));
                default
            }
            Some(v) => *v.get_ref(),
            None => default,
        };
        let unhealthy_threshold = threshold(&c.unhealthy_threshold, "unhealthy_threshold", 2);
        let healthy_threshold = threshold(&c.healthy_threshold, "healthy_threshold", 1);
        Some(HealthCheck {
            kind,
            interval,
            timeout,
            unhealthy_threshold,
            healthy_threshold,
        })
    }

    /// `[dns] servers`: each an `ip:port` (a name could not be looked up without a server).
    pub(super) fn dns_servers(&mut self, dns: &Dns) -> Vec<SocketAddr> {
        let Some(servers) = &dns.servers else {
            return Vec::new();
        };
        if servers.get_ref().is_empty() {
            self.err(
                &servers.span(),
                "dns.servers is empty: list \"ip:port\" servers, or leave the key out to use the system's resolver",
            );
        }
        let mut parsed = Vec::new();
        for server in servers.get_ref() {
            match server.get_ref().parse::<SocketAddr>() {
                Ok(address) => parsed.push(address),
                Err(_) => self.err(
                    &server.span(),
                    format!(
                        "dns server {:?} is not ip:port: expected e.g. \"10.96.0.10:53\"",
                        server.get_ref()
                    ),
                ),
            }
        }
        parsed
    }

    /// TLS settings of an upstream with `protocol = "h2"`.
    pub(super) fn upstream_tls(
        &mut self,
        name: &Spanned<String>,
        u: &Upstream,
        alpn: &[u8],
    ) -> Option<UpstreamTls> {
        let Some(ca) = &u.ca else {
            self.err(
                &name.span(),
                format!(
                    "upstreams.{}: a TLS protocol needs `ca`, the PEM CA certificate that signed the upstream's certificate",
                    name.get_ref()
                ),
            );
            return None;
        };
        let ca_certs = match pachgate_tls::load_ca_certificates(&self.path(ca.get_ref())) {
            Ok(certs) => certs,
            Err(e) => {
                self.err(&ca.span(), format!("upstream ca: {e}"));
                return None;
            }
        };
        let client = match (&u.client_cert, &u.client_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                match pachgate_tls::load_cert_and_key(
                    &self.path(cert.get_ref()),
                    &self.path(key.get_ref()),
                ) {
                    Ok(material) => Some(material),
                    Err(e) => {
                        self.err(
                            &cert.span(),
                            format!("upstream client_cert/client_key: {e}"),
                        );
                        return None;
                    }
                }
            }
            (Some(one), None) | (None, Some(one)) => {
                self.err(
                    &one.span(),
                    "set both client_cert and client_key, or neither",
                );
                return None;
            }
        };
        let server_name = match &u.server_name {
            Some(n) => n.get_ref().clone(),
            None => {
                let first = u.endpoints.get_ref().first()?.get_ref();
                let host = first.rsplit_once(':').map(|(h, _)| h).unwrap_or(first);
                host.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string()
            }
        };
        let server_name =
            match pachgate_tls::rustls::pki_types::ServerName::try_from(server_name.clone()) {
                Ok(n) => n,
                Err(e) => {
                    let span = u
                        .server_name
                        .as_ref()
                        .map(|n| n.span())
                        .unwrap_or(name.span());
                    self.err(&span, format!("server_name {server_name:?}: {e}"));
                    return None;
                }
            };
        match UpstreamTls::new(ca_certs, client, &[alpn], server_name) {
            Ok(tls) => Some(tls),
            Err(e) => {
                self.err(&ca.span(), format!("upstream TLS: {e}"));
                None
            }
        }
    }

    pub(super) fn pachyderm_auth(
        &mut self,
        auth: &Spanned<PachydermAuth>,
        upstreams: &BTreeMap<Spanned<String>, Spanned<Upstream>>,
    ) -> Option<PachydermAuthSpec> {
        let before = self.errors.len();
        let a = auth.get_ref();
        let name = a.upstream.get_ref();
        match upstreams.iter().find(|(k, _)| k.get_ref() == name) {
            None => self.err(
                &a.upstream.span(),
                format!("auth.pachyderm.upstream {name:?} is not defined: name the upstream of pachd's gRPC port"),
            ),
            Some((_, u)) => {
                if !matches!(u.get_ref().protocol, None | Some(Protocol::H2c | Protocol::H2)) {
                    self.err(
                        &a.upstream.span(),
                        format!("auth.pachyderm.upstream {name:?} must be pachd's gRPC port (protocol = \"h2c\"): WhoAmI is a gRPC call"),
                    );
                }
            }
        }
        let mut settings = PachydermAuthSettings::default();
        if let Some(v) = &a.cache_ttl {
            if let Some(d) = self.duration(v, "auth.pachyderm.cache_ttl") {
                settings.cache_ttl = d;
            }
        }
        if let Some(v) = &a.negative_cache_ttl {
            if let Some(d) = self.duration(v, "auth.pachyderm.negative_cache_ttl") {
                settings.negative_cache_ttl = d;
            }
        }
        if let Some(v) = &a.cache_capacity {
            if *v.get_ref() == 0 {
                self.err(
                    &v.span(),
                    "auth.pachyderm.cache_capacity must be at least 1",
                );
            }
            settings.cache_capacity = *v.get_ref();
        }
        if let Some(v) = &a.when_auth_disabled {
            settings.when_auth_disabled = (*v).into();
        }
        for method in a.public_methods.iter().flatten() {
            if !pachgate_auth_gate::is_well_formed_grpc_path(method.get_ref()) {
                self.err(
                    &method.span(),
                    format!("public method {:?} is not a gRPC method path: expected \"/package.Service/Method\"", method.get_ref()),
                );
            }
            settings.extra_public_methods.push(method.get_ref().clone());
        }
        settings.line = match &a.version {
            Some(version) => (*version).into(),
            // Configs written before `version` existed said 1.x through the WhoAmI method.
            None if a
                .who_am_i_method
                .as_ref()
                .is_some_and(|m| m.get_ref() == PachydermLine::V1.who_am_i_method()) =>
            {
                PachydermLine::V1
            }
            None => PachydermLine::V2,
        };
        let who_am_i_method = match &a.who_am_i_method {
            Some(m) => {
                // The gate sends it as a request path: it must also parse as one.
                if !pachgate_auth_gate::is_well_formed_grpc_path(m.get_ref())
                    || m.get_ref().parse::<http::uri::PathAndQuery>().is_err()
                {
                    self.err(
                        &m.span(),
                        "who_am_i_method must be a gRPC method path like \"/auth_v2.API/WhoAmI\"",
                    );
                }
                m.get_ref().clone()
            }
            None => settings.line.who_am_i_method().to_string(),
        };
        (self.errors.len() == before).then(|| PachydermAuthSpec {
            upstream: name.clone(),
            who_am_i_method,
            settings,
        })
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
