//! One request's record from head to last byte: what the metrics and the access log say about
//! it. It rides in the response body ([`ObservedBody`]) — or in a websocket tunnel's task —
//! and is booked exactly once, when that ends or is dropped (a client that resets a stream
//! still gets a line).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, USER_AGENT};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, Method, Request, Version};
use http_body::{Body, Frame, SizeHint};

use pachgate_observe::{AccessRecord, ConnectionMemo};

use crate::body::{BodyError, ProxyBody};
use crate::idle::InFlight;
use crate::metrics::{ByteTally, FinishedRequest, Metrics, RouteMetrics};
use crate::request_id::{RequestId, X_REQUEST_ID};

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
/// pachctl sends its command line as this gRPC metadata; Pachyderm's proxy logs it too.
static PACHCTL_COMMAND: HeaderName = HeaderName::from_static("command");

/// Longest grpc-message kept for the log; the rest is cut at a character boundary.
const GRPC_MESSAGE_LOG_LIMIT: usize = 256;
/// Longest pachctl command line kept for the log.
const PACHCTL_COMMAND_LOG_LIMIT: usize = 256;
/// Sent bytes are booked to the route's counter in chunks of this size while a stream runs.
const SENT_BOOKING_CHUNK: u64 = 1 << 20;
/// Received-byte counters a worker thread keeps for its next logged requests.
const SPARE_COUNTERS_KEPT: usize = 64;

thread_local! {
    /// Counters of finished logged requests whose bodies let go of them: reused, so that a
    /// logged request does not allocate and free one of its own.
    static SPARE_COUNTERS: RefCell<Vec<Arc<AtomicU64>>> = const { RefCell::new(Vec::new()) };
}

/// A zeroed received-byte counter, a spare one when this thread has it.
fn take_counter() -> Arc<AtomicU64> {
    SPARE_COUNTERS
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// Keeps a finished request's counter for the next one, unless a body still holds it (a
/// request body still being sent when its answer ended).
fn keep_counter(counter: Arc<AtomicU64>) {
    if Arc::strong_count(&counter) != 1 {
        return;
    }
    counter.store(0, Ordering::Relaxed);
    let _ = SPARE_COUNTERS.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_COUNTERS_KEPT {
            spare.push(counter);
        }
    });
}

/// What only the access log needs; not built when the log is off. Held as the request's
/// own (reference-counted) `http` values, not copied into `String`s: the log is on by
/// default and every copy is paid per request.
struct AccessFields {
    method: Method,
    /// Logged as its path only: queries can carry credentials (OIDC `code=`).
    path: Option<PathAndQuery>,
    version: Version,
    user_agent: Option<HeaderValue>,
    authority: Option<Authority>,
    request_id: Option<RequestId>,
    /// The request arrived with an `x-request-id` (seen in the same pass as the user agent,
    /// so that a request without one, the usual case, is not scanned for it again).
    request_id_sent: bool,
    upstream_protocol: Option<&'static str>,
    upstream: Option<Arc<str>>,
    grpc_message: Option<String>,
    /// pachctl's `command` metadata: control characters dropped, cut at 256 bytes.
    pachctl_command: Option<String>,
}

pub struct Exchange {
    metrics: Arc<Metrics>,
    started: Instant,
    protocol: &'static str,
    route: Option<Arc<RouteMetrics>>,
    status: u16,
    grpc_status: Option<u16>,
    /// Received bytes known at the end (a tunnel's), plus the live count of a logged request.
    received: u64,
    received_live: Option<Arc<AtomicU64>>,
    sent: u64,
    sent_booked: u64,
    log: Option<AccessFields>,
    /// Keeps the client connection from counting as idle; ended when this is booked.
    in_flight: Option<InFlight>,
}

impl Exchange {
    pub(crate) fn start<B>(
        metrics: &Arc<Metrics>,
        request: &Request<B>,
        grpc: bool,
        access_log: bool,
        in_flight: InFlight,
    ) -> Box<Self> {
        metrics.stream_started();
        let log = access_log.then(|| {
            // One pass over the headers for all three (a lookup of a name outside the
            // standard set hashes it byte by byte; a gRPC request carries a handful of
            // headers).
            let (mut user_agent, mut command, mut request_id_sent) = (None, None, false);
            for (name, value) in request.headers() {
                if *name == USER_AGENT {
                    user_agent = user_agent.or(Some(value));
                } else if *name == PACHCTL_COMMAND {
                    command = command.or(Some(value));
                } else if *name == X_REQUEST_ID {
                    request_id_sent = true;
                }
            }
            AccessFields {
                method: request.method().clone(),
                path: request.uri().path_and_query().cloned(),
                version: request.version(),
                user_agent: user_agent.cloned(),
                authority: None,
                request_id: None,
                request_id_sent,
                upstream_protocol: None,
                upstream: None,
                grpc_message: None,
                pachctl_command: command
                    .map(|value| loggable_text(value.as_bytes(), PACHCTL_COMMAND_LOG_LIMIT)),
            }
        });
        Box::new(Exchange {
            metrics: metrics.clone(),
            started: Instant::now(),
            protocol: if grpc { "grpc" } else { "http" },
            route: None,
            status: 0,
            grpc_status: None,
            received: 0,
            received_live: None,
            sent: 0,
            sent_booked: 0,
            log,
            in_flight: Some(in_flight),
        })
    }

