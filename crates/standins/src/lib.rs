//! In-process stand-ins for the services pachgate fronts, shared by `pachgate demo`, the
//! end-to-end tests and the benchmarks:
//! - a gRPC "pachd" (tonic) with `versionpb_v2.API/GetVersion`, `auth_v2.API/WhoAmI` and an
//!   echo service (`pachgate.standin.Echo`) in all four call shapes;
//! - an HTTP/1.1 "console" with a page, a header mirror and a websocket echo.
//!
//! They exist to be real peers on real sockets; they are not part of the proxy.

pub mod console;
pub mod messages;
pub mod pachd;

pub use console::serve_console;
pub use pachd::{serve_pachd, PachdOptions};
