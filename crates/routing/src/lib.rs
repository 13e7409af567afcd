//! The route table: compiles route specs into matchers and picks the first route that matches
//! a request's parts (host, path, gRPC-ness, headers, query parameter names).
//!
//! Pure by design: no I/O, no async, no allocation per match. It knows nothing about HTTP
//! libraries; callers hand it borrowed request parts through [`RequestFacts`].
//!
//! Where things are: `spec` is what a route asks (as configured) and what can be wrong with
//! it; `matcher` compiles one spec and tests one request against it; `table` keeps the
//! routes in order and picks one; `request` is what the table reads of a request; `path`
//! is the normal form of the path it matches on.

mod matcher;
mod path;
mod request;
mod spec;
mod table;

pub use path::{has_invalid_escape, normalize_path};
pub use request::{is_grpc_content_type, query_has_name, RequestFacts};
pub use spec::{HeaderSpec, MatchSpec, RouteError};
pub use table::{Route, RouteTable};

#[cfg(test)]
mod tests;
