//! In-process stand-ins for the services pachgate fronts, shared by `pachgate demo`, the
//! end-to-end tests and the benchmarks:
//! - a gRPC "pachd" (tonic) with `versionpb_v2.API/GetVersion`, `auth_v2.API/WhoAmI`,
//!   `auth_v2.API/Authenticate` and an echo service (`pachgate.standin.Echo`) in all four
//!   call shapes;
//! - an HTTP/1.1 "console" with a page, a header mirror and a websocket echo;
//! - opt-in, sharing one [`PachdState`] with the gRPC pachd: pachd's HTTP server
//!   ([`serve_pachd_http`]: `/pfs`, `/archive`, the `/api/` grpc-gateway, `/jsonschema/`,
//!   `/healthz`), dex and pachd's OIDC callback ([`serve_dex`], [`serve_oidc`]);
//! - opt-in, an HTTP/1.1 "S3 gateway" that verifies AWS signatures (SigV4, SigV2) and keeps
//!   objects in memory.
//!
//! Auth follows pachd 2.x as its real clients see it ([`state`] has the messages):
//! - tokens: `demo-token` (robot:demo), `demo-token-2` (robot:second), `short-lived-token`
//!   (valid 6 s from start), `expired-token` (always expired), and those `Authenticate`
//!   issues. Missing → UNAUTHENTICATED "no authentication token (try logging in)"; unknown →
//!   UNAUTHENTICATED "provided auth token is corrupted or has expired (try logging in
//!   again)"; expired → INTERNAL "token expiration is in the past"; two `authn-token` values
//!   → UNKNOWN. Auth inactive: WhoAmI is UNIMPLEMENTED "the auth service is not activated"
//!   and nothing needs a token.
//! - WhoAmI always checks the token. With [`PachdOptions::enforce_auth`] every other gRPC
//!   method outside pachd's public list needs a valid one too (the echo service included);
//!   the HTTP server always enforces, as pachd does.
//! - `/pfs` and `/archive` take the `authn-token` query parameter first, then the header;
//!   `/api/` takes the header. grpc-gateway errors are `{"code","message","details"}` with
//!   `Content-Type: application/json`; streaming methods (`ListProject`, `ListJob`) answer
//!   NDJSON `{"result": …}` lines as they are produced (request headers
//!   `standin-stream-count`, `standin-stream-interval-ms`, `standin-fail-after` shape them).
//! - Login: dex `/dex/auth?…&redirect_uri=R&state=S` → 302 `R?code=C&state=S`; the OIDC
//!   callback `/authorization-code/callback?code=C&state=S` answers 200 as pachd's does; then
//!   `Authenticate` with `oidcState = S` (no token needed) returns a pach token for
//!   `user:standin@example.com`. [`oidc`] lists where this is simpler than dex and pachd.
//! - `pachgate standins --enforce-auth --pachyderm-http` runs all of it (extra listener lines
//!   `standin-pachd-http`, `standin-dex`, `standin-oidc`).
//! - With [`PachdOptions::record_calls`] (`pachgate standins` sets it with either flag) every
//!   call is recorded (method, and the token's username or `none`/`invalid`/`expired`/
//!   `multiple`, never the token): `GET /_standin/seen` on the HTTP server lists the record,
//!   `DELETE` clears it.
//!
//! - Health, as Pachyderm's proxy checks it: pachd's `grpc.health.v1.Health/Check` (and
//!   `Watch`), pachd HTTP `/healthz`, console `/health`, dex
//!   `/dex/.well-known/openid-configuration`; each follows a [`Health`] switch that tests
//!   flip to play a pod that is not ready ([`health`]).
//! - [`dns::DnsServer`]: a DNS server on loopback (UDP and TCP) whose A/AAAA answers tests
//!   change while it runs, standing in for the cluster DNS of a headless Service.
//!
//! They exist to be real peers on real sockets; they are not part of the proxy.

pub mod console;
pub mod dns;
pub mod health;
mod http_util;
pub mod messages;
pub mod oidc;
pub mod pachd;
pub mod pachd_http;
pub mod s3;
pub mod state;
mod zip;

pub use console::{serve_console, serve_console_with_health};
pub use health::Health;
pub use oidc::{serve_dex, serve_oidc};
pub use pachd::{serve_pachd, serve_pachd_shared, PachdOptions};
pub use pachd_http::serve_pachd_http;
pub use s3::serve_s3;
pub use state::PachdState;

/// The pachgate config section (upstreams and routes) that puts the stand-ins behind
/// pachgate: gRPC to the stand-in pachd over h2c, everything else to the console over
/// HTTP/1.1. `upstream_extra` is added to both upstream tables (timeouts, for example).
pub fn routes_toml(pachd: &str, console: &str, upstream_extra: &str) -> String {
    format!(
        r#"
[upstreams.pachd]
endpoints = ["{pachd}"]
protocol = "h2c"
{upstream_extra}

[upstreams.console]
endpoints = ["{console}"]
protocol = "http1"
{upstream_extra}

[[routes]]
name = "pachd-grpc"
match = {{ grpc = true }}
upstream = "pachd"

[[routes]]
name = "console"
match = {{ path_prefix = "/" }}
upstream = "console"
"#
    )
}
