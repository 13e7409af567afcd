//! The access log's record: what the data path hands over when a request (or tunnel) ends,
//! and where it goes — the sink set for the process, else a `tracing` event.

use std::any::Any;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// One finished request as the access log reports it, borrowed from what the data path kept
/// of it (proxy-core's `Exchange`). Fields in the line's order; `None` fields are left out
/// of the line.
pub struct AccessRecord<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub protocol: &'static str,
    pub kind: &'static str,
    pub upstream_protocol: Option<&'static str>,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub grpc_message: Option<&'a str>,
    pub pachctl_command: Option<&'a str>,
    /// Logged as `duration_ms`, milliseconds with microsecond precision.
    pub duration: Duration,
    /// When the request ended (its line's timestamp).
    pub ended: Instant,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    /// The client's `ip:port`, formatted once per connection.
    pub client: &'a str,
    /// Where the sink may keep, for the client connection, what it made of the fields its
    /// requests usually share (client, user agent, authority, route, upstream).
    pub connection: &'a ConnectionMemo,
    pub user_agent: Option<&'a str>,
    pub authority: Option<&'a str>,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    pub request_id: Option<RequestIdText<'a>>,
}

/// The request id a line reports.
#[derive(Clone, Copy, Debug)]
pub enum RequestIdText<'a> {
    /// Made by pachgate: hex digits, nothing for a log format to escape.
    Made(&'a [u8; 32]),
    /// The client's: visible ASCII (checked), which may hold `"` or `\`.
    Sent(&'a [u8]),
}

impl<'a> RequestIdText<'a> {
    pub fn as_bytes(self) -> &'a [u8] {
        match self {
            RequestIdText::Made(digits) => digits,
            RequestIdText::Sent(bytes) => bytes,
        }
    }
}

/// Where access lines go without passing through `tracing`: a line per request costs the
/// worker a format into a buffer, not a dispatch and a visit of ~20 fields.
pub trait AccessSink: Send + Sync {
    /// Writes the record's line; `false` sends it as a `tracing` event (target
    /// `pachgate::access`) instead, e.g. for a format the sink does not write itself.
    fn record(&self, record: &AccessRecord<'_>) -> bool;
}

static ACCESS_SINK: OnceLock<Box<dyn AccessSink>> = OnceLock::new();

/// Sets the access log's sink for the process; the first one set stays. Without one, every
/// line is a `tracing` event.
pub fn set_access_sink(sink: Box<dyn AccessSink>) {
    let _ = ACCESS_SINK.set(sink);
}

/// Hands one finished request's record to the access log: the sink's own line when it
/// writes this format, else a `tracing` event (target `pachgate::access`). This is all the
/// data path does with the log.
pub fn hand_over(record: &AccessRecord<'_>) {
    if ACCESS_SINK.get().is_some_and(|sink| sink.record(record)) {
        return;
    }
    tracing::info!(
        target: "pachgate::access",
        method = record.method,
        path = record.path,
        protocol = record.protocol,
        kind = record.kind,
        upstream_protocol = record.upstream_protocol,
        status = record.status,
        grpc_status = record.grpc_status,
        grpc_message = record.grpc_message,
        pachctl_command = record.pachctl_command,
        duration_ms = record.duration.as_micros() as f64 / 1000.0,
        bytes_received = record.bytes_received,
        bytes_sent = record.bytes_sent,
        client = record.client,
        user_agent = record.user_agent,
        authority = record.authority,
        route = record.route,
        upstream = record.upstream,
        request_id = record
            .request_id
            .and_then(|id| std::str::from_utf8(id.as_bytes()).ok()),
        "access"
    );
}

/// What an [`AccessSink`] keeps per client connection: set once (by the connection's first
/// line), read by every later one. The sink decides what it holds and when it still applies
/// (e.g. a rendering of the fields a connection's requests share, with the values it was
/// made from): the log is on by default, and these fields are the same on nearly every
/// request of a connection.
#[derive(Default)]
pub struct ConnectionMemo(OnceLock<Box<dyn Any + Send + Sync>>);

impl ConnectionMemo {
    pub const fn new() -> Self {
        ConnectionMemo(OnceLock::new())
    }

    /// The memo, if one of type `T` was set.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.get()?.downcast_ref()
    }

    /// Sets the memo unless one is set already (the first one stays).
    pub fn set<T: Any + Send + Sync>(&self, memo: T) {
        let _ = self.0.set(Box::new(memo));
    }
}
