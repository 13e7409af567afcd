//! pachgate's data path: listeners, TLS accept, the hyper server (h1 + h2 by ALPN, h2c by
//! preface), routing a request to an upstream (over pachgate's own h2 client connection
//! for h2 upstreams, the `pachgate-h2-upstream` crate), streaming bodies and trailers both ways,
//! websocket tunnels, and the errors pachgate answers in the caller's protocol. What it
//! reports goes through `pachgate-observe`: it counts on that crate's metric handles and, when
//! a request ends, builds its access record (`exchange`) and hands it over.
//!
//! Where things are: `connection` accepts and keeps connections; `pipeline` takes each
//! request through its stages (sanitize → route → admit → forward | tunnel → finish → log);
//! `rejection` writes every refusal in the caller's protocol; `snapshot` is the
//! configuration requests see; `gateway` is what they share (and the drain).
//!
//! It does not parse configuration files or generate certificates; the binary hands it
//! typed specs and a rustls `ServerConfig`.

// The metrics live in pachgate-observe; the data path names them `crate::metrics`.
use pachgate_observe::metrics;

pub mod auth;
pub mod body;
mod closing;
mod connection;
mod connection_limit;
pub mod error;
pub mod exchange;
mod file_server_refusal;
pub mod framing_guard;
pub mod gateway;
mod go_float;
pub mod headers;
mod idle;
mod pipeline;
pub mod proxy_protocol;
mod rejection;
mod request_id;
mod request_view;
pub mod route_timeouts;
mod snapshot;
pub mod stall_watch;
pub mod upstream;
pub mod websocket;
mod write_stall;

/// Entry points for the fuzz targets (`fuzz/`) into internals that read untrusted bytes.
#[doc(hidden)]
pub mod fuzzing {
    /// Whether pachd's file server would answer a request with this `Accept` in HTML
    /// (`false` for bytes that make no header value, which never reach the gate).
    pub fn accept_prefers_html(accept: &[u8]) -> bool {
        let Ok(value) = http::HeaderValue::from_bytes(accept) else {
            return false;
        };
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::ACCEPT, value);
        crate::file_server_refusal::prefers_html(&headers)
    }
}

pub use connection::ServerLimits;
pub use connection_limit::{
    default_max_connections, max_connections_for_descriptors, open_files_limit,
};
pub use gateway::Gateway;
pub use metrics::{LiveCounts, Metrics};
pub use pachgate_auth_gate::{
    PachydermAuthSettings, PachydermLine, StaticTokens, WhenAuthDisabled,
};
pub use pachgate_client_policy::{Cidr, CidrSet, RateLimiter};
pub use route_timeouts::RouteTimeouts;
pub use snapshot::{
    CarriedOver, ClientPolicy, PachydermAuthSpec, PlainMode, RouteAuth, RouteSpec, RouteSummary,
    Snapshot, UpstreamSummary,
};
pub use upstream::{set_worker_index, UpstreamProtocol, UpstreamSpec, UpstreamTls};
