//! The configuration file: TOML parsed into typed structs (unknown keys rejected), then
//! validated as a whole. Every error names `file:line:column`, what is wrong and what is
//! expected. A valid file becomes the runtime pieces the crates take.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use pachgate_proxy_core::upstream::{
    DEFAULT_MAX_RESPONSE_HEADERS, DEFAULT_MAX_RESPONSE_HEADER_BYTES, MAX_RESPONSE_HEADERS_CAP,
};
use pachgate_proxy_core::{
    Cidr, CidrSet, ClientPolicy, PachydermAuthSettings, PachydermAuthSpec, PachydermLine,
    PlainMode, RateLimiter, RouteAuth, RouteSpec, RouteTimeouts, ServerLimits, Snapshot,
    StaticTokens, UpstreamProtocol, UpstreamSpec, UpstreamTls, WhenAuthDisabled,
};
use pachgate_routing::{HeaderSpec, MatchSpec, RouteTable};
use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Lets a plaintext listener on a non-loopback address start (see DESIGN: secure by default).
    #[serde(default)]
    pub allow_insecure: bool,
    /// Client addresses allowed to connect at all (checked before TLS); empty: everyone.
    pub allow_cidrs: Option<Vec<Spanned<String>>>,
    /// Load balancers / proxies whose PROXY headers and X-Forwarded-For are believed.
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
    pub listen: Spanned<Listen>,
    pub tls: Option<Spanned<Tls>>,
    #[serde(default)]
    pub upstreams: BTreeMap<Spanned<String>, Spanned<Upstream>>,
    #[serde(default)]
    pub routes: Vec<Spanned<Route>>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub runtime: Runtime,
    #[serde(default)]
    pub auth: Auth,
    #[serde(default)]
    pub rate_limits: RateLimits,
    #[serde(default)]
    pub log: Log,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// "json" (default), "text" or "off": one line per request on stdout.
    pub access: Option<Spanned<String>>,
}