    pub(crate) fn set_route(&mut self, route: &Arc<RouteMetrics>) {
        self.route = Some(route.clone());
    }

    pub(crate) fn set_websocket(&mut self) {
        self.protocol = "websocket";
    }

    pub(crate) fn set_request_details(
        &mut self,
        request_id: RequestId,
        authority: Option<Authority>,
    ) {
        if let Some(log) = &mut self.log {
            log.request_id = Some(request_id);
            log.authority = authority;
        }
    }

    /// Whether the request arrived with an `x-request-id` (headers are only taken away
    /// after that, never added): without one, [`crate::request_id::request_id`] need not look.
    pub(crate) fn request_id_sent(&self) -> bool {
        self.log.as_ref().is_some_and(|log| log.request_id_sent)
    }

    /// The request id made for this request, when one was: it still has to be sent upstream.
    pub(crate) fn made_request_id(&self) -> Option<[u8; 32]> {
        self.log
            .as_ref()
            .and_then(|log| log.request_id.as_ref()?.made().copied())
    }

    pub(crate) fn set_upstream(&mut self, protocol: &'static str, endpoint: Option<&Arc<str>>) {
        if let Some(log) = &mut self.log {
            log.upstream_protocol = Some(protocol);
            log.upstream = endpoint.cloned();
        }
    }

    /// The endpoint a websocket tunnel connected to (known only once it has connected).
    pub(crate) fn set_upstream_endpoint(&mut self, endpoint: &Arc<str>) {
        if let Some(log) = &mut self.log {
            log.upstream = Some(endpoint.clone());
        }
    }

    /// Where the request body's bytes are counted as it streams upstream: the request's own
    /// count when a log line reports it, else the route's counter directly (no allocation).
    pub(crate) fn received_tally(&mut self) -> Option<ByteTally> {
        if self.log.is_some() {
            let live = self.received_live.get_or_insert_with(take_counter);
            return Some(ByteTally::Request(live.clone()));
        }
        self.route.as_ref().map(|route| route.received_tally())
    }

    pub(crate) fn set_status(&mut self, status: u16) {
        self.status = status;
    }

    /// Reads grpc-status (and grpc-message) from response headers (trailers-only) or trailers.
    pub(crate) fn note_grpc(&mut self, headers: &HeaderMap) {
        // One pass for both: trailers hold a field or two, and a lookup by a name outside
        // the standard set hashes the name byte by byte.
        let (mut code, mut message) = (None, None);
        for (name, value) in headers {
            if *name == GRPC_STATUS {
                code = code.or(Some(value));
            } else if *name == GRPC_MESSAGE {
                message = message.or(Some(value));
            }
        }
        let Some(code) = code else {
            return;
        };
        self.grpc_status = std::str::from_utf8(code.as_bytes())
            .ok()
            .and_then(|s| s.parse().ok());
        if let (Some(log), Some(message)) = (&mut self.log, message) {
            log.grpc_message = Some(truncate(
                &percent_decode(message.as_bytes()),
                GRPC_MESSAGE_LOG_LIMIT,
            ));
        }
    }

    /// Tunnel byte counts, known only when the tunnel closes.
    pub(crate) fn set_tunnel_bytes(&mut self, up: u64, down: u64) {
        self.received = up;
        self.sent = down;
    }

    fn add_sent(&mut self, bytes: u64) {
        self.sent += bytes;
        if let Some(route) = &self.route {
            if self.sent - self.sent_booked >= SENT_BOOKING_CHUNK {
                route.add_sent(self.sent - self.sent_booked);
                self.sent_booked = self.sent;
            }
        }
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        // One clock read for the duration, the connection's idle timer and the line's time.
        let ended = Instant::now();
        let elapsed = ended.saturating_duration_since(self.started);
        let connection = self.in_flight.take().map(|in_flight| in_flight.end(ended));
        let mut received = self.received;
        if let Some(live) = self.received_live.take() {
            received += live.load(Ordering::Relaxed);
            keep_counter(live);
        }
        self.metrics.request_finished(FinishedRequest {
            route: self.route.as_deref(),
            protocol: self.protocol,
            status: self.status,
            grpc_status: self.grpc_status,
            seconds: elapsed.as_secs_f64(),
            received,
            sent_unbooked: self.sent - self.sent_booked,
        });
        // The guard is taken only here, so a logged exchange always has its connection.
        debug_assert!(connection.is_some());
        let (Some(log), Some(connection)) = (&self.log, &connection) else {
            return;
        };
        let client = connection.client();
        let record = AccessRecord {
            method: log.method.as_str(),
            // As `Uri::path` gives it: none (an authority-form CONNECT target) is empty.
            path: log.path.as_ref().map_or("", PathAndQuery::path),
            protocol: version_name(log.version),
            kind: self.protocol,
            upstream_protocol: log.upstream_protocol,
            status: self.status,
            grpc_status: self.grpc_status,
            grpc_message: log.grpc_message.as_deref(),
            pachctl_command: log.pachctl_command.as_deref(),
            duration: elapsed,
            ended,
            bytes_received: received,
            bytes_sent: self.sent,
            client: client.text(),
            connection: &client.memo,
            user_agent: log.user_agent.as_ref().and_then(|v| v.to_str().ok()),
            authority: log.authority.as_ref().map(Authority::as_str),
            route: self.route.as_ref().map(|r| &*r.name),
            upstream: log.upstream.as_deref(),
            request_id: log.request_id.as_ref().map(RequestId::as_text),
        };
        pachgate_observe::hand_over(&record);
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/?",
    }
}

