//! What pachgate reports about its traffic, in one place:
//!
//! - `metrics`: the Prometheus registry (`/metrics`, OpenMetrics text), the handles the data
//!   path counts with (per route, per connection, per tunnel), the per-upstream and
//!   per-address series read from the upstreams at each scrape, and the panic hook and its
//!   count;
//! - the access log: the record of one finished request ([`AccessRecord`]) and where it goes
//!   ([`hand_over`]), its JSON line formatted in place and written to stdout by a thread of
//!   its own (`access_writer`), and the log setup — diagnostics to stderr, the access log's
//!   format switch — in `logging`.
//!
//! It must not route, admit or forward requests, read configuration, or do I/O on the
//! request path: proxy-core counts on its handles and hands a record over when a request
//! ends (a format into a buffer under a short lock, never a write or a wait); only the
//! writer thread and a scrape touch the outside. The binary wires it: it starts the log
//! ([`logging::init`]), sets the format from its config, and serves [`metrics::Metrics`]'s
//! text on the admin listener.

pub mod access_writer;
pub mod logging;
pub mod metrics;
mod record;

pub use record::{
    hand_over, set_access_sink, AccessRecord, AccessSink, ConnectionMemo, RequestIdText,
};
