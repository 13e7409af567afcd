//! In-process stand-ins for the services pachgate fronts, shared by `pachgate demo`, the
//! end-to-end tests and the benchmarks:
//! - a gRPC "pachd" (tonic) with `versionpb_v2.API/GetVersion`, `auth_v2.API/WhoAmI`,
//!   `auth_v2.API/Authenticate` and an echo service (`pachgate.standin.Echo`) in all four
//!   call shapes;
//! - an HTTP/1.1 "console" with a page, a header mirror and a websocket echo;
//! They exist to be real peers on real sockets; they are not part of the proxy.

pub mod console;
pub mod messages;
pub mod pachd;
pub mod state;

pub use console::serve_console;
pub use pachd::{serve_pachd, serve_pachd_shared, PachdOptions};
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