/// How access-log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Json,
    Text,
    Off,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    pub requests_per_second: Option<Spanned<u32>>,
    pub request_burst: Option<Spanned<u32>>,
    pub failed_auth_per_minute: Option<Spanned<u32>>,
    pub failed_auth_burst: Option<Spanned<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    pub pachyderm: Option<Spanned<PachydermAuth>>,
    pub token: Option<Spanned<TokenAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenAuth {
    /// File of SHA-256 hashes of the accepted bearer tokens.
    pub hashes_file: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PachydermAuth {
    pub upstream: Spanned<String>,
    pub cache_ttl: Option<Spanned<String>>,
    pub negative_cache_ttl: Option<Spanned<String>>,
    pub cache_capacity: Option<Spanned<usize>>,
    pub when_auth_disabled: Option<Spanned<String>>,
    pub public_methods: Option<Vec<Spanned<String>>>,
    pub who_am_i_method: Option<Spanned<String>>,
    /// "2" (default) or "1": which Pachyderm line's public methods apply.
    pub version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub https: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    pub http_mode: Option<Spanned<String>>,
    pub admin: Option<Spanned<String>>,
    /// Expect a PROXY protocol v1/v2 header at the start of every connection.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Send `Strict-Transport-Security` on TLS responses.
    #[serde(default)]
    pub hsts: bool,
    /// HSTS `max-age` (a duration; default one year).
    pub hsts_max_age: Option<Spanned<String>>,
    /// The https port clients use (a Service's 443 or NodePort), put in redirects.
    pub public_https_port: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
    #[serde(default)]
    pub self_signed: bool,
    pub self_signed_dir: Option<Spanned<String>>,
    pub hosts: Option<Spanned<Vec<String>>>,
    /// Certificates chosen by SNI.
    pub sni: Option<Vec<Spanned<SniCert>>>,
    /// PEM CA certificates: clients must present a certificate signed by one of them.
    pub client_ca: Option<Spanned<String>>,
    /// "1.2" (default) or "1.3".
    pub min_version: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCert {
    pub hosts: Spanned<Vec<String>>,
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub protocol: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub h2_keepalive_interval: Option<Spanned<String>>,
    pub h2_keepalive_timeout: Option<Spanned<String>>,
    /// h2 upstreams: limits on one decoded response header block.
    pub h2_max_response_headers: Option<Spanned<usize>>,
    pub h2_max_response_header_bytes: Option<Spanned<usize>>,
    /// TLS upstreams: PEM CA certificate(s) to trust.
    pub ca: Option<Spanned<String>>,
    /// TLS upstreams: the name to verify (default: the first endpoint's host).
    pub server_name: Option<Spanned<String>>,
    /// TLS upstreams: a client certificate and key to present.
    pub client_cert: Option<Spanned<String>>,
    pub client_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Spanned<Match>,
    pub upstream: Spanned<String>,
    pub auth: Option<Spanned<String>>,
    pub allow_cidrs: Option<Vec<Spanned<String>>>,
    /// "normalized" (default) or "as-sent": the request target the upstream receives.
    pub forward_path: Option<Spanned<String>>,
    /// The whole exchange (duration or "off").
    pub timeout: Option<Spanned<String>>,
    /// No body bytes either way for this long (duration or "off").
    pub idle_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    pub grpc: Option<bool>,
    pub header: Option<HeaderMatch>,
    /// Query parameter names that must all be present.
    pub query: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub h2_max_concurrent_streams: Option<Spanned<u32>>,
    pub max_header_list_size: Option<Spanned<u32>>,
    pub h2_max_pending_accept_reset_streams: Option<Spanned<u32>>,
    pub h2_max_local_error_reset_streams: Option<Spanned<u32>>,
    pub h2_keepalive_interval: Option<Spanned<String>>,
    pub h2_keepalive_timeout: Option<Spanned<String>>,
    pub h1_header_read_timeout: Option<Spanned<String>>,
    pub tls_handshake_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub drain_timeout: Option<Spanned<String>>,
    pub h2_stream_window: Option<Spanned<u32>>,
    pub h2_connection_window: Option<Spanned<u32>>,
    pub reject_underscore_headers: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub worker_threads: Option<Spanned<usize>>,
}

/// One problem in a config file, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.message
        )
    }
}

/// Everything `serve` needs, built from a valid file.
pub struct RuntimeConfig {
    pub https: Option<SocketAddr>,
    pub http: Option<(SocketAddr, PlainMode)>,
    pub admin: Option<SocketAddr>,
    pub tls: Option<ListenerTlsSource>,
    pub snapshot: Snapshot,
    pub limits: ServerLimits,
    pub worker_threads: Option<usize>,
    pub access_log: AccessLog,
    pub route_count: usize,
    pub upstream_count: usize,
}

/// Where the listener's certificate comes from, with paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { dir: PathBuf, hosts: Vec<String> },
}

impl TlsSource {
    /// The certificate and key files (generating them first for `self_signed`).
    fn paths(&self) -> Result<pachgate_tls::CertPaths, pachgate_tls::TlsError> {
        Ok(match self {
            TlsSource::Files { cert, key } => pachgate_tls::CertPaths {
                cert: cert.clone(),
                key: key.clone(),
            },
            TlsSource::SelfSigned { dir, hosts } => {
                let paths = pachgate_tls::ensure_self_signed(dir, hosts)?;
                pachgate_tls::CertPaths {
                    cert: paths.cert,
                    key: paths.key,
                }
            }
        })
    }
}

/// The TLS listener's whole setup, with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsSource {
    pub default: TlsSource,
    /// (hosts, cert, key) chosen by SNI.
    pub sni: Vec<(Vec<String>, PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    pub min_version: pachgate_tls::MinVersion,
}

