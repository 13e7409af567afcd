//! pachgate's own client side of an upstream HTTP/2 connection.
//!
//! A profile of small gRPC calls put about a third of the proxy's CPU in the h2 crate's
//! client: its generic stream store, its send queue and its HPACK encoder, all built for
//! every use of HTTP/2. A proxy's upstream connection needs less: requests whose heads it
//! already holds as `http` types, bodies handed on as they come, and responses read into the
//! task that forwards them. This module speaks exactly that (RFC 9113, client side):
//! HEADERS and CONTINUATION, DATA with both levels of flow control, trailers, RST_STREAM,
//! SETTINGS, PING (answers and keepalive), GOAWAY, and the peer's stream limit. Response
//! header blocks go through a full HPACK decoder (loona-hpack); request heads are written as
//! literals that never enter the upstream's table, so no encoder state is kept.
//!
//! One mutex guards a connection. The task that drives it reads and writes the socket;
//! stream tasks queue frames and wake it. benches/README.md has the before/after.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode, Version};
use http_body::Frame;
use pachgate_h2_wire::{
    self as wire, FrameReader, Next, ACK, CONTINUATION, DATA, DEFAULT_HEADER_TABLE_SIZE,
    DEFAULT_WINDOW, END_HEADERS, END_STREAM, GOAWAY, HEADERS, PING, PREFACE, PRIORITY,
    PUSH_PROMISE, RST_STREAM, SETTINGS, SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, WINDOW_UPDATE,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::body::BodyError;

const DEFAULT_MAX_FRAME: usize = wire::DEFAULT_MAX_FRAME as usize;
const MAX_WINDOW: i64 = 0x7fff_ffff;
const LAST_STREAM_ID: u32 = 0x7fff_ffff;

/// Largest frame we accept (advertised in SETTINGS); big response messages then cost fewer
/// frames.
const MAX_FRAME_IN: usize = 256 * 1024;
/// A response header block (HEADERS plus CONTINUATIONs) past this is a connection error:
/// no upstream gets to make pachgate buffer without bound.
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// CONTINUATION frames one header block may take. An encoder fills frames up to the frame
/// size (16 KiB at least), so a block within MAX_HEADER_BLOCK needs at most 16; a peer that
/// sends more is drip-feeding (empty CONTINUATIONs never grow the block) and the connection
/// ends (ENHANCE_YOUR_CALM).
const MAX_CONTINUATIONS: u32 = 64;
/// The HPACK dynamic table the upstream may use for our decoder: what SETTINGS advertise
/// (the RFC 7541 default, said out loud). A size update past it is a COMPRESSION_ERROR.
const HEADER_TABLE_SIZE: u32 = DEFAULT_HEADER_TABLE_SIZE;
/// Defaults for [`HeaderLimits`]: pachd's responses carry a dozen fields and a few KiB (a
/// long `grpc-message` included); 1,000 fields and 256 KiB decoded leave room for any
/// honest response while an HPACK bomb (a 20 KB block naming one large table entry over and
/// over decodes to 64 MiB) or a 40,000-name block (`HeaderMap` panics past 32,768) is cut
/// off. 256 KiB decoded is what the largest encoded block could carry uncompressed.
pub const DEFAULT_MAX_RESPONSE_HEADERS: usize = 1_000;
pub const DEFAULT_MAX_RESPONSE_HEADER_BYTES: usize = 256 * 1024;
/// `http::HeaderMap` holds at most 32,768 entries and panics past that; the field-count limit
/// never reaches it.
pub const MAX_RESPONSE_HEADERS_CAP: usize = 16_384;
/// Acknowledgements (SETTINGS, PING) queued while the upstream does not read what we write:
/// past this many it is flooding us, and the connection ends (ENHANCE_YOUR_CALM) before the
/// queue grows without bound.
const MAX_UNWRITTEN_ACKS: u32 = 1024;
/// Reads handled per wake-up before the driver yields to other tasks.
const READS_PER_WAKE: usize = 32;
/// DATA payloads at least this large are written from their own buffer, not copied.
const WRITTEN_IN_PLACE: usize = 4096;
/// Small DATA frames that arrive before the last is handed on join it, up to this many bytes.
const COALESCE_LIMIT: usize = 16 * 1024;

/// Windows and batching, as the caller configures the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub stream_window: u32,
    pub connection_window: u32,
    /// Requests queued before the stream that queued the last of them writes the batch out
    /// itself instead of waiting for the connection's task.
    pub write_batch: usize,
    /// Ping after this long without a frame from the upstream; fail the connection when the
    /// ping is not answered within the second duration.
    pub keepalive: Option<(Duration, Duration)>,
    /// The upstream's SETTINGS must arrive within this long (an h2 server sends them at
    /// once); an endpoint that accepts and says nothing then fails its calls instead of
    /// holding them until keepalive gives up.
    pub settings_timeout: Duration,
    /// What one response header block (the head, or the trailers) may decode to.
    pub header_limits: HeaderLimits,
}

/// Limits on one decoded response header block, enforced while it is decoded: the field
/// that would cross a limit is dropped, not stored, and the stream is reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderLimits {
    /// Fields, pseudo-headers included.
    pub max_fields: usize,
    /// RFC 9113's header list size: name + value + 32 bytes per field.
    pub max_bytes: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        HeaderLimits {
            max_fields: DEFAULT_MAX_RESPONSE_HEADERS,
            max_bytes: DEFAULT_MAX_RESPONSE_HEADER_BYTES,
        }
    }
}

/// Why a stream or the connection ended badly.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// The upstream reset the stream (or we did, for a protocol violation).
    Reset(h2::Reason),
    /// The upstream went away before it processed the stream: safe to send again.
    Refused,
    /// The connection failed.
    Connection(Arc<str>),
    /// The upstream broke HTTP/2 or our limits: we reset the stream or ended the connection.
    Violation(Arc<str>),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Reset(reason) => write!(f, "stream reset: {reason:?}"),
            Failure::Refused => f.write_str("stream refused (upstream going away)"),
            Failure::Connection(text) => f.write_str(text),
            Failure::Violation(text) => write!(f, "upstream protocol error: {text}"),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// As a body error: a reset keeps its reason (hyper passes it on to the client's stream).
    fn into_body_error(self) -> BodyError {
        match self {
            Failure::Reset(reason) => h2::Error::from(reason).into(),
            Failure::Refused => h2::Error::from(h2::Reason::REFUSED_STREAM).into(),
            Failure::Connection(text) | Failure::Violation(text) => {
                io::Error::other(text.to_string()).into()
            }
        }
    }
}

/// Stream ids are distinct odd numbers: spread them with one multiply instead of SipHash.
#[derive(Default)]
struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8 | u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type StreamMap = HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>;

/// The response head of a stream, as it moves from the upstream to the caller.
enum Head {
    Awaiting,
    Arrived(Response<()>),
    Delivered,
}

struct Stream {
    /// Handles alive (the response side, and the request body's pump while it runs).
    refs: u8,
    head: Head,
    /// Response data not yet handed on. A frame that arrives while the last chunk has room
    /// (up to COALESCE_LIMIT) joins it: a server stream of small messages comes one DATA
    /// frame per message, and every chunk handed on costs a frame's work downstream.
    data: VecDeque<BytesMut>,
    trailers: Option<HeaderMap>,
    /// END_STREAM received.
    recv_closed: bool,
    /// END_STREAM sent (or the upstream no longer wants the request body).
    send_closed: bool,
    failure: Option<Failure>,
    /// Whether the stream still counts against the upstream's concurrent-stream limit.
    open: bool,
    recv_window: i64,
    /// Bytes handed on and not yet credited back to the upstream.
    unacked: u32,
    send_window: i64,
    recv_waker: Option<Waker>,
    send_waker: Option<Waker>,
}

