//! What pachgate reports about its traffic, in one place: the access log's record type and
//! where a record goes.
//!
//! It must not route, admit or forward requests, and it does no I/O on the request path: the
//! data path (proxy-core) builds a record when a request ends and hands it over
//! ([`hand_over`]), and that is all.

pub mod access_writer;
pub mod logging;
pub mod metrics;
mod record;

pub use record::{hand_over, set_access_sink, AccessRecord, AccessSink, ConnectionMemo};