/// grpc-message travels percent-encoded (gRPC over HTTP/2 spec); the log shows the text.
fn percent_decode(encoded: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut bytes = Vec::with_capacity(encoded.len());
    let mut i = 0;
    while i < encoded.len() {
        if encoded[i] == b'%' && i + 2 < encoded.len() {
            if let (Some(high), Some(low)) = (hex(encoded[i + 1]), hex(encoded[i + 2])) {
                bytes.push(high << 4 | low);
                i += 3;
                continue;
            }
        }
        bytes.push(encoded[i]);
        i += 1;
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_string();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A client-supplied header value as one log-safe line: invalid UTF-8 replaced, control
/// characters (newlines, escapes) dropped so a value cannot forge or garble a line, cut at
/// `limit` bytes on a character boundary.
fn loggable_text(value: &[u8], limit: usize) -> String {
    // One allocation: pachctl sends its command line on every call, and the log is on by
    // default. `from_utf8_lossy` borrows when the value is valid UTF-8.
    let text = String::from_utf8_lossy(value);
    let mut clean = String::with_capacity(text.len().min(limit + '…'.len_utf8()));
    for c in text.chars().filter(|c| !c.is_control()) {
        if clean.len() + c.len_utf8() > limit {
            clean.push('…');
            break;
        }
        clean.push(c);
    }
    clean
}

/// The response body with its exchange: counts bytes, reads trailers, and books the
/// exchange when the body is finished or dropped.
pub struct ObservedBody {
    inner: ProxyBody,
    exchange: Option<Box<Exchange>>,
}

impl ObservedBody {
    pub(crate) fn new(inner: ProxyBody, exchange: Option<Box<Exchange>>) -> Self {
        ObservedBody { inner, exchange }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let (Poll::Ready(Some(Ok(frame))), Some(exchange)) = (&polled, &mut this.exchange) {
            if let Some(data) = frame.data_ref() {
                exchange.add_sent(data.len() as u64);
            } else if let Some(trailers) = frame.trailers_ref() {
                exchange.note_grpc(trailers);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's client address, formatted for the log the first time a line needs it,
/// and the access sink's memo for the connection.
pub(crate) struct ClientAddress {
    addr: SocketAddr,
    text: OnceLock<Box<str>>,
    memo: ConnectionMemo,
}

impl ClientAddress {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        ClientAddress {
            addr,
            text: OnceLock::new(),
            memo: ConnectionMemo::default(),
        }
    }

    fn text(&self) -> &str {
        self.text.get_or_init(|| self.addr.to_string().into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn received_counters_come_back_zeroed_unless_a_body_still_holds_one() {
        let first = take_counter();
        first.store(7, Ordering::Relaxed);
        let first_at = Arc::as_ptr(&first);
        keep_counter(first);
        let again = take_counter();
        assert_eq!(Arc::as_ptr(&again), first_at, "the spare is reused");
        assert_eq!(again.load(Ordering::Relaxed), 0);

        let held_by_body = again.clone();
        keep_counter(again);
        let next = take_counter();
        assert_ne!(Arc::as_ptr(&next), Arc::as_ptr(&held_by_body));
        held_by_body.fetch_add(5, Ordering::Relaxed);
        assert_eq!(next.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(
            percent_decode(b"no%20such%20repo %C3%BC%2"),
            "no such repo ü%2"
        );
    }

    #[test]
    fn command_lines_lose_control_characters_and_are_cut() {
        assert_eq!(
            loggable_text(b"pachctl list repo\t--raw\x1b[31m", 256),
            "pachctl list repo--raw[31m"
        );
        assert_eq!(
            loggable_text("pachctl put file r@master:/é\u{85}x".as_bytes(), 256),
            "pachctl put file r@master:/éx"
        );
        assert_eq!(loggable_text(b"\xffab", 256), "\u{fffd}ab");
        let long = format!("pachctl {}", "é".repeat(300));
        let cut = loggable_text(long.as_bytes(), 256);
        assert!(cut.len() <= 256 + '…'.len_utf8(), "{}", cut.len());
        assert!(cut.ends_with("é…"));
    }
}
