//! The connection: its write buffer, the state one mutex guards, the handle that opens
//! streams, and the task that drives the socket (reads, writes, the SETTINGS deadline,
//! keepalive pings).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pachgate_h2_wire::{
    self as wire, FrameReader, DEFAULT_WINDOW, PING, PREFACE, SETTINGS, SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, WINDOW_UPDATE,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    failure::Failure,
    header_block::response_decoder,
    request_head::{encode_request_head, ExtraField, UpstreamTable},
    stream::{Head, Stream, StreamMap, StreamRef},
    Settings, DEFAULT_MAX_FRAME, HEADER_TABLE_SIZE, LAST_STREAM_ID, MAX_FRAME_IN, MAX_QUEUED_OUT,
    READS_PER_WAKE, WRITTEN_IN_PLACE,
};

/// Frames waiting for the socket: small ones copied into one buffer, large DATA payloads
/// kept as their own `Bytes` and written with vectored writes.
#[derive(Default)]
pub(crate) struct Output {
    pub(crate) chunks: VecDeque<Bytes>,
    pub(crate) small: BytesMut,
    /// Bytes of the front chunk already written.
    pub(crate) front_written: usize,
    /// Bytes in `chunks`, the front one's written part included.
    chunk_bytes: usize,
}

impl Output {
    pub(crate) fn is_empty(&self) -> bool {
        self.chunks.is_empty() && self.small.is_empty()
    }

    /// Bytes waiting for the socket.
    pub(crate) fn queued(&self) -> usize {
        self.small.len() + self.chunk_bytes - self.front_written
    }

    pub(crate) fn frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        wire::put_frame_header(&mut self.small, length, kind, flags, stream);
    }

    pub(crate) fn payload(&mut self, data: Bytes) {
        if data.len() < WRITTEN_IN_PLACE {
            self.small.extend_from_slice(&data);
        } else {
            self.seal();
            self.chunk_bytes += data.len();
            self.chunks.push_back(data);
        }
    }

    pub(crate) fn seal(&mut self) {
        if !self.small.is_empty() {
            self.chunk_bytes += self.small.len();
            self.chunks.push_back(self.small.split().freeze());
        }
    }

    pub(crate) fn poll_write<T: AsyncWrite + Unpin + ?Sized>(
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
                    if let Some(done) = self.chunks.pop_front() {
                        self.chunk_bytes -= done.len();
                    }
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
pub trait Transport: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Transport for T {}

pub(crate) struct Inner {
    pub(crate) io: Option<Box<dyn Transport>>,
    pub(crate) reader: FrameReader,
    pub(crate) out: Output,
    pub(crate) driver: Option<Waker>,
    pub(crate) streams: StreamMap,
    pub(crate) next_id: u32,
    pub(crate) open_streams: u32,
    pub(crate) open_waiters: Vec<Waker>,
    pub(crate) peer_max_streams: u32,
    pub(crate) peer_initial_window: u32,
    pub(crate) peer_max_frame: usize,
    pub(crate) peer_settings_seen: bool,
    /// The upstream's SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441): extended CONNECT, the
    /// way websockets travel over HTTP/2, is allowed.
    pub(crate) peer_connect_protocol: bool,
    pub(crate) send_window: i64,
    pub(crate) recv_window: i64,
    pub(crate) recv_unacked: u32,
    /// Response bytes received and not yet handed on, over all streams.
    pub(crate) buffered: usize,
    /// Of those, the bytes not yet credited to the connection's window (see
    /// [`Inner::buffer_limit`]); never more than `buffered`.
    pub(crate) held: usize,
    /// A request body waits for the output queue to drain below [`MAX_QUEUED_OUT`].
    pub(crate) body_waiting: bool,
    pub(crate) decoder: pachgate_h2_wire::hpack_decode::Decoder,
    /// A header block waiting for its CONTINUATIONs: stream, END_STREAM.
    pub(crate) continuing: Option<(u32, bool)>,
    /// CONTINUATION frames in the header block being read.
    pub(crate) continuations: u32,
    pub(crate) header_block: Vec<u8>,
    /// Where request heads are encoded before they are cut into frames.
    pub(crate) head_scratch: Vec<u8>,
    /// What the upstream's HPACK table holds from us (the request id's name, at most).
    pub(crate) upstream_table: UpstreamTable,
    /// Set by GOAWAY: streams above this id were refused, and no new ones open.
    pub(crate) going_away: Option<u32>,
    pub(crate) failure: Option<Failure>,
    /// A frame other than a PING ACK arrived since the keepalive timer last looked.
    pub(crate) heard: bool,
    /// Some output reached the socket since the keepalive timer last looked.
    pub(crate) wrote: bool,
    /// At the keepalive timer's last look, output was waiting and none had been written
    /// since the look before.
    pub(crate) write_stalled: bool,
    pub(crate) ping_outstanding: bool,
    pub(crate) pong_received: bool,
    /// Acknowledgements queued since the output was last written out whole.
    pub(crate) unwritten_acks: u32,
    /// Requests queued since the connection's task last wrote.
    pub(crate) queued: usize,
    pub(crate) settings: Settings,
}

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    /// Set once no new stream may open here: the next request opens a new connection.
    pub(crate) closed: AtomicBool,
}