impl ListenerTlsSource {
    /// Builds the listener's server config, whose certificates can be reloaded later.
    pub fn server_config(&self) -> Result<pachgate_tls::ListenerTlsHandle, pachgate_tls::TlsError> {
        let sni = self
            .sni
            .iter()
            .map(|(hosts, cert, key)| {
                (
                    hosts.clone(),
                    pachgate_tls::CertPaths {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                )
            })
            .collect();
        pachgate_tls::listener_config(pachgate_tls::ListenerTlsFiles {
            default: self.default.paths()?,
            sni,
            client_ca: self.client_ca.clone(),
            min_version: self.min_version,
        })
    }
}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            message: format!("cannot read the config file: {e}"),
        }]
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(path, &text, base)
}

/// Parses and validates config text; relative paths inside resolve against `base`.
pub fn parse(file: &Path, text: &str, base: &Path) -> Result<RuntimeConfig, Vec<ConfigError>> {
    let locate = Locator { file, text };
    let config: FileConfig = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        vec![locate.error(&span, e.message().trim_end().to_string())]
    })?;
    Validator {
        locate,
        base,
        errors: Vec::new(),
    }
    .validate(config)
}

struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: &Range<usize>, message: String) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        }
    }
}

struct Validator<'a> {
    locate: Locator<'a>,
    base: &'a Path,
    errors: Vec<ConfigError>,
}

