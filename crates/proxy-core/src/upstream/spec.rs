//! What an upstream is, as the config describes it: protocol, endpoints, timeouts, TLS,
//! limits, DNS refresh and health checks, with the defaults a config file leaves out.

use std::time::Duration;

use pachgate_tls::{upstream_client_config, upstream_material_digest, CertifiedKeyPem, TlsError};
use rustls::pki_types::CertificateDer;

use super::{DEFAULT_MAX_RESPONSE_HEADERS, DEFAULT_MAX_RESPONSE_HEADER_BYTES};

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
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) server_name: rustls::pki_types::ServerName<'static>,
    /// What `connector` was built from, digested: the only way to compare two connectors,
    /// which a reload does to keep an unchanged upstream. Built with it, in [`Self::new`].
    material: [u8; 32],
}

impl UpstreamTls {
    /// Trusts only `ca`, offers `alpn`, presents `client` when given, and verifies the
    /// upstream's certificate for `server_name`.
    pub fn new(
        ca: Vec<CertificateDer<'static>>,
        client: Option<CertifiedKeyPem>,
        alpn: &[&[u8]],
        server_name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Self, TlsError> {
        let material = upstream_material_digest(&ca, client.as_ref(), alpn);
        let config = upstream_client_config(ca, client, alpn)?;
        Ok(UpstreamTls {
            connector: tokio_rustls::TlsConnector::from(config),
            server_name,
            material,
        })
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.material == other.material && self.server_name == other.server_name
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// How to reach one upstream service. Two equal specs make the same upstream: a reload keeps
/// the running one (its connections, health states, DNS answers and counts).
#[derive(Debug, Clone, PartialEq)]
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
