//! The connection: the state one mutex guards and the handle that opens streams. The task
//! that drives the socket is `driver`'s, the frames waiting for it `output`'s.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use pachgate_h2_wire::{
    FrameReader, DEFAULT_WINDOW, PREFACE, SETTINGS, SETTINGS_ENABLE_PUSH,
    SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE, WINDOW_UPDATE,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{
    driver,
    failure::Failure,
    header_block::response_decoder,
    output::Output,
    request_head::{encode_request_head, ExtraField, UpstreamTable},
    stream::{Head, Stream, StreamMap, StreamRef},
    Settings, DEFAULT_MAX_FRAME, HEADER_TABLE_SIZE, LAST_STREAM_ID, MAX_FRAME_IN, MAX_QUEUED_OUT,
};

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
    /// A request body, or a new stream's head, waits for the output queue to drain below
    /// [`MAX_QUEUED_OUT`].
    pub(crate) body_waiting: bool,
    /// A stream's sender parked (for send window, or for its end) since a connection-level
    /// WINDOW_UPDATE last woke them: only then does one look at every stream.
    pub(crate) senders_parked: bool,
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
    /// Where each acknowledgement still in the output queue ends, as a count of the bytes
    /// ever queued: those up to [`Inner::written_total`] have gone out.
    pub(crate) unwritten_acks: std::collections::VecDeque<u64>,
    /// Bytes ever written to the socket.
    pub(crate) written_total: u64,
    /// Requests queued since the connection's task last wrote.
    pub(crate) queued: usize,
    pub(crate) settings: Settings,
}

pub(crate) struct Shared {
    pub(crate) inner: Mutex<Inner>,
    /// Set once no new stream may open here: the next request opens a new connection.
    pub(crate) closed: AtomicBool,
    /// Set by the first caller of [`Connection::first_to_report_failure`].
    pub(crate) failure_reported: AtomicBool,
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
            senders_parked: false,
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
            unwritten_acks: std::collections::VecDeque::new(),
            written_total: 0,
            queued: 0,
            settings,
        };
        let shared = Arc::new(Shared {
            inner: Mutex::new(inner),
            closed: AtomicBool::new(false),
            failure_reported: AtomicBool::new(false),
        });
        let driving = shared.clone();
        (Connection { shared }, driver::drive(driving, settings))
    }

    pub fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire)
    }

    /// Whether the upstream has sent its SETTINGS (its connection preface): before that its
    /// HTTP/2 layer has not started, so it has processed no stream.
    pub fn peer_spoke(&self) -> bool {
        self.shared.lock().peer_settings_seen
    }

    /// `true` for the first caller only: when the connection fails, every stream on it
    /// learns so, and the failure is to be counted (against the address) once.
    pub fn first_to_report_failure(&self) -> bool {
        !self.shared.failure_reported.swap(true, Ordering::Relaxed)
    }

    /// Takes the connection out of use: no new streams; it ends once its streams have.
    pub fn retire(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let mut inner = self.shared.lock();
        inner.going_away.get_or_insert(LAST_STREAM_ID);
        inner.wake_open_waiters();
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
            // An upstream that reads slowly (or not at all) must not have every request's
            // head queued for it without end: past the queue's limit a new stream waits,
            // as a request body does, until half of the queue has been written.
            if inner.out.queued() >= MAX_QUEUED_OUT {
                inner.body_waiting = true;
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
                    head_request: head.method == http::Method::HEAD,
                    connect_request: head.method == http::Method::CONNECT,
                    length_due: None,
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
                reader: true,
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
}
