//! The validation pass: one walk over the parsed file that checks every value against its
//! span and builds the runtime pieces (listeners, limits, client policy, the snapshot).

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use pachgate_proxy_core::{
    Cidr, CidrSet, ClientPolicy, PlainMode, RateLimiter, ServerLimits, Snapshot, StaticTokens,
};
use toml::Spanned;

use super::keywords::{AccessLog, HttpMode};
use super::types::{FileConfig, Limits};
use super::{parse_duration, ConfigError, Locator, RuntimeConfig};

pub(super) struct Validator<'a> {
    pub(super) locate: Locator<'a>,
    pub(super) base: &'a Path,
    pub(super) errors: Vec<ConfigError>,
}

/// A listener's key in `[listen]`: its value as written, the address it parsed to, its name.
type ListenerKey<'a> = (
    Option<&'a Spanned<String>>,
    Option<std::net::SocketAddr>,
    &'a str,
);

impl Validator<'_> {
    pub(super) fn err(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let error = self.locate.error(span, message.into());
        self.errors.push(error);
    }

    pub(super) fn validate(
        mut self,
        config: FileConfig,
    ) -> Result<RuntimeConfig, Vec<ConfigError>> {
        let listen_span = config.listen.span();
        let listen = config.listen.into_inner();
        let https = listen
            .https
            .as_ref()
            .and_then(|a| self.address(a, "listen.https"));
        let admin = listen
            .admin
            .as_ref()
            .and_then(|a| self.address(a, "listen.admin"));
        let http_addr = listen
            .http
            .as_ref()
            .and_then(|a| self.address(a, "listen.http"));
        if listen.https.is_none() && listen.http.is_none() {
            self.err(
                &listen_span,
                "[listen] needs `https` (TLS) and/or `http`: nothing would accept connections",
            );
        }
        self.listeners_apart([
            (listen.https.as_ref(), https, "listen.https"),
            (listen.http.as_ref(), http_addr, "listen.http"),
            (listen.admin.as_ref(), admin, "listen.admin"),
        ]);
        let http_mode = listen.http_mode.unwrap_or(HttpMode::Redirect);
        let public_https_port = listen.public_https_port.as_ref().and_then(|port| {
            match u16::try_from(*port.get_ref()) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    self.err(
                        &port.span(),
                        format!(
                            "listen.public_https_port = {}: expected a port from 1 to 65535",
                            port.get_ref()
                        ),
                    );
                    None
                }
            }
        });
        let http = match (&listen.http, http_addr) {
            (Some(spanned), Some(addr)) => {
                if http_mode == HttpMode::Redirect {
                    match https {
                        Some(https) => Some((
                            addr,
                            PlainMode::Redirect {
                                // Clients reach a non-loopback listener through a Service or
                                // load balancer on 443; a loopback one (`pachgate local`,
                                // tests) directly. 0 (`:0`): the port once bound.
                                https_port: public_https_port.unwrap_or(
                                    if https.ip().is_loopback() {
                                        https.port()
                                    } else {
                                        443
                                    },
                                ),
                            },
                        )),
                        None => {
                            self.err(
                                &spanned.span(),
                                "listen.http redirects to https (http_mode = \"redirect\", the default), \
                                 but there is no listen.https: set listen.https or http_mode = \"serve\"",
                            );
                            None
                        }
                    }
                } else {
                    if !addr.ip().is_loopback() && !config.allow_insecure {
                        self.err(
                            &spanned.span(),
                            format!(
                                "listen.http serves plaintext on non-loopback address {addr}: \
                                 Pachyderm traffic (tokens included) would cross the network \
                                 unencrypted. Use listen.https, bind to 127.0.0.1, or set \
                                 allow_insecure = true if a TLS load balancer sits in front"
                            ),
                        );
                    }
                    Some((addr, PlainMode::Serve))
                }
            }
            _ => None,
        };

        let hsts = match (&listen.hsts_max_age, listen.hsts) {
            (None, false) => None,
            (None, true) => Some(HeaderValue::from_static("max-age=31536000")),
            (Some(age), false) => {
                self.err(
                    &age.span(),
                    "listen.hsts_max_age is set but HSTS is off: add hsts = true",
                );
                None
            }
            // "0s" is allowed: it tells browsers to forget an earlier HSTS.
            (Some(age), true) => self.duration(age, "listen.hsts_max_age").map(|d| {
                HeaderValue::from_str(&format!("max-age={}", d.as_secs()))
                    .expect("digits are a valid header value")
            }),
        };
        let tls = self.tls(config.tls, listen.https.as_ref());
        let limits = self.limits(&config.limits);
        let worker_threads = config.runtime.worker_threads.as_ref().and_then(|w| {
            if *w.get_ref() == 0 {
                self.err(&w.span(), "runtime.worker_threads must be at least 1");
                None
            } else {
                Some(*w.get_ref())
            }
        });

        let listener_allow = config.allow_cidrs.as_deref().map(|c| self.cidrs(c));
        let trusted_proxies = config.trusted_proxies.as_deref().map(|c| self.cidrs(c));
        let limits_config = &config.rate_limits;
        let requests = limits_config.requests_per_second.as_ref().and_then(|rate| {
            let burst = limits_config
                .request_burst
                .as_ref()
                .map(|b| *b.get_ref())
                .unwrap_or(rate.get_ref().saturating_mul(2));
            (*rate.get_ref() > 0).then(|| RateLimiter::new(f64::from(*rate.get_ref()), burst))
        });
        let failed_per_minute = limits_config
            .failed_auth_per_minute
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(30);
        let failed_burst = limits_config
            .failed_auth_burst
            .as_ref()
            .map(|v| *v.get_ref())
            .unwrap_or(10);
        let failed_auth = (failed_per_minute > 0)
            .then(|| RateLimiter::per_minute(failed_per_minute, failed_burst));

        let upstream_count = config.upstreams.len();
        let dns_servers = self.dns_servers(&config.dns);
        let mut upstream_specs = Vec::new();
        for (name, upstream) in &config.upstreams {
            if let Some(spec) = self.upstream(name, upstream, &dns_servers) {
                upstream_specs.push(spec);
            }
        }
        let pachyderm = config
            .auth
            .pachyderm
            .as_ref()
            .and_then(|p| self.pachyderm_auth(p, &config.upstreams));
        let route_specs = self.routes(
            &config.routes,
            &config.upstreams,
            config.auth.pachyderm.as_ref(),
            config.auth.token.is_some(),
            config.allow_insecure,
        );
        let static_tokens = config.auth.token.as_ref().and_then(|t| {
            let file = &t.get_ref().hashes_file;
            match StaticTokens::open(&self.path(file.get_ref())) {
                Ok(tokens) => Some(tokens),
                Err(e) => {
                    self.err(&file.span(), format!("auth.token.hashes_file: {e}"));
                    None
                }
            }
        });

        let access_log = config.log.access.unwrap_or(AccessLog::Json);

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let route_count = route_specs.len();
        let proxy_headers_from_anyone = listen.proxy_protocol
            && !trusted_proxies
                .as_ref()
                .is_some_and(|cidrs| !cidrs.is_empty());
        let clients = ClientPolicy {
            hsts,
            listener_allow: listener_allow.unwrap_or_default(),
            trusted_proxies: trusted_proxies.unwrap_or_default(),
            requests,
            failed_auth,
            proxy_protocol: listen.proxy_protocol,
        };
        let snapshot = Snapshot::build(
            route_specs,
            upstream_specs,
            pachyderm,
            static_tokens,
            clients,
        )
        .map_err(|message| {
            // Every check Snapshot::build makes (upstreams that exist with endpoints that
            // parse, the auth sections routes name, "as-sent" only without auth, matchers
            // that compile, a WhoAmI path) was made above against the offending value's
            // span. Its String error has no location: reaching it is a bug in this pass,
            // which debug builds (every test that
            // loads a config) turn into a failure.
            if cfg!(debug_assertions) {
                panic!("Snapshot::build refused a validated config: {message}");
            }
            vec![self.locate.error(&(0..0), message)]
        })?
        .with_access_log(access_log != AccessLog::Off);
        Ok(RuntimeConfig {
            https,
            http,
            admin,
            tls,
            snapshot,
            limits,
            worker_threads,
            access_log,
            route_count,
            upstream_count,
            proxy_headers_from_anyone,
        })
    }

    pub(super) fn address(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
        match value.get_ref().parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.err(
                    &value.span(),
                    format!(
                        "{key} = {:?} is not a socket address: expected IP:port, like \"0.0.0.0:8443\" or \"[::]:8443\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    pub(super) fn path(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    pub(super) fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
        match parse_duration(value.get_ref()) {
            Some(d) => Some(d),
            None => {
                self.err(
                    &value.span(),
                    format!(
                        "{key} = {:?} is not a duration: expected a number with a unit, like \"500ms\", \"5s\", \"2m\", \"1h\" or \"7d\"",
                        value.get_ref()
                    ),
                );
                None
            }
        }
    }

    /// A timeout or interval: zero is refused, because it would fail every connection (or
    /// send pings without pause) rather than turn anything off.
    pub(super) fn nonzero_duration(
        &mut self,
        value: &Spanned<String>,
        key: &str,
    ) -> Option<Duration> {
        let duration = self.duration(value, key)?;
        if duration.is_zero() {
            self.err(
                &value.span(),
                format!("{key} = {:?} must be longer than zero", value.get_ref()),
            );
            return None;
        }
        Some(duration)
    }

    /// Two listeners on one port whose addresses overlap (the same address, a wildcard and
    /// any address of its family, or `[::]`, which on Linux takes IPv4 too, and any address)
    /// would fail at bind, with no place in the file to point at; port 0 (any free port)
    /// never clashes.
    fn listeners_apart(&mut self, listeners: [ListenerKey<'_>; 3]) {
        let overlap = |a: std::net::SocketAddr, b: std::net::SocketAddr| {
            a.port() == b.port()
                && a.port() != 0
                && (a.ip() == b.ip()
                    || (a.ip().is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
                    || (b.ip().is_unspecified() && (b.is_ipv6() || a.is_ipv4())))
        };
        for (at, (value, address, key)) in listeners.iter().enumerate() {
            let (Some(value), Some(address)) = (value, address) else {
                continue;
            };
            let earlier = listeners[..at]
                .iter()
                .find(|(_, other, _)| other.is_some_and(|other| overlap(other, *address)));
            if let Some((_, _, other_key)) = earlier {
                self.err(
                    &value.span(),
                    format!(
                        "{key} = {:?} overlaps {other_key}: two listeners cannot share a port",
                        value.get_ref()
                    ),
                );
            }
        }
    }

    /// An interval no shorter than `min`; `why` says what a shorter one would do.
    pub(super) fn duration_at_least(
        &mut self,
        value: &Spanned<String>,
        key: &str,
        min: Duration,
        why: &str,
    ) -> Option<Duration> {
        let duration = self.nonzero_duration(value, key)?;
        if duration < min {
            let least = match min.subsec_millis() {
                0 => format!("{}s", min.as_secs()),
                _ => format!("{}ms", min.as_millis()),
            };
            self.err(
                &value.span(),
                format!(
                    "{key} = {:?} is below its least, {least:?}: {why}",
                    value.get_ref()
                ),
            );
            return None;
        }
        Some(duration)
    }

    /// A timeout or interval that may also be "off".
    pub(super) fn optional_duration(
        &mut self,
        value: &Spanned<String>,
        key: &str,
    ) -> Option<Option<Duration>> {
        if value.get_ref() == "off" {
            return Some(None);
        }
        self.nonzero_duration(value, key).map(Some)
    }

    pub(super) fn limits(&mut self, limits: &Limits) -> ServerLimits {
        let mut out = ServerLimits::default();
        if let Some(v) = &limits.h2_max_concurrent_streams {
            if *v.get_ref() == 0 {
                self.err(
                    &v.span(),
                    "limits.h2_max_concurrent_streams must be at least 1",
                );
            }
            out.h2_max_concurrent_streams = *v.get_ref();
        }
        if let Some(v) = &limits.max_header_list_size {
            if *v.get_ref() < 4096 {
                self.err(
                    &v.span(),
                    "limits.max_header_list_size must be at least 4096 bytes",
                );
            }
            out.max_header_list_size = *v.get_ref();
        }
        for (value, key, slot) in [
            (
                &limits.h2_stream_window,
                "limits.h2_stream_window",
                &mut out.h2_stream_window,
            ),
            (
                &limits.h2_connection_window,
                "limits.h2_connection_window",
                &mut out.h2_connection_window,
            ),
        ] {
            if let Some(v) = value {
                // RFC 9113 §6.9.1: windows are between 65,535 and 2^31-1 octets.
                if *v.get_ref() < 65_535 || *v.get_ref() > 0x7fff_ffff {
                    let message = format!("{key} must be between 65535 and 2147483647 bytes");
                    self.err(&v.span(), message);
                }
                *slot = *v.get_ref();
            }
        }
        if let Some(v) = &limits.max_connections {
            match usize::try_from(*v.get_ref()) {
                Ok(max) => out.max_connections = max,
                Err(_) => self.err(
                    &v.span(),
                    format!(
                        "limits.max_connections = {}: expected a number of connections, \
                         or 0 for no cap",
                        v.get_ref()
                    ),
                ),
            }
        }
        if let Some(v) = &limits.reject_underscore_headers {
            out.reject_underscore_headers = *v.get_ref();
        }
        if let Some(v) = &limits.h2_max_pending_accept_reset_streams {
            out.h2_max_pending_accept_reset_streams = *v.get_ref() as usize;
        }
        if let Some(v) = &limits.h2_max_local_error_reset_streams {
            out.h2_max_local_error_reset_streams = *v.get_ref() as usize;
        }
        // Timeouts and intervals: zero is refused (`nonzero_duration`); some may be "off".
        for (value, key, slot) in [
            (
                &limits.h2_keepalive_timeout,
                "limits.h2_keepalive_timeout",
                &mut out.h2_keepalive_timeout,
            ),
            (
                &limits.h1_header_read_timeout,
                "limits.h1_header_read_timeout",
                &mut out.h1_header_read_timeout,
            ),
            (
                &limits.tls_handshake_timeout,
                "limits.tls_handshake_timeout",
                &mut out.tls_handshake_timeout,
            ),
        ] {
            if let Some(d) = value.as_ref().and_then(|v| self.nonzero_duration(v, key)) {
                *slot = d;
            }
        }
        for (value, key, slot) in [
            (
                &limits.h2_keepalive_interval,
                "limits.h2_keepalive_interval",
                &mut out.h2_keepalive_interval,
            ),
            (
                &limits.idle_timeout,
                "limits.idle_timeout",
                &mut out.idle_timeout,
            ),
        ] {
            if let Some(d) = value.as_ref().and_then(|v| self.optional_duration(v, key)) {
                *slot = d;
            }
        }
        // Zero is allowed here: no grace at all on shutdown.
        if let Some(v) = &limits.drain_timeout {
            if let Some(d) = self.duration(v, "limits.drain_timeout") {
                out.drain_timeout = d;
            }
        }
        if let Some(v) = &limits.drain_delay {
            if let Some(d) = self.duration(v, "limits.drain_delay") {
                out.drain_delay = d;
            }
        }
        out
    }

    pub(super) fn cidrs(&mut self, blocks: &[Spanned<String>]) -> CidrSet {
        let mut parsed = Vec::new();
        for block in blocks {
            match block.get_ref().parse::<Cidr>() {
                Ok(cidr) => parsed.push(cidr),
                Err(e) => self.err(
                    &block.span(),
                    format!("{e}: expected an address or block like \"10.0.0.0/8\" or \"::1/128\""),
                ),
            }
        }
        CidrSet::new(parsed)
    }
}
