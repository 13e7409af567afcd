//! The file as written: the serde structs TOML is parsed into (unknown keys rejected), each
//! value kept with its span so validation can point at it.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::keywords::{
    AccessLog, AuthKind, ForwardPath, HttpMode, OnAuthDisabled, PachydermVersion, Protocol,
    TlsVersion,
};

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
    #[serde(default)]
    pub dns: Dns,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dns {
    /// DNS servers (`ip:port`) for upstream names; absent: the system's resolv.conf.
    pub servers: Option<Spanned<Vec<Spanned<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Log {
    /// "json" (default), "text" or "off": one line per request on stdout.
    pub access: Option<AccessLog>,
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
    pub when_auth_disabled: Option<OnAuthDisabled>,
    pub public_methods: Option<Vec<Spanned<String>>>,
    pub who_am_i_method: Option<Spanned<String>>,
    /// "2" (default) or "1": which Pachyderm line's public methods apply.
    pub version: Option<PachydermVersion>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    pub https: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    pub http_mode: Option<HttpMode>,
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
    pub min_version: Option<TlsVersion>,
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
    pub protocol: Option<Protocol>,
    pub connect_timeout: Option<Spanned<String>>,
    pub response_timeout: Option<Spanned<String>>,
    pub h2_keepalive_interval: Option<Spanned<String>>,
    pub h2_keepalive_timeout: Option<Spanned<String>>,
    /// h2 upstreams: limits on one decoded response header block.
    pub h2_max_response_headers: Option<Spanned<usize>>,
    pub h2_max_response_header_bytes: Option<Spanned<usize>>,
    /// How often endpoint names are looked up again (default 5s).
    pub dns_refresh: Option<Spanned<String>>,
    /// Requests awaiting their response head past which new ones are refused.
    pub max_pending_requests: Option<Spanned<usize>>,
    /// Active health checks of each address.
    pub health_check: Option<Spanned<HealthCheckConfig>>,
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
pub struct HealthCheckConfig {
    /// HTTP upstreams: the path to GET; 2xx is healthy.
    pub path: Option<Spanned<String>>,
    /// h2/h2c upstreams: the service name asked of grpc.health.v1.Health/Check ("" = the server).
    pub service: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub healthy_threshold: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Spanned<Match>,
    pub upstream: Spanned<String>,
    pub auth: Option<Spanned<AuthKind>>,
    pub allow_cidrs: Option<Vec<Spanned<String>>>,
    /// "normalized" (default) or "as-sent": the request target the upstream receives.
    pub forward_path: Option<Spanned<ForwardPath>>,
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
    pub drain_delay: Option<Spanned<String>>,
    pub h2_stream_window: Option<Spanned<u32>>,
    pub h2_connection_window: Option<Spanned<u32>>,
    pub reject_underscore_headers: Option<Spanned<bool>>,
    /// Client connections open at once; 0: no cap. Signed, so a negative value gets our
    /// own message rather than serde's.
    pub max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runtime {
    pub worker_threads: Option<Spanned<usize>>,
}