const DEFAULT_SELF_SIGNED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl Validator<'_> {
    fn err(&mut self, span: &Range<usize>, message: impl Into<String>) {
        let error = self.locate.error(span, message.into());
        self.errors.push(error);
    }

    fn validate(mut self, config: FileConfig) -> Result<RuntimeConfig, Vec<ConfigError>> {
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
        let http_mode = match &listen.http_mode {
            None => "redirect",
            Some(mode) => {
                match mode.get_ref().as_str() {
                    "redirect" => "redirect",
                    "serve" => "serve",
                    other => {
                        self.err(
                        &mode.span(),
                        format!("http_mode {other:?} is not known: expected \"redirect\" or \"serve\""),
                    );
                        "serve"
                    }
                }
            }
        };
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
                if http_mode == "redirect" {
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
        let mut upstream_specs = Vec::new();
        for (name, upstream) in &config.upstreams {
            if let Some(spec) = self.upstream(name, upstream) {
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

        let access_log = match config
            .log
            .access
            .as_ref()
            .map(|v| (v.get_ref().as_str(), v))
        {
            None | Some(("json", _)) => AccessLog::Json,
            Some(("text", _)) => AccessLog::Text,
            Some(("off", _)) => AccessLog::Off,
            Some((other, value)) => {
                self.err(
                    &value.span(),
                    format!("log.access = {other:?} is not known: expected \"json\", \"text\" or \"off\""),
                );
                AccessLog::Off
            }
        };

        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let route_count = route_specs.len();
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
        .map_err(|message| vec![self.locate.error(&(0..0), message)])?
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
        })
    }

    fn address(&mut self, value: &Spanned<String>, key: &str) -> Option<SocketAddr> {
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

    fn path(&self, value: &str) -> PathBuf {
        let path = Path::new(value);
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        }
    }

    fn tls(
        &mut self,
        mut tls: Option<Spanned<Tls>>,
        https: Option<&Spanned<String>>,
    ) -> Option<ListenerTlsSource> {
        let mut sni = Vec::new();
        let mut client_ca = None;
        let mut min_version = pachgate_tls::MinVersion::Tls12;
        if let Some(tls) = tls.as_mut() {
            let tls = tls.get_mut();
            for entry in tls.sni.take().unwrap_or_default() {
                let entry = entry.into_inner();
                if entry.hosts.get_ref().is_empty() {
                    self.err(
                        &entry.hosts.span(),
                        "tls.sni.hosts is empty: name at least one host",
                    );
                }
                for host in entry.hosts.get_ref() {
                    let name = host.strip_prefix("*.").unwrap_or(host);
                    let valid = !name.is_empty()
                        && !name.contains('*')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !valid {
                        self.err(
                            &entry.hosts.span(),
                            format!("tls.sni host {host:?}: expected a DNS name or `*.suffix`"),
                        );
                    }
                }
                let cert = self.path(entry.cert.get_ref());
                let key = self.path(entry.key.get_ref());
                if let Err(e) = pachgate_tls::check_pair(&cert, &key) {
                    self.err(&entry.cert.span(), format!("tls.sni cert/key: {e}"));
                }
                sni.push((entry.hosts.get_ref().clone(), cert, key));
            }
            if let Some(ca) = tls.client_ca.take() {
                let path = self.path(ca.get_ref());
                match pachgate_tls::load_ca_certificates(&path) {
                    Ok(_) => client_ca = Some(path),
                    Err(e) => self.err(&ca.span(), format!("tls.client_ca: {e}")),
                }
            }
            if let Some(version) = tls.min_version.take() {
                min_version = match version.get_ref().as_str() {
                    "1.2" => pachgate_tls::MinVersion::Tls12,
                    "1.3" => pachgate_tls::MinVersion::Tls13,
                    other => {
                        self.err(
                            &version.span(),
                            format!("tls.min_version {other:?}: expected \"1.2\" or \"1.3\""),
                        );
                        pachgate_tls::MinVersion::Tls12
                    }
                };
            }
        }
        let default = self.tls_default(tls, https)?;
        Some(ListenerTlsSource {
            default,
            sni,
            client_ca,
            min_version,
        })
    }

    fn tls_default(
        &mut self,
        tls: Option<Spanned<Tls>>,
        https: Option<&Spanned<String>>,
    ) -> Option<TlsSource> {
        let Some(tls) = tls else {
            if let Some(https) = https {
                self.err(
                    &https.span(),
                    "listen.https needs a [tls] section: `cert` and `key` files, or `self_signed = true`",
                );
            }
            return None;
        };
        let span = tls.span();
        let tls = tls.into_inner();
        if tls.self_signed {
            if tls.cert.is_some() || tls.key.is_some() {
                self.err(
                    &span,
                    "[tls] sets both `self_signed = true` and `cert`/`key`: choose one",
                );
                return None;
            }
            let dir = tls
                .self_signed_dir
                .as_ref()
                .map(|d| self.path(d.get_ref()))
                .unwrap_or_else(|| self.path("pachgate-certs"));
            let hosts = match &tls.hosts {
                Some(hosts) if hosts.get_ref().is_empty() => {
                    self.err(&hosts.span(), "tls.hosts is empty: name at least one host");
                    return None;
                }
                Some(hosts) => hosts.get_ref().clone(),
                None => DEFAULT_SELF_SIGNED_HOSTS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
            };
            return Some(TlsSource::SelfSigned { dir, hosts });
        }
        if let Some(hosts) = &tls.hosts {
            self.err(
                &hosts.span(),
                "tls.hosts only applies with self_signed = true (a loaded certificate carries its own names)",
            );
        }
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            self.err(
                &span,
                "[tls] needs `cert` and `key` (PEM files), or `self_signed = true`",
            );
            return None;
        };
        let cert_path = self.path(cert.get_ref());
        let key_path = self.path(key.get_ref());
        let mut ok = true;
        for (value, path, what) in [(cert, &cert_path, "tls.cert"), (key, &key_path, "tls.key")] {
            if !path.is_file() {
                self.err(
                    &value.span(),
                    format!("{what}: file {} does not exist", path.display()),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        // Load now, so a bad PEM or a key that does not match is reported here, not at serve.
        if let Err(e) = pachgate_tls::check_pair(&cert_path, &key_path) {
            self.err(&cert.span(), format!("tls.cert/tls.key: {e}"));
            return None;
        }
        Some(TlsSource::Files {
            cert: cert_path,
            key: key_path,
        })
    }

    fn duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
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
    fn nonzero_duration(&mut self, value: &Spanned<String>, key: &str) -> Option<Duration> {
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

    /// A timeout or interval that may also be "off".
    fn optional_duration(
        &mut self,
        value: &Spanned<String>,
        key: &str,
    ) -> Option<Option<Duration>> {
        if value.get_ref() == "off" {
            return Some(None);
        }
        self.nonzero_duration(value, key).map(Some)
    }

    fn limits(&mut self, limits: &Limits) -> ServerLimits {
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
        out
    }

    fn upstream(
        &mut self,
        name: &Spanned<String>,
        upstream: &Spanned<Upstream>,
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
        let protocol = match &u.protocol {
            None => UpstreamProtocol::H2c,
            Some(p) => match p.get_ref().as_str() {
                "h2c" => UpstreamProtocol::H2c,
                "http1" => UpstreamProtocol::Http1,
                "h2" => UpstreamProtocol::H2,
                "http1-tls" => UpstreamProtocol::Http1Tls,
                other => {
                    self.err(
                        &p.span(),
                        format!("protocol {other:?} is not known: expected \"h2c\", \"http1\", \"h2\" or \"http1-tls\""),
                    );
                    UpstreamProtocol::H2c
                }
            },
        };
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
        let h2_keepalive_interval = u
            .h2_keepalive_interval
            .as_ref()
            .and_then(|v| self.optional_duration(v, "h2_keepalive_interval"))
            .unwrap_or(Some(Duration::from_secs(30)));
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
        })
    }

    /// TLS settings of an upstream with `protocol = "h2"`.
    fn upstream_tls(
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
        match pachgate_tls::upstream_client_config(ca_certs, client, &[alpn]) {
            Ok(config) => Some(UpstreamTls {
                connector: tokio_rustls::TlsConnector::from(config),
                server_name,
            }),
            Err(e) => {
                self.err(&ca.span(), format!("upstream TLS: {e}"));
                None
            }
        }
    }

    fn cidrs(&mut self, blocks: &[Spanned<String>]) -> CidrSet {
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

    fn pachyderm_auth(
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
                let protocol = u.get_ref().protocol.as_ref().map(|p| p.get_ref().as_str());
                if !matches!(protocol, None | Some("h2c") | Some("h2")) {
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
            settings.when_auth_disabled = match v.get_ref().as_str() {
                "deny" => WhenAuthDisabled::Deny,
                "allow" => WhenAuthDisabled::Allow,
                other => {
                    self.err(
                        &v.span(),
                        format!("when_auth_disabled {other:?} is not known: expected \"deny\" or \"allow\""),
                    );
                    WhenAuthDisabled::Deny
                }
            };
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
            Some(v) => match v.get_ref().as_str() {
                "2" => PachydermLine::V2,
                "1" => PachydermLine::V1,
                other => {
                    self.err(
                        &v.span(),
                        format!("auth.pachyderm.version {other:?} is not known: expected \"2\" (Pachyderm 2.x) or \"1\" (1.x)"),
                    );
                    PachydermLine::V2
                }
            },
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
                if !pachgate_auth_gate::is_well_formed_grpc_path(m.get_ref()) {
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

    fn routes(
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
                Some(auth) => match auth.get_ref().as_str() {
                    "none" => RouteAuth::None,
                    "pachyderm" => {
                        if pachyderm.is_none() {
                            self.err(
                                &auth.span(),
                                "auth = \"pachyderm\" needs an [auth.pachyderm] section with `upstream` (pachd's gRPC port, where WhoAmI is asked)",
                            );
                        }
                        RouteAuth::Pachyderm
                    }
                    "token" => {
                        if !has_token_auth {
                            self.err(
                                &auth.span(),
                                "auth = \"token\" needs an [auth.token] section with `hashes_file` (SHA-256 hashes of the accepted tokens)",
                            );
                        }
                        RouteAuth::Token
                    }
                    other => {
                        self.err(
                            &auth.span(),
                            format!("auth {other:?} is not known: expected \"none\", \"pachyderm\" or \"token\""),
                        );
                        RouteAuth::None
                    }
                },
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
                Some(mode) => match mode.get_ref().as_str() {
                    "normalized" => false,
                    "as-sent" => {
                        // The gate would judge the normal form while pachd serves the path
                        // as sent: `/pfs/../x` is not what the gate allowed.
                        if auth != RouteAuth::None {
                            self.err(
                                &mode.span(),
                                format!("route {name:?}: forward_path = \"as-sent\" needs auth = \"none\": the gate checks the normalised path, so the upstream must get that one"),
                            );
                        }
                        true
                    }
                    other => {
                        self.err(
                            &mode.span(),
                            format!("forward_path {other:?} is not known: expected \"normalized\" or \"as-sent\""),
                        );
                        false
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `"500ms"`, `"5s"`, `"2m"`, `"1h"`, `"7d"` → Duration.
pub fn parse_duration(text: &str) -> Option<Duration> {
    // Longer than any timer needs, and far from where `Instant + Duration` overflows (a
    // panic on every request that starts such a timer).
    const LONGEST: Duration = Duration::from_secs(100 * 365 * 86_400);
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let duration = match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        "d" => n.checked_mul(86_400).map(Duration::from_secs),
        _ => None,
    }?;
    (duration <= LONGEST).then_some(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_past_a_century_are_refused() {
        assert_eq!(
            parse_duration("36500d"),
            Some(Duration::from_secs(36_500 * 86_400))
        );
        assert_eq!(parse_duration("36501d"), None);
        assert_eq!(parse_duration("18446744073709551615s"), None);
        assert_eq!(parse_duration("18446744073709551615ms"), None);
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(Path::new("t.toml"), text, Path::new(".")) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
        }
    }

    const VALID: &str = r#"
[listen]
http = "127.0.0.1:8080"
http_mode = "serve"

[upstreams.pachd]
endpoints = ["127.0.0.1:1650"]
protocol = "h2c"

[[routes]]
name = "grpc"
match = { grpc = true }
upstream = "pachd"
"#;

    #[test]
    fn valid_config_parses() {
        let config = parse(Path::new("t.toml"), VALID, Path::new(".")).unwrap();
        assert_eq!(config.route_count, 1);
        assert_eq!(config.upstream_count, 1);
    }

    #[test]
    fn s3_route_keys_parse() {
        let text = VALID.replace(
            "match = { grpc = true }\nupstream = \"pachd\"\n",
            "match = { query = [\"X-Amz-Signature\"] }\nupstream = \"pachd\"\nauth = \"none\"\nforward_path = \"as-sent\"\n",
        );
        assert!(text.contains("as-sent"));
        let config = parse(Path::new("t.toml"), &text, Path::new(".")).unwrap();
        assert_eq!(config.route_count, 1);
        let normalized = VALID.replace(
            "upstream = \"pachd\"\n",
            "upstream = \"pachd\"\nauth = \"token\"\nforward_path = \"normalized\"\n",
        );
        // Only the missing [auth.token] section is wrong there.
        let found = errors(&normalized);
        assert!(
            found.len() == 1 && found[0].contains("[auth.token]"),
            "{found:#?}"
        );
    }

    #[test]
    fn bad_configs_are_located() {
        // (config text, expected "line:column", a phrase from the message)
        let cases: &[(&str, &str, &str)] = &[
            (
                "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\nbogus = 1\n",
                "t.toml:4:1",
                "unknown field `bogus`",
            ),
            (
                "[listen]\nhttp = \"localhost\"\nhttp_mode = \"serve\"\n",
                "t.toml:2:8",
                "not a socket address",
            ),
            (
                &VALID.replace("upstream = \"pachd\"", "upstream = \"nope\""),
                "t.toml:13:12",
                "upstream \"nope\" is not defined",
            ),
            (
                &format!(
                    "{VALID}\n[[routes]]\nname = \"grpc\"\nmatch = {{}}\nupstream = \"pachd\"\n"
                ),
                "t.toml:16:8",
                "used twice",
            ),
            (
                &VALID.replace("\"h2c\"", "\"spdy\""),
                "t.toml:8:12",
                "protocol \"spdy\" is not known",
            ),
            (
                &VALID.replace("[\"127.0.0.1:1650\"]", "[\"pachd\"]"),
                "t.toml:7:14",
                "not host:port",
            ),
            (
                &VALID.replace("{ grpc = true }", "{ path_prefix = \"dex\" }"),
                "t.toml:12:9",
                "must start with `/`",
            ),
            (
                "[listen]\nhttps = \"127.0.0.1:8443\"\n",
                "t.toml:2:9",
                "needs a [tls] section",
            ),
            (
                "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
                "t.toml:4:8",
                "does not exist",
            ),
            (
                "[listen]\nhttp = \"0.0.0.0:8080\"\nhttp_mode = \"serve\"\n",
                "t.toml:2:8",
                "non-loopback",
            ),
            (
                &VALID.replace("protocol = \"h2c\"", "protocol = \"h2c\"\nresponse_timeout = \"soon\""),
                "t.toml:9:20",
                "not a duration",
            ),
            (
                &VALID.replace(
                    "upstream = \"pachd\"\n",
                    "upstream = \"pachd\"\nauth = \"token\"\nforward_path = \"as-sent\"\n",
                ),
                "t.toml:15:16",
                "forward_path = \"as-sent\" needs auth = \"none\"",
            ),
            (
                &VALID.replace(
                    "upstream = \"pachd\"\n",
                    "upstream = \"pachd\"\nforward_path = \"raw\"\n",
                ),
                "t.toml:14:16",
                "forward_path \"raw\" is not known",
            ),
            (
                &VALID.replace("{ grpc = true }", "{ query = [\"X-Amz-Signature=\"] }"),
                "t.toml:12:9",
                "query parameter name \"X-Amz-Signature=\" is not valid",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\npublic_https_port = 70000\n",
                "t.toml:4:21",
                "expected a port from 1 to 65535",
            ),
            (
                "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\nhsts_max_age = \"7d\"\n",
                "t.toml:4:16",
                "add hsts = true",
            ),
            (
                &VALID.replace("upstream = \"pachd\"\n", "upstream = \"pachd\"\nidle_timeout = \"0s\"\n"),
                "t.toml:14:16",
                "must be longer than zero",
            ),
            (
                &format!("{VALID}timeout = \"soon\"\n"),
                "t.toml:14:11",
                "timeout = \"soon\" is not a duration",
            ),
            ("[listen\n", "t.toml:1:8", "expected"),
        ];
        for (text, location, phrase) in cases {
            let found = errors(text);
            assert!(
                found
                    .iter()
                    .any(|e| e.starts_with(location) && e.contains(phrase)),
                "want {location} … {phrase}; got {found:#?}\nconfig:\n{text}"
            );
        }
    }

    #[test]
    fn redirects_go_to_the_public_https_port() {
        let redirect_port = |listen: &str| {
            let text = format!("[listen]\n{listen}\nhttp = \"127.0.0.1:8080\"\n[tls]\nself_signed = true\nself_signed_dir = \"certs\"\n");
            let dir = tempfile::tempdir().unwrap();
            match parse(Path::new("t.toml"), &text, dir.path()).unwrap().http {
                Some((_, PlainMode::Redirect { https_port })) => https_port,
                other => panic!("{listen}: {other:?}"),
            }
        };
        // Non-loopback: what a Service exposes, 443, unless told otherwise.
        assert_eq!(redirect_port("https = \"0.0.0.0:8443\""), 443);
        assert_eq!(
            redirect_port("https = \"0.0.0.0:8443\"\npublic_https_port = 30443"),
            30443
        );
        // Loopback (pachgate local, tests): the listener itself.
        assert_eq!(redirect_port("https = \"127.0.0.1:8443\""), 8443);
        assert_eq!(
            redirect_port("https = \"127.0.0.1:8443\"\npublic_https_port = 443"),
            443
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 days"), None);
    }
}