impl Stream {
    fn wake(&mut self) {
        if let Some(waker) = self.recv_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.send_waker.take() {
            waker.wake();
        }
    }

    fn response_done(&self) -> bool {
        self.recv_closed && self.data.is_empty() && self.trailers.is_none()
    }
}

/// Frames waiting for the socket: small ones copied into one buffer, large DATA payloads
/// kept as their own `Bytes` and written with vectored writes.
#[derive(Default)]
struct Output {
    chunks: VecDeque<Bytes>,
    small: BytesMut,
    /// Bytes of the front chunk already written.
    front_written: usize,
}

impl Output {
    fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        wire::put_frame_header(&mut self.small, length, kind, flags, stream);
    }

    fn payload(&mut self, data: Bytes) {
        if data.len() < WRITTEN_IN_PLACE {
            self.small.extend_from_slice(&data);
        } else {
            self.seal();
            self.chunks.push_back(data);
        }
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    fn poll_write<T: AsyncWrite + Unpin + ?Sized>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        // Small frames only (the common case): written straight from their buffer.
        while self.chunks.is_empty() && !self.small.is_empty() {
            match Pin::new(&mut *io).poll_write(cx, &self.small) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => bytes::Buf::advance(&mut self.small, n),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        self.seal();
        while !self.chunks.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); 32];
            let mut count = 0;
            for (index, chunk) in self.chunks.iter().take(slices.len()).enumerate() {
                let skip = if index == 0 { self.front_written } else { 0 };
                slices[count] = io::IoSlice::new(&chunk[skip..]);
                count += 1;
            }
            let mut written = match Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            while written > 0 {
                let left = self.chunks[0].len() - self.front_written;
                if written >= left {
                    written -= left;
                    self.chunks.pop_front();
                    self.front_written = 0;
                } else {
                    self.front_written += written;
                    written = 0;
                }
            }
        }
        Pin::new(&mut *io).poll_flush(cx)
    }
}

/// An upstream connection, plain or TLS, as one type.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

struct Inner {
    io: Option<Box<dyn Transport>>,
    reader: FrameReader,
    out: Output,
    driver: Option<Waker>,
    streams: StreamMap,
    next_id: u32,
    open_streams: u32,
    open_waiters: Vec<Waker>,
    peer_max_streams: u32,
    peer_initial_window: u32,
    peer_max_frame: usize,
    peer_settings_seen: bool,
    /// The upstream's SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): extended CONNECT, the
    /// way websockets travel over HTTP/2, is allowed.
    peer_connect_protocol: bool,
    send_window: i64,
    recv_window: i64,
    recv_unacked: u32,
    decoder: loona_hpack::Decoder<'static>,
    /// A header block waiting for its CONTINUATIONs: stream, END_STREAM.
    continuing: Option<(u32, bool)>,
    /// CONTINUATION frames in the header block being read.
    continuations: u32,
    header_block: Vec<u8>,
    /// Where request heads are encoded before they are cut into frames.
    head_scratch: Vec<u8>,
    /// Set by GOAWAY: streams above this id were refused, and no new ones open.
    going_away: Option<u32>,
    failure: Option<Failure>,
    /// A frame other than a PING ACK arrived since the keepalive timer last looked.
    heard: bool,
    ping_outstanding: bool,
    pong_received: bool,
    /// Acknowledgements queued since the output was last written out whole.
    unwritten_acks: u32,
    /// Requests queued since the connection's task last wrote.
    queued: usize,
    settings: Settings,
}

pub(crate) struct Shared {
    inner: Mutex<Inner>,
    /// Set once no new stream may open here: the next request opens a new connection.
    closed: AtomicBool,
}

/// The handle that opens streams on one upstream h2 connection. Dropping it retires the
/// connection: it closes once its streams have ended.
pub(crate) struct Connection {
    shared: Arc<Shared>,
}

impl Connection {
    /// Starts a connection on `io` (the preface and our SETTINGS are queued, not awaited);
    /// the returned future drives it and ends when the connection does.
    pub(crate) fn start(
        io: Box<dyn Transport>,
        settings: Settings,
    ) -> (
        Connection,
        impl std::future::Future<Output = Result<(), Failure>>,
    ) {
        let mut out = Output::default();
        out.small.extend_from_slice(PREFACE);
        let entries: [(u16, u32); 6] = [
            (SETTINGS_HEADER_TABLE_SIZE, HEADER_TABLE_SIZE),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_MAX_CONCURRENT_STREAMS, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, settings.stream_window),
            (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME_IN as u32),
            (
                SETTINGS_MAX_HEADER_LIST_SIZE,
                u32::try_from(settings.header_limits.max_bytes).unwrap_or(u32::MAX),
            ),
        ];
        out.frame_header(entries.len() * 6, SETTINGS, 0, 0);
        for (id, value) in entries {
            out.small.extend_from_slice(&id.to_be_bytes());
            out.small.extend_from_slice(&value.to_be_bytes());
        }
        if settings.connection_window > DEFAULT_WINDOW {
            out.frame_header(4, WINDOW_UPDATE, 0, 0);
            out.small
                .extend_from_slice(&(settings.connection_window - DEFAULT_WINDOW).to_be_bytes());
        }
        let inner = Inner {
            io: Some(io),
            reader: FrameReader::new(16 * 1024, MAX_FRAME_IN),
            out,
            driver: None,
            streams: StreamMap::default(),
            next_id: 1,
            open_streams: 0,
            open_waiters: Vec::new(),
            peer_max_streams: u32::MAX,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: DEFAULT_MAX_FRAME,
            peer_settings_seen: false,
            peer_connect_protocol: false,
            send_window: i64::from(DEFAULT_WINDOW),
            recv_window: i64::from(settings.connection_window),
            recv_unacked: 0,
            decoder: response_decoder(),
            continuing: None,
            continuations: 0,
            header_block: Vec::new(),
            head_scratch: Vec::new(),
            going_away: None,
            failure: None,
            heard: false,
            ping_outstanding: false,
            pong_received: false,
            unwritten_acks: 0,
            queued: 0,
            settings,
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            closed: AtomicBool::new(false),
        });
        let driving = shared.clone();
        (Connection { shared }, drive(driving, settings))
    }

    pub(crate) fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Takes the connection out of use: no new streams; it ends once its streams have.
    pub(crate) fn retire(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut inner = self.shared.lock();
        inner.going_away.get_or_insert(LAST_STREAM_ID);
        inner.wake_driver();
    }

    /// Opens a stream with the request's head (waiting while the upstream's stream limit is
    /// reached). `Err(Failure::Refused)` means nothing was sent: the caller may try another
    /// connection.
    pub(crate) async fn open(
        &self,
        head: &http::request::Parts,
        end_stream: bool,
    ) -> Result<StreamRef, Failure> {
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if let Some(failure) = &inner.failure {
                return Poll::Ready(Err(match failure {
                    Failure::Connection(_) | Failure::Violation(_) => Failure::Refused,
                    other => other.clone(),
                }));
            }
            if inner.going_away.is_some() || inner.next_id > LAST_STREAM_ID {
                self.shared.closed.store(true, Ordering::Release);
                return Poll::Ready(Err(Failure::Refused));
            }
            // Until the upstream's SETTINGS arrive its stream limit is unknown: one stream
            // goes out, the rest wait the round trip rather than risk being refused.
            let limit = if inner.peer_settings_seen {
                inner.peer_max_streams
            } else {
                1
            };
            if inner.open_streams >= limit {
                inner.open_waiters.push(cx.waker().clone());
                return Poll::Pending;
            }
            let id = inner.next_id;
            inner.next_id += 2;
            if inner.next_id > LAST_STREAM_ID {
                self.shared.closed.store(true, Ordering::Release);
            }
            let send_window = i64::from(inner.peer_initial_window);
            let recv_window = i64::from(inner.settings.stream_window);
            inner.streams.insert(
                id,
                Stream {
                    refs: 1,
                    head: Head::Awaiting,
                    data: VecDeque::new(),
                    trailers: None,
                    recv_closed: false,
                    send_closed: end_stream,
                    failure: None,
                    open: true,
                    recv_window,
                    unacked: 0,
                    send_window,
                    recv_waker: None,
                    send_waker: None,
                },
            );
            inner.open_streams += 1;
            // Encoded under the lock into a buffer the connection keeps: no allocation per
            // request.
            let mut block = std::mem::take(&mut inner.head_scratch);
            block.clear();
            encode_request_head(head, &mut block);
            inner.put_header_block(id, &block, end_stream);
            inner.head_scratch = block;
            inner.request_queued();
            Poll::Ready(Ok(StreamRef {
                shared: self.shared.clone(),
                id,
            }))
        })
        .await
    }
}

