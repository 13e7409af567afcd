//! One request's record from head to last byte: what the metrics and the access log say about
//! it. It rides in the response body ([`ObservedBody`]) — or in a websocket tunnel's task —
//! and is booked exactly once, when that ends or is dropped (a client that resets a stream
//! still gets a line).

use std::cell::{Cell, RefCell};
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

use pachgate_observe::{AccessRecord, ConnectionMemo, RequestIdText};

use crate::body::{BodyError, ProxyBody};
use crate::idle::InFlight;
use crate::metrics::{ByteTally, FinishedRequest, Metrics, RouteMetrics};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
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
    /// after that, never added): without one, [`request_id`] need not look.
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

/// The request id a log line reports: one the client sent, or one made here (kept as its
/// digits, so the line needs no copy of the header value).
pub(crate) enum RequestId {
    Sent(HeaderValue),
    Made([u8; 32]),
}

impl RequestId {
    fn as_text(&self) -> RequestIdText<'_> {
        match self {
            RequestId::Sent(value) => RequestIdText::Sent(value.as_bytes()),
            RequestId::Made(digits) => RequestIdText::Made(digits),
        }
    }

    /// The id made here, which the request's headers do not hold.
    pub(crate) fn made(&self) -> Option<&[u8; 32]> {
        match self {
            RequestId::Sent(_) => None,
            RequestId::Made(digits) => Some(digits),
        }
    }

    #[cfg(test)]
    fn as_str(&self) -> Option<&str> {
        match self {
            RequestId::Sent(value) => value.to_str().ok(),
            RequestId::Made(digits) => std::str::from_utf8(digits).ok(),
        }
    }
}

/// The request's id: a valid client-sent `x-request-id` (visible ASCII, at most 128 bytes),
/// kept as it is; else a new random one, which is *not* put in `headers` (an invalid one is
/// removed): the upstream receives it from [`RequestId::made`] as the request leaves, an
/// h2 upstream as one more field of the encoded head, without a header value and a map
/// insert of its own. `came_with_one`: whether the request arrived with an `x-request-id`
/// ([`Exchange::request_id_sent`]); when it did not, `headers` are not searched.
pub(crate) fn request_id(headers: &mut HeaderMap, came_with_one: bool) -> RequestId {
    if !came_with_one {
        return RequestId::Made(new_request_id());
    }
    // A scan, not a look-up by name: a look-up hashes a name outside the standard set byte
    // by byte, while the scan passes each standard name with one comparison.
    let sent = headers
        .iter()
        .find(|(name, _)| **name == X_REQUEST_ID)
        .map(|(_, value)| value);
    if let Some(value) = sent {
        let bytes = value.as_bytes();
        if !bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(|b| b.is_ascii_graphic()) {
            return RequestId::Sent(value.clone());
        }
        headers.remove(&X_REQUEST_ID);
    }
    RequestId::Made(new_request_id())
}

/// Sets a made request id in `headers`, for the ways upstream that take the request's map
/// as it is (HTTP/1.1, websocket tunnels).
pub(crate) fn insert_request_id(headers: &mut HeaderMap, digits: &[u8; 32]) {
    headers.insert(&X_REQUEST_ID, request_id_value(digits));
}

fn request_id_value(digits: &[u8; 32]) -> HeaderValue {
    let mut value = HeaderValue::from_bytes(digits).expect("hex digits are a valid header value");
    // Every value is new: an h2 encoder should not index it (it would only evict useful
    // entries). This value goes to HTTP/1.1 upstreams and websocket tunnels; h2-upstream's
    // own encoder sends every field it does not know as a literal without indexing anyway.
    value.set_sensitive(true);
    value
}

/// A new id: 32 hex digits. The first 16 are the thread's (64 random bits, drawn when the
/// thread makes its first id), the last 16 the next output of the thread's splitmix64
/// sequence, seeded by the standard library's random hasher keys. splitmix64 is a bijection
/// of its counter, so a thread repeats no id within 2^64 of them, and two threads (or
/// processes) share ids only if their random halves collide. No syscall per request, and
/// only half the digits made per id.
fn new_request_id() -> [u8; 32] {
    struct IdSource {
        state: Cell<u64>,
        thread_digits: [u8; 16],
    }
    thread_local! {
        static SOURCE: IdSource = {
            let state = Cell::new(seed());
            let thread_digits = hex16(splitmix64(&state));
            IdSource { state, thread_digits }
        };
    }
    fn seed() -> u64 {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        );
        hasher.finish()
    }
    // splitmix64: a full-period sequence per thread with well-mixed output.
    fn splitmix64(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(s);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn hex16(bits: u64) -> [u8; 16] {
        let mut digits = [0u8; 16];
        digits[..8].copy_from_slice(&hex_digits(bits as u32));
        digits[8..].copy_from_slice(&hex_digits((bits >> 32) as u32));
        digits
    }
    SOURCE.with(|source| {
        let mut digits = [0u8; 32];
        digits[..16].copy_from_slice(&source.thread_digits);
        digits[16..].copy_from_slice(&hex16(splitmix64(&source.state)));
        digits
    })
}