/// The handle that opens streams on one upstream h2 connection. Dropping it retires the
/// connection: it closes once its streams have ended.
pub struct Connection {
    pub(crate) shared: Arc<Shared>,
}

impl Connection {
    /// Starts a connection on `io` (the preface and our SETTINGS are queued, not awaited);
    /// the returned future drives it and ends when the connection does.
    pub fn start(
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
            buffered: 0,
            held: 0,
            body_waiting: false,
            decoder: response_decoder(),
            continuing: None,
            continuations: 0,
            header_block: Vec::new(),
            head_scratch: Vec::new(),
            upstream_table: UpstreamTable::default(),
            going_away: None,
            failure: None,
            heard: false,
            wrote: false,
            write_stalled: false,
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

    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the upstream has sent its SETTINGS (its connection preface): before that its
    /// HTTP/2 layer has not started, so it has processed no stream.
    pub fn peer_spoke(&self) -> bool {
        self.shared.lock().peer_settings_seen
    }

    /// Takes the connection out of use: no new streams; it ends once its streams have.
    pub fn retire(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut inner = self.shared.lock();
        inner.going_away.get_or_insert(LAST_STREAM_ID);
        inner.wake_driver();
    }

    /// Opens a stream with the request's head (waiting while the upstream's stream limit is
    /// reached). `Err(Failure::Refused)` means nothing was sent: the caller may try another
    /// connection.
    pub async fn open(
        &self,
        head: &http::request::Parts,
        end_stream: bool,
    ) -> Result<StreamRef, Failure> {
        self.open_with(head, None, end_stream).await
    }

    /// [`open`](Self::open), with `extra` sent after the head's own fields.
    pub async fn open_with(
        &self,
        head: &http::request::Parts,
        extra: Option<ExtraField<'_>>,
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
            // A limit of 0 opens nothing (RFC 9113 §5.1.2): waiting would be forever, so the
            // request is refused here, unsent, and the connection taken out of use.
            if limit == 0 {
                self.shared.closed.store(true, Ordering::Release);
                return Poll::Ready(Err(Failure::Refused));
            }
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
            encode_request_head(head, extra, &mut inner.upstream_table, &mut block);
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
    pub async fn connect_protocol_enabled(&self) -> Result<bool, Failure> {
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
pub struct ConnectProtocol(pub &'static str);

impl Drop for Connection {
    fn drop(&mut self) {
        self.retire();
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection task's poll: ready when the connection has ended.
    pub(crate) fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
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
    pub(crate) fn keepalive_tick(
        &self,
        every: Duration,
        timeout: Duration,
    ) -> Result<Duration, Failure> {
        let mut inner = self.lock();
        // Frames from the upstream prove it alive but not that it reads: one that sends and
        // never reads would hold our requests and uploads forever. Output waiting at two
        // looks running with nothing written since the look before them (between one and two
        // intervals, 30-60 s by default, after the last write) ends the connection.
        let waiting = !inner.out.is_empty();
        let progressed = std::mem::take(&mut inner.wrote);
        let stalled = waiting && !progressed;
        if stalled && inner.write_stalled {
            let failure = Failure::Connection(
                format!(
                    "the upstream read nothing we sent over two keepalive intervals ({:?} each)",
                    every.min(timeout)
                )
                .into(),
            );
            inner.fail(failure.clone());
            return Err(failure);
        }
        inner.write_stalled = stalled;
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
pub(crate) async fn drive(shared: Arc<Shared>, settings: Settings) -> Result<(), Failure> {
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
pub(crate) struct DriverGone(Arc<Shared>);

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
    pub(crate) fn request_queued(&mut self) {
        self.queued += 1;
        if self.queued >= self.settings.write_batch {
            self.queued = 0;
            if self.write_out_here() {
                return;
            }
        }
        self.wake_driver();
    }

    /// Writes the output from the calling task, as far as the socket takes it, with the
    /// connection task's waker registered for the rest; `false` before that task has run.
    pub(crate) fn write_out_here(&mut self) -> bool {
        let Some(waker) = self.driver.clone() else {
            return false;
        };
        self.write_out(&mut Context::from_waker(&waker));
        true
    }

    pub(crate) fn wake_driver(&self) {
        if let Some(waker) = &self.driver {
            waker.wake_by_ref();
        }
    }

    pub(crate) fn write_out(&mut self, cx: &mut Context<'_>) {
        let Some(io) = self.io.as_mut() else {
            return;
        };
        if self.out.is_empty() {
            self.unwritten_acks = 0;
            return;
        }
        let before = self.out.queued();
        let written = self.out.poll_write(io, cx);
        self.wrote |= self.out.queued() < before;
        match written {
            Poll::Ready(Ok(())) => self.unwritten_acks = 0,
            Poll::Ready(Err(e)) => self.fail(Failure::Connection(
                format!("upstream write failed: {e}").into(),
            )),
            Poll::Pending => {}
        }
        // Request bodies held back by a full queue go on once half of it has been written.
        if self.body_waiting && self.out.queued() <= MAX_QUEUED_OUT / 2 {
            self.body_waiting = false;
            for state in self.streams.values_mut() {
                if let Some(waker) = state.send_waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Reads once into the buffer behind any partial frame.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let io = self.io.as_mut().expect("read only while open");
        match self.reader.poll_read(io, cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err("upstream closed the connection".into())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("upstream read failed: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }
}