impl Connection {
    /// Whether the upstream allows RFC 8441 extended CONNECT, once its first SETTINGS have
    /// arrived (a connection that fails before, or gets none within the settings timeout,
    /// is an error).
    pub(crate) async fn connect_protocol_enabled(&self) -> Result<bool, Failure> {
        poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if let Some(failure) = &inner.failure {
                return Poll::Ready(Err(failure.clone()));
            }
            if inner.peer_settings_seen {
                return Poll::Ready(Ok(inner.peer_connect_protocol));
            }
            inner.open_waiters.push(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// The `:protocol` of an RFC 8441 extended CONNECT request, as an extension of its head:
/// only CONNECT requests are looked at for it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectProtocol(pub &'static str);

impl Drop for Connection {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection task's poll: ready when the connection has ended.
    fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        let mut inner = self.lock();
        if !inner
            .driver
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            inner.driver = Some(cx.waker().clone());
        }
        inner.queued = 0;
        let mut reads = 0;
        while inner.failure.is_none() && inner.io.is_some() {
            if reads == READS_PER_WAKE {
                cx.waker().wake_by_ref();
                break;
            }
            reads += 1;
            match inner.poll_read(cx) {
                Poll::Ready(Ok(())) => {
                    if let Err((reason, text)) = inner.process_frames() {
                        inner.connection_error(reason, text);
                    }
                }
                Poll::Ready(Err(text)) => inner.fail(Failure::Connection(text.into())),
                Poll::Pending => break,
            }
        }
        inner.write_out(cx);
        if let Some(failure) = inner.failure.clone() {
            self.closed.store(true, Ordering::Release);
            inner.io = None;
            return Poll::Ready(Err(failure));
        }
        if inner.going_away.is_some() {
            self.closed.store(true, Ordering::Release);
            if inner.streams.is_empty() && inner.out.is_empty() {
                inner.io = None;
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }

    /// Keepalive: called when the timer fires; the next deadline, or the failure.
    fn keepalive_tick(&self, every: Duration, timeout: Duration) -> Result<Duration, Failure> {
        let mut inner = self.lock();
        if std::mem::take(&mut inner.heard) {
            inner.ping_outstanding = false;
            return Ok(every);
        }
        if inner.ping_outstanding {
            let failure =
                Failure::Connection(format!("no keepalive pong within {timeout:?}").into());
            inner.fail(failure.clone());
            return Err(failure);
        }
        // The last ping was answered: a full interval before the next.
        if std::mem::take(&mut inner.pong_received) {
            return Ok(every);
        }
        inner.ping_outstanding = true;
        inner.out.frame_header(8, PING, 0, 0);
        inner.out.small.extend_from_slice(b"pachgate");
        inner.wake_driver();
        Ok(timeout)
    }
}

/// Drives the connection: socket I/O, the deadline for the upstream's SETTINGS, and
/// keepalive pings while the upstream is silent.
async fn drive(shared: Arc<Shared>, settings: Settings) -> Result<(), Failure> {
    let _gone = DriverGone(shared.clone());
    let keepalive = settings.keepalive;
    let mut timer = keepalive.map(|(every, _)| Box::pin(tokio::time::sleep(every)));
    let mut settings_deadline = Some(Box::pin(tokio::time::sleep(settings.settings_timeout)));
    let ended = poll_fn(|cx| {
        if let Poll::Ready(ended) = shared.poll_drive(cx) {
            return Poll::Ready(ended);
        }
        if let Some(deadline) = settings_deadline.as_mut() {
            if shared.lock().peer_settings_seen {
                settings_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                let failure = Failure::Connection(
                    format!(
                        "no h2 SETTINGS from the upstream within {:?} (is it an h2 server?)",
                        settings.settings_timeout
                    )
                    .into(),
                );
                let mut inner = shared.lock();
                inner.fail(failure.clone());
                inner.io = None;
                shared.closed.store(true, Ordering::Release);
                return Poll::Ready(Err(failure));
            }
        }
        if let (Some(timer), Some((every, timeout))) = (timer.as_mut(), keepalive) {
            while timer.as_mut().poll(cx).is_ready() {
                match shared.keepalive_tick(every, timeout) {
                    Ok(next) => timer.as_mut().reset(tokio::time::Instant::now() + next),
                    Err(failure) => {
                        shared.closed.store(true, Ordering::Release);
                        shared.lock().io = None;
                        return Poll::Ready(Err(failure));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await;
    shared.closed.store(true, Ordering::Release);
    ended
}

/// Ends the connection when its driving task does, however it ends: should that be a panic
/// (or the runtime shutting down), its streams fail instead of waiting forever for frames
/// nobody reads, and the next request opens a new connection.
struct DriverGone(Arc<Shared>);

impl Drop for DriverGone {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        let mut inner = self.0.lock();
        if inner.failure.is_none() {
            inner.fail(Failure::Connection(
                "the upstream connection's task ended".into(),
            ));
        }
        inner.io = None;
    }
}

impl Inner {
    /// A stream queued a request. The one that fills a batch writes the batch out from its
    /// own task, so the upstream starts on it while the worker reads the rest; otherwise the
    /// connection's task writes once the worker has run every ready stream.
    fn request_queued(&mut self) {
        self.queued += 1;
        if self.queued >= self.settings.write_batch {
            self.queued = 0;
            if let Some(waker) = self.driver.clone() {
                self.write_out(&mut Context::from_waker(&waker));
                return;
            }
        }
        self.wake_driver();
    }

    fn wake_driver(&self) {
        if let Some(waker) = &self.driver {
            waker.wake_by_ref();
        }
    }

    fn write_out(&mut self, cx: &mut Context<'_>) {
        let Some(io) = self.io.as_mut() else {
            return;
        };
        if self.out.is_empty() {
            self.unwritten_acks = 0;
            return;
        }
        match self.out.poll_write(io, cx) {
            Poll::Ready(Ok(())) => self.unwritten_acks = 0,
            Poll::Ready(Err(e)) => self.fail(Failure::Connection(
                format!("upstream write failed: {e}").into(),
            )),
            Poll::Pending => {}
        }
    }

    /// Reads once into the buffer behind any partial frame.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let io = self.io.as_mut().expect("read only while open");
        match self.reader.poll_read(io, cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err("upstream closed the connection".into())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("upstream read failed: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Handles every whole frame in the read buffer.
    fn process_frames(&mut self) -> Result<(), (h2::Reason, String)> {
        let mut reader = std::mem::take(&mut self.reader);
        let result = (|| loop {
            let (kind, head) = match reader.next_frame() {
                Next::Incomplete => return Ok(()),
                Next::Oversized { kind, .. } => (kind, None),
                Next::Frame(head) => (head.kind, Some(head)),
            };
            if !self.peer_settings_seen && kind != SETTINGS {
                return Err(protocol("the upstream did not open with h2 SETTINGS"));
            }
            let Some(head) = head else {
                return Err((
                    h2::Reason::FRAME_SIZE_ERROR,
                    format!("a frame over our {MAX_FRAME_IN}-byte limit"),
                ));
            };
            if !(kind == PING && head.flags & ACK != 0) {
                self.heard = true;
            }
            self.frame(kind, head.flags, head.stream, reader.payload(&head))?;
        })();
        self.reader = reader;
        result
    }

    fn frame(
        &mut self,
        kind: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> Result<(), (h2::Reason, String)> {
        if self.continuing.is_some() && kind != CONTINUATION {
            return Err(protocol("header block interrupted"));
        }
        match kind {
            DATA => self.data(flags, stream, payload),
            HEADERS => {
                if stream == 0 {
                    return Err(protocol("HEADERS on stream 0"));
                }
                let block = unpad(flags, payload, if flags & PRIORITY != 0 { 5 } else { 0 })?;
                self.header_block.clear();
                self.header_block.extend_from_slice(block);
                self.continuations = 0;
                if flags & END_HEADERS != 0 {
                    self.header_block_done(stream, flags & END_STREAM != 0)
                } else {
                    self.continuing = Some((stream, flags & END_STREAM != 0));
                    Ok(())
                }
            }
            CONTINUATION => {
                let Some((open, end_stream)) = self.continuing else {
                    return Err(protocol("CONTINUATION without HEADERS"));
                };
                if open != stream {
                    return Err(protocol("CONTINUATION on another stream"));
                }
                self.continuations += 1;
                if self.continuations > MAX_CONTINUATIONS {
                    return Err((
                        h2::Reason::ENHANCE_YOUR_CALM,
                        format!("over {MAX_CONTINUATIONS} CONTINUATION frames in one header block"),
                    ));
                }
                if self.header_block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err((
                        h2::Reason::ENHANCE_YOUR_CALM,
                        format!("response header block over {MAX_HEADER_BLOCK} bytes"),
                    ));
                }
                self.header_block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.continuing = None;
                    self.header_block_done(stream, end_stream)
                } else {
                    Ok(())
                }
            }
            RST_STREAM => {
                if payload.len() != 4 || stream == 0 {
                    return Err(protocol("malformed RST_STREAM"));
                }
                let reason = h2::Reason::from(be_u32(payload));
                if let Some(state) = self.streams.get_mut(&stream) {
                    state.send_closed = true;
                    // After a complete response, a reset only stops the request body.
                    if !state.recv_closed && state.failure.is_none() {
                        state.failure = Some(
                            if reason == h2::Reason::REFUSED_STREAM
                                && matches!(state.head, Head::Awaiting)
                            {
                                Failure::Refused
                            } else {
                                Failure::Reset(reason)
                            },
                        );
                    }
                    state.wake();
                    self.settle(stream);
                }
                Ok(())
            }
            SETTINGS => {
                if stream != 0 {
                    return Err(protocol("SETTINGS on a stream"));
                }
                if flags & ACK == 0 {
                    self.apply_settings(payload)?;
                    self.acknowledged()?;
                    self.out.frame_header(0, SETTINGS, ACK, 0);
                }
                Ok(())
            }
            PING => {
                if payload.len() != 8 || stream != 0 {
                    return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed PING".into()));
                }
                if flags & ACK == 0 {
                    self.acknowledged()?;
                    self.out.frame_header(8, PING, ACK, 0);
                    self.out.small.extend_from_slice(payload);
                } else {
                    self.ping_outstanding = false;
                    self.pong_received = true;
                }
                Ok(())
            }
            GOAWAY => {
                if payload.len() < 8 {
                    return Err(protocol("malformed GOAWAY"));
                }
                let last = be_u32(payload) & LAST_STREAM_ID;
                let reason = h2::Reason::from(be_u32(&payload[4..]));
                tracing::debug!(?reason, last_stream = last, "upstream sent GOAWAY");
                self.going_away = Some(self.going_away.map_or(last, |old| old.min(last)));
                let refused: Vec<u32> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|id| *id > last)
                    .collect();
                for id in refused {
                    if let Some(state) = self.streams.get_mut(&id) {
                        state.failure.get_or_insert(Failure::Refused);
                        state.send_closed = true;
                        state.wake();
                    }
                    self.settle(id);
                }
                Ok(())
            }
            WINDOW_UPDATE => {
                if payload.len() != 4 {
                    return Err((
                        h2::Reason::FRAME_SIZE_ERROR,
                        "malformed WINDOW_UPDATE".into(),
                    ));
                }
                let increment = i64::from(be_u32(payload) & LAST_STREAM_ID);
                if stream == 0 {
                    if increment == 0 {
                        return Err(protocol("zero WINDOW_UPDATE"));
                    }
                    self.send_window += increment;
                    if self.send_window > MAX_WINDOW {
                        return Err((
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "WINDOW_UPDATE overflows the connection's window".into(),
                        ));
                    }
                    for state in self.streams.values_mut() {
                        if let Some(waker) = state.send_waker.take() {
                            waker.wake();
                        }
                    }
                } else if let Some(state) = self.streams.get_mut(&stream) {
                    // RFC 9113 §6.9: a zero increment is a stream error PROTOCOL_ERROR, a
                    // window past 2^31-1 one of FLOW_CONTROL_ERROR (§6.9.1).
                    state.send_window += increment;
                    if increment == 0 {
                        self.violation(stream, h2::Reason::PROTOCOL_ERROR, "zero WINDOW_UPDATE");
                    } else if state.send_window > MAX_WINDOW {
                        self.violation(
                            stream,
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "WINDOW_UPDATE overflows the stream's window",
                        );
                    } else if let Some(waker) = state.send_waker.take() {
                        waker.wake();
                    }
                }
                Ok(())
            }
            PUSH_PROMISE => Err(protocol("PUSH_PROMISE though push is off")),
            // PRIORITY and unknown frame types are ignored, as RFC 9113 asks.
            _ => Ok(()),
        }
    }

    fn data(&mut self, flags: u8, stream: u32, payload: &[u8]) -> Result<(), (h2::Reason, String)> {
        if stream == 0 {
            return Err(protocol("DATA on stream 0"));
        }
        let length = payload.len() as i64;
        self.recv_window -= length;
        if self.recv_window < 0 {
            return Err((
                h2::Reason::FLOW_CONTROL_ERROR,
                "upstream overran our window".into(),
            ));
        }
        let data = unpad(flags, payload, 0)?;
        // Padding, and frames for streams we no longer track, are credited back at once.
        let mut credit_now = (payload.len() - data.len()) as u32;
        let end_stream = flags & END_STREAM != 0;
        match self.streams.get_mut(&stream) {
            Some(state) if state.failure.is_none() => {
                if state.recv_closed || matches!(state.head, Head::Awaiting) {
                    credit_now += data.len() as u32;
                    let (reason, what) = if state.recv_closed {
                        (h2::Reason::STREAM_CLOSED, "DATA after END_STREAM")
                    } else {
                        (h2::Reason::PROTOCOL_ERROR, "DATA before the response head")
                    };
                    self.violation(stream, reason, what);
                } else {
                    state.recv_window -= length;
                    if state.recv_window < 0 {
                        credit_now += data.len() as u32;
                        self.violation(
                            stream,
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "DATA past the stream's window",
                        );
                    } else {
                        if !data.is_empty() {
                            match state.data.back_mut() {
                                Some(last) if last.len() + data.len() <= COALESCE_LIMIT => {
                                    last.extend_from_slice(data)
                                }
                                _ => {
                                    // Room for a few more small frames without regrowing.
                                    let mut chunk = BytesMut::with_capacity(data.len().max(1024));
                                    chunk.extend_from_slice(data);
                                    state.data.push_back(chunk);
                                }
                            }
                        }
                        self.received(stream, end_stream);
                    }
                }
            }
            _ => credit_now += data.len() as u32,
        }
        self.credit_connection(credit_now);
        Ok(())
    }

    /// Decodes a complete header block (always: the HPACK table must stay in step) and
    /// hands it to its stream as the response head or as trailers.
    fn header_block_done(
        &mut self,
        stream: u32,
        end_stream: bool,
    ) -> Result<(), (h2::Reason, String)> {
        let block = std::mem::take(&mut self.header_block);
        let decoded = decode_response_block(&mut self.decoder, &block, self.settings.header_limits);
        self.header_block = block;
        let DecodedBlock {
            status,
            fields,
            problem,
        } = decoded?;
        let Some(state) = self.streams.get_mut(&stream) else {
            return Ok(());
        };
        if state.failure.is_some() || state.recv_closed {
            return Ok(());
        }
        if let Some((reason, what)) = problem {
            self.violation(stream, reason, what);
            return Ok(());
        }
        match state.head {
            Head::Awaiting => match status {
                // Informational heads are not passed on; the final head follows. HTTP/2 has
                // no 101.
                Some(status)
                    if status.is_informational()
                        && status != StatusCode::SWITCHING_PROTOCOLS
                        && !end_stream =>
                {
                    return Ok(())
                }
                Some(status) if !status.is_informational() => {
                    let mut response = Response::new(());
                    *response.status_mut() = status;
                    *response.version_mut() = Version::HTTP_2;
                    *response.headers_mut() = fields;
                    state.head = Head::Arrived(response);
                }
                _ => {
                    self.violation(
                        stream,
                        h2::Reason::PROTOCOL_ERROR,
                        "response head without a final :status",
                    );
                    return Ok(());
                }
            },
            Head::Arrived(_) | Head::Delivered => {
                if status.is_some() || !end_stream {
                    self.violation(
                        stream,
                        h2::Reason::PROTOCOL_ERROR,
                        "a second head, or trailers without END_STREAM",
                    );
                    return Ok(());
                }
                state.trailers = Some(fields);
            }
        }
        self.received(stream, end_stream);
        Ok(())
    }

    /// Wakes the stream's reader after something arrived for it; END_STREAM closes its
    /// receiving side.
    fn received(&mut self, stream: u32, end_stream: bool) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if end_stream {
            state.recv_closed = true;
        }
        if let Some(waker) = state.recv_waker.take() {
            waker.wake();
        }
        if end_stream {
            self.settle(stream);
        }
    }

    fn apply_settings(&mut self, payload: &[u8]) -> Result<(), (h2::Reason, String)> {
        if !payload.len().is_multiple_of(6) {
            return Err((h2::Reason::FRAME_SIZE_ERROR, "malformed SETTINGS".into()));
        }
        for entry in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match u16::from_be_bytes([entry[0], entry[1]]) {
                SETTINGS_MAX_CONCURRENT_STREAMS => {
                    self.peer_max_streams = value;
                    self.wake_open_waiters();
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    if i64::from(value) > MAX_WINDOW {
                        return Err((h2::Reason::FLOW_CONTROL_ERROR, "initial window".into()));
                    }
                    let delta = i64::from(value) - i64::from(self.peer_initial_window);
                    self.peer_initial_window = value;
                    let mut overflow = false;
                    for state in self.streams.values_mut() {
                        state.send_window += delta;
                        overflow |= state.send_window > MAX_WINDOW;
                        if let Some(waker) = state.send_waker.take() {
                            waker.wake();
                        }
                    }
                    // RFC 9113 §6.9.2: a change that takes any stream's window past 2^31-1
                    // is a connection error.
                    if overflow {
                        return Err((
                            h2::Reason::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE overflows an open stream's window".into(),
                        ));
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&value) {
                        return Err(protocol("SETTINGS_MAX_FRAME_SIZE out of range"));
                    }
                    self.peer_max_frame = value as usize;
                }
                // RFC 8441 §3: 0 or 1, and once 1 it may not go back to 0.
                SETTINGS_ENABLE_CONNECT_PROTOCOL => match value {
                    1 => self.peer_connect_protocol = true,
                    0 if !self.peer_connect_protocol => {}
                    _ => return Err(protocol("bad SETTINGS_ENABLE_CONNECT_PROTOCOL")),
                },
                // The header table size only matters to an encoder that indexes; ours never
                // adds to the upstream's table.
                _ => {}
            }
        }
        if !self.peer_settings_seen {
            self.peer_settings_seen = true;
            self.wake_open_waiters();
        }
        Ok(())
    }

    /// Counts an acknowledgement about to be queued; too many unwritten is a flood.
    fn acknowledged(&mut self) -> Result<(), (h2::Reason, String)> {
        self.unwritten_acks += 1;
        if self.unwritten_acks > MAX_UNWRITTEN_ACKS {
            // Many frames in one read are not yet a flood: write what is queued, and count
            // only what the upstream leaves unread.
            if let (Some(waker), true) = (self.driver.clone(), self.io.is_some()) {
                self.write_out(&mut Context::from_waker(&waker));
            }
        }
        if self.unwritten_acks > MAX_UNWRITTEN_ACKS {
            return Err((
                h2::Reason::ENHANCE_YOUR_CALM,
                format!("over {MAX_UNWRITTEN_ACKS} SETTINGS/PING acknowledgements unread"),
            ));
        }
        Ok(())
    }

    fn wake_open_waiters(&mut self) {
        for waker in self.open_waiters.drain(..) {
            waker.wake();
        }
    }

    /// Resets a stream from our side (a protocol violation by the upstream, or our cancel).
    fn reset_stream(&mut self, stream: u32, reason: h2::Reason) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if state.failure.is_none() {
            state.failure = Some(Failure::Reset(reason));
        }
        state.send_closed = true;
        state.wake();
        self.out.frame_header(4, RST_STREAM, 0, stream);
        self.out
            .small
            .extend_from_slice(&u32::from(reason).to_be_bytes());
        self.settle(stream);
        self.wake_driver();
    }

    /// Stops counting a stream against the upstream's limit once both sides are done.
    fn settle(&mut self, stream: u32) {
        let Some(state) = self.streams.get_mut(&stream) else {
            return;
        };
        if state.open && ((state.recv_closed && state.send_closed) || state.failure.is_some()) {
            state.open = false;
            self.open_streams -= 1;
            self.wake_open_waiters();
        }
    }

    fn credit_connection(&mut self, bytes: u32) {
        if bytes == 0 {
            return;
        }
        self.recv_unacked += bytes;
        if self.recv_unacked >= self.settings.connection_window / 2 {
            let increment = std::mem::take(&mut self.recv_unacked);
            self.recv_window += i64::from(increment);
            self.out.frame_header(4, WINDOW_UPDATE, 0, 0);
            self.out.small.extend_from_slice(&increment.to_be_bytes());
            self.wake_driver();
        }
    }

    /// Resets a stream for the upstream's violation (a stream error): its caller hears
    /// "upstream protocol error"; the connection and its other streams go on.
    fn violation(&mut self, stream: u32, reason: h2::Reason, what: &str) {
        tracing::debug!(stream, ?reason, what, "upstream h2 stream error");
        if let Some(state) = self.streams.get_mut(&stream) {
            if state.failure.is_none() {
                state.failure = Some(Failure::Violation(format!("{what} ({reason:?})").into()));
            }
        }
        self.reset_stream(stream, reason);
    }

    /// Ends the connection: GOAWAY with `reason`, every unfinished stream failed.
    fn connection_error(&mut self, reason: h2::Reason, text: String) {
        tracing::debug!(?reason, %text, "upstream h2 protocol error");
        let last = self.next_id.saturating_sub(2);
        let failure = Failure::Violation(format!("{text} ({reason:?})").into());
        let text = format!("upstream h2 protocol error: {text}");
        self.out.frame_header(8 + text.len(), GOAWAY, 0, 0);
        self.out.small.extend_from_slice(&last.to_be_bytes());
        self.out
            .small
            .extend_from_slice(&u32::from(reason).to_be_bytes());
        self.out.small.extend_from_slice(text.as_bytes());
        // Best effort: the GOAWAY goes out if the socket takes it now.
        if let (Some(waker), true) = (self.driver.clone(), self.io.is_some()) {
            self.write_out(&mut Context::from_waker(&waker));
        }
        self.fail(failure);
    }

    /// Fails the connection and every stream whose response is not complete.
    fn fail(&mut self, failure: Failure) {
        if self.failure.is_none() {
            self.failure = Some(failure.clone());
        }
        for state in self.streams.values_mut() {
            if !state.recv_closed && state.failure.is_none() {
                state.failure = Some(failure.clone());
            }
            state.send_closed = true;
            state.wake();
            if state.open {
                state.open = false;
                self.open_streams -= 1;
            }
        }
        self.wake_open_waiters();
        self.wake_driver();
    }

    fn put_header_block(&mut self, stream: u32, block: &[u8], end_stream: bool) {
        wire::put_header_block(
            &mut self.out.small,
            self.peer_max_frame,
            stream,
            block,
            end_stream,
        );
    }
}

/// One stream on a [`Connection`]; dropping the last handle before both sides have ended
/// resets it with CANCEL.
pub(crate) struct StreamRef {
    shared: Arc<Shared>,
    id: u32,
}

impl StreamRef {
    /// A second handle on the same stream (for the request body's pump).
    pub(crate) fn clone_ref(&self) -> StreamRef {
        let mut inner = self.shared.lock();
        if let Some(state) = inner.streams.get_mut(&self.id) {
            state.refs += 1;
        }
        StreamRef {
            shared: self.shared.clone(),
            id: self.id,
        }
    }

    /// The response head, once it arrives.
    pub(crate) fn poll_response(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Response<()>, Failure>> {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Failure::Reset(h2::Reason::CANCEL)));
        };
        match std::mem::replace(&mut state.head, Head::Delivered) {
            Head::Arrived(response) => return Poll::Ready(Ok(response)),
            other => state.head = other,
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Err(failure.clone()));
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The response body's next frame: data already arrived (joined up to COALESCE_LIMIT),
    /// then trailers. Credit goes back to the upstream as data is handed on, so the
    /// client's pace is the upstream's pace.
    pub(crate) fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(None);
        };
        if let Some(chunk) = state.data.pop_front() {
            let chunk = chunk.freeze();
            let length = chunk.len() as u32;
            state.unacked += length;
            let stream_window = inner.settings.stream_window;
            let state = inner.streams.get_mut(&self.id).expect("present");
            if state.unacked >= stream_window / 2 && !state.recv_closed && state.failure.is_none() {
                let increment = std::mem::take(&mut state.unacked);
                state.recv_window += i64::from(increment);
                inner.out.frame_header(4, WINDOW_UPDATE, 0, self.id);
                inner.out.small.extend_from_slice(&increment.to_be_bytes());
                inner.wake_driver();
            }
            inner.credit_connection(length);
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Some(Err(failure.clone().into_body_error())));
        }
        if let Some(trailers) = state.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if state.recv_closed {
            return Poll::Ready(None);
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        let inner = self.shared.lock();
        inner
            .streams
            .get(&self.id)
            .is_none_or(|state| state.failure.is_none() && state.response_done())
    }

    /// Sends as much of `data` as both windows allow, taking it from the front; ready once
    /// all of it is queued (with END_STREAM on the last frame when `end_stream`). An error
    /// means the upstream no longer wants the request body.
    pub(crate) fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end_stream: bool,
    ) -> Poll<Result<(), ()>> {
        if data.is_empty() && !end_stream {
            return Poll::Ready(Ok(()));
        }
        let mut inner = self.shared.lock();
        let Inner {
            streams,
            out,
            send_window: connection_window,
            peer_max_frame,
            ..
        } = &mut *inner;
        let Some(state) = streams.get_mut(&self.id) else {
            return Poll::Ready(Err(()));
        };
        if state.send_closed || state.failure.is_some() {
            return Poll::Ready(Err(()));
        }
        loop {
            let room = state.send_window.min(*connection_window).max(0) as usize;
            let take = data.len().min(room).min(*peer_max_frame);
            if take == 0 && !data.is_empty() {
                break;
            }
            let chunk = data.split_to(take);
            let last = data.is_empty();
            state.send_window -= take as i64;
            *connection_window -= take as i64;
            let flags = if last && end_stream { END_STREAM } else { 0 };
            out.frame_header(chunk.len(), DATA, flags, self.id);
            out.payload(chunk);
            if last {
                break;
            }
        }
        let done = data.is_empty();
        if !done {
            state.send_waker = Some(cx.waker().clone());
        } else if end_stream {
            state.send_closed = true;
            inner.settle(self.id);
        }
        inner.wake_driver();
        if done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Ready when the upstream no longer wants the request body (reset, or its end).
    pub(crate) fn poll_send_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.shared.lock();
        match inner.streams.get_mut(&self.id) {
            Some(state) if !state.send_closed && state.failure.is_none() => {
                state.send_waker = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Ends the request body with trailers.
    pub(crate) fn send_trailers(&mut self, trailers: &HeaderMap) {
        let mut block = Vec::with_capacity(64);
        for (name, value) in trailers {
            if !is_connection_specific(name) {
                put_literal_field(&mut block, name.as_str(), value.as_bytes());
            }
        }
        let mut inner = self.shared.lock();
        match inner.streams.get_mut(&self.id) {
            Some(state) if !state.send_closed && state.failure.is_none() => {
                state.send_closed = true;
            }
            _ => return,
        }
        inner.put_header_block(self.id, &block, true);
        inner.settle(self.id);
        inner.wake_driver();
    }

    /// Resets the stream (the client's own reset, passed on with its reason).
    pub(crate) fn reset(&mut self, reason: h2::Reason) {
        let mut inner = self.shared.lock();
        let live = inner.streams.get(&self.id).is_some_and(|state| {
            state.failure.is_none() && !(state.recv_closed && state.send_closed)
        });
        if live {
            inner.reset_stream(self.id, reason);
        }
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return;
        };
        state.refs -= 1;
        if state.refs > 0 {
            return;
        }
        let unfinished = state.failure.is_none() && !(state.recv_closed && state.send_closed);
        // What the upstream sent and nobody will read goes back to its connection window.
        let buffered: usize = state.data.iter().map(BytesMut::len).sum();
        if unfinished {
            inner.reset_stream(self.id, h2::Reason::CANCEL);
        }
        inner.settle(self.id);
        inner.streams.remove(&self.id);
        inner.credit_connection(buffered as u32);
        if inner.going_away.is_some() && inner.streams.is_empty() {
            inner.wake_driver();
        }
    }
}

/// The HPACK decoder for one upstream connection: its dynamic table may grow to what our
/// SETTINGS advertise and no further.
fn response_decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(HEADER_TABLE_SIZE as usize);
    decoder
}

/// A decoded response header block.
struct DecodedBlock {
    status: Option<StatusCode>,
    fields: HeaderMap,
    /// Why the block cannot be used: the stream is reset, the connection goes on (the HPACK
    /// table is in step, the whole block was decoded).
    problem: Option<(h2::Reason, &'static str)>,
}

/// Decodes a response header block within `limits`, checked field by field as the decoder
/// hands them over: past a limit nothing more is stored (what was is dropped), so an HPACK
/// bomb costs the decoding of its encoded bytes and no more. An HPACK error (a size update
/// past our table size included) is a connection error, COMPRESSION_ERROR.
fn decode_response_block(
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &[u8],
    limits: HeaderLimits,
) -> Result<DecodedBlock, (h2::Reason, String)> {
    let mut status: Option<StatusCode> = None;
    let mut fields = HeaderMap::new();
    let mut problem: Option<(h2::Reason, &'static str)> = None;
    let mut count = 0usize;
    let mut size = 0usize;
    let decoded = decoder.decode_with_cb(block, |name, value| {
        if problem.is_some() {
            return;
        }
        count += 1;
        size = size.saturating_add(name.len() + value.len() + 32);
        if count > limits.max_fields.min(MAX_RESPONSE_HEADERS_CAP) || size > limits.max_bytes {
            problem = Some((
                h2::Reason::ENHANCE_YOUR_CALM,
                if size > limits.max_bytes {
                    "response header list over the size limit"
                } else {
                    "response header fields over the count limit"
                },
            ));
            fields = HeaderMap::new();
            return;
        }
        let malformed = |what| Some((h2::Reason::PROTOCOL_ERROR, what));
        if name.first() == Some(&b':') {
            if &*name == b":status" && status.is_none() && fields.is_empty() {
                status = StatusCode::from_bytes(&value).ok();
                if status.is_none() {
                    problem = malformed("invalid :status");
                }
            } else {
                problem = malformed("unexpected pseudo-header");
            }
            return;
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            problem = malformed("uppercase header name");
            return;
        }
        match (
            HeaderName::from_bytes(&name),
            HeaderValue::from_bytes(&value),
        ) {
            (Ok(name), Ok(value)) => {
                if is_connection_specific(&name) {
                    problem = malformed("connection-specific header");
                } else if fields.try_append(name, value).is_err() {
                    problem = Some((h2::Reason::ENHANCE_YOUR_CALM, "header map full"));
                }
            }
            _ => problem = malformed("invalid header field"),
        }
    });
    if let Err(error) = decoded {
        return Err((h2::Reason::COMPRESSION_ERROR, format!("hpack: {error:?}")));
    }
    Ok(DecodedBlock {
        status,
        fields,
        problem,
    })
}

fn protocol(text: &str) -> (h2::Reason, String) {
    (h2::Reason::PROTOCOL_ERROR, text.to_string())
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// The payload without padding (and without the priority fields HEADERS may carry).
fn unpad(flags: u8, payload: &[u8], skip: usize) -> Result<&[u8], (h2::Reason, String)> {
    wire::unpad(flags, payload, skip).ok_or_else(|| protocol("padding longer than the frame"))
}

/// Headers RFC 9113 forbids in HTTP/2 (§8.2.2).
fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// The request head as an HPACK block of literals that never enter the upstream's table
/// (names from the static table where it has them). No encoder state, so no table to keep
/// in step; values that carry credentials are marked never-indexed for any intermediary.
fn encode_request_head(head: &http::request::Parts, out: &mut Vec<u8>) {
    match head.method {
        http::Method::GET => out.push(0x80 | 2),
        http::Method::POST => out.push(0x80 | 3),
        ref other => put_indexed_name(out, 0x00, 2, other.as_str().as_bytes()),
    }
    match head.uri.scheme_str() {
        Some("https") => out.push(0x80 | 7),
        _ => out.push(0x80 | 6),
    }
    if let Some(authority) = head.uri.authority() {
        put_indexed_name(out, 0x00, 1, authority.as_str().as_bytes());
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if path == "/" {
        out.push(0x80 | 4);
    } else {
        put_indexed_name(out, 0x00, 4, path.as_bytes());
    }
    if head.method == http::Method::CONNECT {
        if let Some(ConnectProtocol(protocol)) = head.extensions.get::<ConnectProtocol>() {
            out.push(0x00);
            wire::put_string(out, b":protocol");
            wire::put_string(out, protocol.as_bytes());
        }
    }
    for (name, value) in &head.headers {
        if is_connection_specific(name) || (name == http::header::TE && value != "trailers") {
            continue;
        }
        put_literal_field(out, name.as_str(), value.as_bytes());
    }
}

fn put_literal_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let pattern = if matches!(name, "authorization" | "cookie" | "authn-token") {
        0x10 // never indexed
    } else {
        0x00 // without indexing
    };
    match static_name_index(name) {
        Some(index) => put_indexed_name(out, pattern, index, value),
        None => {
            out.push(pattern);
            wire::put_string(out, name.as_bytes());
            wire::put_string(out, value);
        }
    }
}

fn put_indexed_name(out: &mut Vec<u8>, pattern: u8, index: usize, value: &[u8]) {
    wire::put_integer(out, pattern, 4, index);
    wire::put_string(out, value);
}

/// Names in HPACK's static table (RFC 7541 appendix A) that requests commonly carry.
fn static_name_index(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept" => 19,
        "authorization" => 23,
        "cache-control" => 24,
        "content-encoding" => 26,
        "content-length" => 28,
        "content-type" => 31,
        "cookie" => 32,
        "host" => 38,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "referer" => 51,
        "user-agent" => 58,
        "via" => 60,
        _ => return None,
    })
}

/// Entry points for the fuzz targets in `fuzz/` (not an API: no stability, no docs).
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// Decodes `data` as a run of response header blocks on one connection's decoder (each
    /// block's length is the byte before it), as the upstream's HEADERS would arrive.
    /// Panics only on a broken invariant: a decoded block over the limits.
    pub fn hpack_response_blocks(data: &[u8]) {
        let limits = HeaderLimits {
            max_fields: 100,
            max_bytes: 16 * 1024,
        };
        let mut decoder = response_decoder();
        let mut rest = data;
        while let Some((&length, tail)) = rest.split_first() {
            let (block, tail) = tail.split_at(usize::from(length).min(tail.len()));
            rest = tail;
            match decode_response_block(&mut decoder, block, limits) {
                Ok(decoded) => {
                    assert!(decoded.fields.len() <= limits.max_fields);
                    let size: usize = decoded
                        .fields
                        .iter()
                        .map(|(name, value)| name.as_str().len() + value.len() + 32)
                        .sum();
                    assert!(size <= limits.max_bytes);
                }
                // A connection error: the connection (and its decoder) ends here.
                Err(_) => return,
            }
        }
    }

    /// An upstream that sends `input` (after its SETTINGS) in reads of `chunk` bytes, then
    /// nothing more; whatever pachgate writes is discarded.
    struct Scripted {
        input: Vec<u8>,
        at: usize,
        chunk: usize,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let end = (self.at + self.chunk.min(buf.remaining())).min(self.input.len());
            if self.at == end {
                return Poll::Pending;
            }
            buf.put_slice(&self.input[self.at..end]);
            self.at = end;
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Runs an upstream h2 connection whose upstream sends `data` as its frames (after an
    /// empty SETTINGS; the first byte picks the read size): two requests are opened, one
    /// with a body, and both the response heads and bodies are read as far as they go.
    /// The driver is polled directly, without a runtime or timers.
    pub fn h2_client_frames(data: &[u8]) {
        let Some((&chunk, data)) = data.split_first() else {
            return;
        };
        let mut input = Vec::with_capacity(data.len() + 9);
        input.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        input.extend_from_slice(data);
        let io = Scripted {
            input,
            at: 0,
            chunk: usize::from(chunk).max(1) * 64,
        };
        let settings = Settings {
            stream_window: 65_535,
            connection_window: 131_070,
            write_batch: 16,
            keepalive: None,
            settings_timeout: Duration::from_secs(1),
            header_limits: HeaderLimits {
                max_fields: 100,
                max_bytes: 16 * 1024,
            },
        };
        let (connection, driving) = Connection::start(Box::new(io), settings);
        drop(driving); // polled below through `Shared`, without its timers
        let shared = connection.shared.clone();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let head = http::Request::post("http://upstream/pkg.API/Call")
            .header("content-type", "application/grpc")
            .body(())
            .expect("a valid request")
            .into_parts()
            .0;
        let mut streams: Vec<StreamRef> = Vec::new();
        let mut body = Bytes::from_static(&[0u8; 100_000]);
        for round in 0..64 {
            if streams.len() < 2 && round % 2 == 0 {
                let mut open = std::pin::pin!(connection.open(&head, streams.len() == 1));
                if let Poll::Ready(Ok(stream)) = open.as_mut().poll(&mut cx) {
                    streams.push(stream);
                }
            }
            let ended = shared.poll_drive(&mut cx).is_ready();
            if let Some(first) = streams.first_mut() {
                let _ = first.poll_send(&mut cx, &mut body, true);
            }
            for stream in &mut streams {
                let _ = stream.poll_response(&mut cx);
                while let Poll::Ready(Some(Ok(_))) = stream.poll_body(&mut cx) {}
                let _ = stream.is_end_stream();
            }
            if ended {
                break;
            }
        }
        if let Some(mut first) = streams.pop() {
            first.reset(h2::Reason::CANCEL);
        }
        drop(streams);
        drop(connection);
        let _ = shared.poll_drive(&mut cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loona_hpack::Decoder::new()
            .decode_with_cb(block, |name, value| {
                fields.push((
                    String::from_utf8(name.to_vec()).unwrap(),
                    String::from_utf8(value.to_vec()).unwrap(),
                ))
            })
            .expect("a valid HPACK block");
        fields
    }

    #[test]
    fn request_heads_decode_to_what_was_asked_without_connection_headers() {
        let long_path = format!("/pfs_v2.API/{}", "x".repeat(300));
        let request = http::Request::builder()
            .method("PUT")
            .uri(format!("https://pachd.example:1650{long_path}?q=1"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Bearer secret")
            .header("x-custom", "v".repeat(200))
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        let expected: Vec<(String, String)> = [
            (":method", "PUT".to_string()),
            (":scheme", "https".to_string()),
            (":authority", "pachd.example:1650".to_string()),
            (":path", format!("{long_path}?q=1")),
            ("content-type", "application/grpc".to_string()),
            ("te", "trailers".to_string()),
            ("authorization", "Bearer secret".to_string()),
            ("x-custom", "v".repeat(200)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        assert_eq!(decode(&block), expected);
    }

    /// What `connect_protocol_enabled` says once the upstream has sent these SETTINGS
    /// frames (each a list of id/value pairs), over an in-memory pipe.
    async fn connect_protocol_after(frames: &[&[(u16, u32)]]) -> Result<bool, Failure> {
        use tokio::io::AsyncWriteExt;
        let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let settings = Settings {
            stream_window: 65_535,
            connection_window: 65_535,
            write_batch: 16,
            keepalive: None,
            settings_timeout: Duration::from_secs(5),
            header_limits: HeaderLimits::default(),
        };
        let (connection, driving) = Connection::start(Box::new(ours), settings);
        tokio::spawn(driving);
        let mut bytes = BytesMut::new();
        for entries in frames {
            wire::put_frame_header(&mut bytes, entries.len() * 6, SETTINGS, 0, 0);
            for (id, value) in *entries {
                bytes.extend_from_slice(&id.to_be_bytes());
                bytes.extend_from_slice(&value.to_be_bytes());
            }
        }
        theirs.write_all(&bytes).await.unwrap();
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            connection.connect_protocol_enabled(),
        )
        .await
        .expect("an answer once SETTINGS arrived");
        drop(theirs);
        answer
    }

    #[tokio::test]
    async fn extended_connect_is_what_the_upstream_settings_say() {
        let enabled: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)];
        assert!(matches!(connect_protocol_after(&[enabled]).await, Ok(true)));
        let silent: &[(u16, u32)] = &[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)];
        assert!(matches!(connect_protocol_after(&[silent]).await, Ok(false)));
        let off: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 0)];
        assert!(matches!(connect_protocol_after(&[off]).await, Ok(false)));
        // RFC 8441 §3: only 0 or 1, and never back to 0: the connection fails.
        let two: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 2)];
        assert!(matches!(
            connect_protocol_after(&[two]).await,
            Err(Failure::Connection(_) | Failure::Violation(_))
        ));
        assert!(matches!(
            connect_protocol_after(&[enabled, off]).await,
            Err(Failure::Connection(_) | Failure::Violation(_))
        ));
    }

    #[test]
    fn an_extended_connect_head_carries_its_protocol_after_the_pseudo_headers() {
        let request = http::Request::builder()
            .method("CONNECT")
            .uri("http://pachd:1650/ws?x=1")
            .header("sec-websocket-version", "13")
            .extension(ConnectProtocol("websocket"))
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        assert_eq!(
            decode(&block),
            [
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":authority", "pachd:1650"),
                (":path", "/ws?x=1"),
                (":protocol", "websocket"),
                ("sec-websocket-version", "13"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // Only CONNECT takes it.
        let (mut head, ()) = http::Request::get("http://pachd/")
            .body(())
            .unwrap()
            .into_parts();
        head.extensions.insert(ConnectProtocol("websocket"));
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        assert!(!decode(&block).iter().any(|(name, _)| name == ":protocol"));
    }

    #[test]
    fn common_pseudo_headers_are_single_bytes_and_credentials_are_never_indexed() {
        let request = http::Request::builder()
            .method("GET")
            .uri("http://console/")
            .header("authorization", "Bearer secret")
            .header("te", "gzip")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        // GET, http and "/" come from the static table; `te` other than "trailers" is
        // dropped (HTTP/2 forbids it).
        assert_eq!(&block[..2], &[0x80 | 2, 0x80 | 6]);
        assert_eq!(
            decode(&block),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "console"),
                (":path", "/"),
                ("authorization", "Bearer secret"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // The authorization field's representation: literal never indexed (0x10), name
        // index 23 (15 in the 4-bit prefix, 8 after it), then the value's length.
        let at = block.len() - "Bearer secret".len() - 3;
        assert_eq!(block[at], 0x10 | 0x0f);
        assert_eq!(block[at + 1], 23 - 15);
    }
}