/// The eight nibbles of `bits` as lowercase hex digits, all at once (a table lookup per
/// digit cost ~9 instructions each). The digits come out in little-endian nibble order,
/// which does not matter for ids.
fn hex_digits(bits: u32) -> [u8; 8] {
    const LOW_NIBBLES: u64 = 0x0f0f_0f0f_0f0f_0f0f;
    // Spread nibble i into byte i.
    let mut x = u64::from(bits);
    x = (x | x << 16) & 0x0000_ffff_0000_ffff;
    x = (x | x << 8) & 0x00ff_00ff_00ff_00ff;
    x = (x | x << 4) & LOW_NIBBLES;
    // 1 in each byte whose nibble is 10..=15, which then skips from '9'+1 to 'a'.
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    (x + 0x3030_3030_3030_3030 + letters * u64::from(b'a' - b'0' - 10)).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_kept_when_sane_and_made_otherwise() {
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("grpc-go/1.0"));
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        let kept = request_id(&mut headers, true);
        assert_eq!(kept.as_str(), Some("abc-123"));
        assert_eq!(kept.made(), None);
        assert_eq!(headers.get(&X_REQUEST_ID).unwrap(), "abc-123");

        // An invalid one goes; the made one is left to the way upstream.
        let mut headers = HeaderMap::new();
        headers.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        headers.append(&X_REQUEST_ID, HeaderValue::from_static("second"));
        let made = request_id(&mut headers, true);
        let text = made.as_str().unwrap();
        assert_eq!(text.len(), 32);
        assert!(text.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
        assert_eq!(made.made().map(|d| &d[..]), Some(text.as_bytes()));
        assert!(!headers.contains_key(&X_REQUEST_ID));
        insert_request_id(&mut headers, made.made().unwrap());
        let sent: Vec<_> = headers.get_all(&X_REQUEST_ID).iter().collect();
        assert_eq!(sent, [text]);
        assert!(sent[0].is_sensitive());

        // None sent: the map is left as it is.
        let mut headers = HeaderMap::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("curl"));
        let first = request_id(&mut headers, true);
        assert_eq!(headers.len(), 1);
        assert!(first.made().is_some());
        assert_ne!(first.as_str(), request_id(&mut headers, true).as_str());

        // Too long, or empty: made anew.
        for value in ["x".repeat(129), String::new()] {
            let mut headers = HeaderMap::new();
            headers.insert(&X_REQUEST_ID, HeaderValue::from_str(&value).unwrap());
            assert!(request_id(&mut headers, true).made().is_some());
            assert!(headers.is_empty());
        }
        let mut headers = HeaderMap::new();
        headers.insert(
            &X_REQUEST_ID,
            HeaderValue::from_str(&"x".repeat(128)).unwrap(),
        );
        assert!(request_id(&mut headers, true).made().is_none());
    }

    #[test]
    fn made_ids_are_distinct_and_each_thread_has_its_own_half() {
        let ids_of_a_thread = || {
            (0..1000)
                .map(|_| {
                    let id = request_id(&mut HeaderMap::new(), false);
                    id.as_str().unwrap().to_string()
                })
                .collect::<Vec<_>>()
        };
        let here = ids_of_a_thread();
        let there = std::thread::spawn(ids_of_a_thread).join().unwrap();
        let mut seen = std::collections::HashSet::new();
        for id in here.iter().chain(&there) {
            assert_eq!(id.len(), 32);
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
            assert!(seen.insert(id.clone()), "{id} twice");
        }
        // The first 16 digits are the thread's, the last 16 change with every id.
        assert!(here.iter().all(|id| id[..16] == here[0][..16]));
        assert!(there.iter().all(|id| id[..16] == there[0][..16]));
        assert_ne!(here[0][..16], there[0][..16]);
        let tails: std::collections::HashSet<_> = here.iter().map(|id| &id[16..]).collect();
        assert_eq!(tails.len(), here.len());
    }

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
    fn hex_digits_cover_every_nibble() {
        assert_eq!(&hex_digits(0x7654_3210), b"01234567");
        assert_eq!(&hex_digits(0xfedc_ba98), b"89abcdef");
        assert_eq!(&hex_digits(0), b"00000000");
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
