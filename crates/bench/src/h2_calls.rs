//! A purpose-built h2 client connection for gRPC load: one task drives every call on its
//! connection, the request's header block is HPACK-encoded once per connection, and reads and
//! writes are batched per wake-up.
//!
//! The h2 crate's client keeps, per call, a task of ours, a stream slab entry, a `HeaderMap`
//! built and HPACK-encoded, another decoded, and wake-ups between the call's task and the
//! connection's; h2load does none of that, and cost less CPU per call than the generator did
//! (benches/README.md). This connection speaks only what a gRPC call needs — HEADERS, DATA,
//! trailers, both levels of flow control, SETTINGS, PING, RST_STREAM and GOAWAY — and decodes
//! every response header block with a full HPACK decoder (h2-wire's, the one pachgate's
//! upstream client uses), so any server's dynamic table and Huffman coding are understood.

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use pachgate_h2_wire::{
    put_frame_header, put_header_block, put_integer, put_string, FrameReader, Next, ACK,
    CONTINUATION, DATA, DEFAULT_HEADER_TABLE_SIZE, DEFAULT_MAX_FRAME, DEFAULT_WINDOW, END_HEADERS,
    END_STREAM, GOAWAY, HEADERS, PING, PREFACE, PRIORITY, PUSH_PROMISE, RST_STREAM, SETTINGS,
    SETTINGS_ENABLE_PUSH, SETTINGS_HEADER_TABLE_SIZE, SETTINGS_INITIAL_WINDOW_SIZE,
    SETTINGS_MAX_CONCURRENT_STREAMS, SETTINGS_MAX_FRAME_SIZE, WINDOW_UPDATE,
};
use tokio::io::{AsyncRead, AsyncWrite};

const CANCEL: u32 = 0x8;

/// Our receive windows and largest frame: large and fixed, as the generator's earlier h2
/// crate client set them, so targets see the same settings as in earlier runs.
const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
const MAX_FRAME: u32 = 256 * 1024;
/// RFC 7541's default, until the server's SETTINGS say otherwise.
const DEFAULT_TABLE_SIZE: usize = DEFAULT_HEADER_TABLE_SIZE as usize;
/// HPACK's per-entry overhead in the dynamic table size (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Request headers beyond the fixed ones: (lower-case name, value).
pub type Metadata = Vec<(Vec<u8>, Vec<u8>)>;

/// What every call on a connection sends.
pub struct CallSpec {
    pub https: bool,
    pub authority: String,
    pub path: String,
    /// Extra request headers (gRPC metadata), lower-case names.
    pub metadata: Metadata,
    /// The request body: one length-prefixed gRPC message.
    pub body: Bytes,
}

/// A finished call: when it started, and its response messages or what went wrong.
pub type Completion = (Instant, Result<u64, String>);

/// The request header block, encoded once: the first call inserts the varying fields into
/// the server's HPACK table, later calls name them by index (a header block of a few bytes).
struct RequestBlocks {
    first: Vec<u8>,
    repeat: Vec<u8>,
    /// Dynamic table bytes the first block claims on the server.
    table_bytes: usize,
}

impl RequestBlocks {
    fn encode(spec: &CallSpec, peer_table_size: usize) -> Self {
        // (static-table index of the name, or 0 for a literal name; name; value)
        let mut fields: Vec<(usize, &[u8], &[u8])> = vec![
            (1, b":authority", spec.authority.as_bytes()),
            (4, b":path", spec.path.as_bytes()),
            (31, b"content-type", b"application/grpc"),
            (0, b"te", b"trailers"),
        ];
        for (name, value) in &spec.metadata {
            fields.push((0, name, value));
        }
        let table_bytes: usize = fields
            .iter()
            .map(|(_, name, value)| ENTRY_OVERHEAD + name.len() + value.len())
            .sum();
        let scheme = if spec.https { 0x87 } else { 0x86 };
        let mut first = Vec::new();
        if peer_table_size < DEFAULT_TABLE_SIZE {
            // The server shrank its table: an encoder must say it follows (RFC 7541 §4.2).
            put_integer(&mut first, 0x20, 5, peer_table_size);
        }
        let mut repeat = Vec::new();
        for block in [&mut first, &mut repeat] {
            block.push(0x83); // indexed field 3, :method POST
            block.push(scheme);
        }
        let indexing = table_bytes <= peer_table_size;
        for (static_index, name, value) in &fields {
            // With indexing: literal with incremental indexing (6-bit prefix, 0x40);
            // without: literal without indexing (4-bit prefix, 0x00), sent every time.
            let (pattern, prefix) = if indexing { (0x40, 6) } else { (0x00, 4) };
            let mut literal = Vec::new();
            put_integer(&mut literal, pattern, prefix, *static_index);
            if *static_index == 0 {
                put_string(&mut literal, name);
            }
            put_string(&mut literal, value);
            first.extend_from_slice(&literal);
            if !indexing {
                repeat.extend_from_slice(&literal);
            }
        }
        if indexing {
            // The newest entry has index 62; the first inserted is the oldest.
            for position in 0..fields.len() {
                put_integer(&mut repeat, 0x80, 7, 62 + fields.len() - 1 - position);
            }
        }
        RequestBlocks {
            first,
            repeat,
            table_bytes: if indexing { table_bytes } else { 0 },
        }
    }
}

/// Request-body chunks of at least this size are written from the body itself (vectored)
/// instead of being copied into the write buffer.
const WRITTEN_IN_PLACE: usize = 4096;

/// Frames waiting to be written, in order: the sealed parts, then `buf`. A large request-body
/// slice is queued by reference (written vectored, never copied) after the bytes before it,
/// which are sealed off (split, not copied) ahead of it.
#[derive(Default)]
struct Output {
    /// Bytes queued behind everything sealed.
    buf: BytesMut,
    /// Sealed parts, oldest first; each shrinks as it is written.
    sealed: VecDeque<Bytes>,
}

impl Output {
    fn put_in_place(&mut self, slice: Bytes) {
        if !self.buf.is_empty() {
            self.sealed.push_back(self.buf.split().freeze());
        }
        self.sealed.push_back(slice);
    }

    /// Fills `slices` with what is not written yet, in order; returns how many.
    fn queued<'a>(&'a self, slices: &mut [io::IoSlice<'a>]) -> usize {
        let parts = self.sealed.iter().map(|part| &part[..]);
        let parts = parts.chain([&self.buf[..]]).filter(|part| !part.is_empty());
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = io::IoSlice::new(part);
            count += 1;
        }
        count
    }

    /// Marks the next `n` bytes as written.
    fn advance(&mut self, mut n: usize) {
        while let Some(front) = self.sealed.front_mut() {
            let take = n.min(front.len());
            front.advance(take);
            n -= take;
            if !front.is_empty() {
                return;
            }
            self.sealed.pop_front();
        }
        self.buf.advance(n);
    }
}

/// One call in flight.
struct Call {
    started: Instant,
    /// Request body bytes already sent.
    body_sent: usize,
    send_window: i64,
    /// Response bytes received and not yet returned to the server's stream window.
    unacknowledged: u32,
    /// The response's `:status`, once its headers arrived.
    status: Option<u16>,
    messages: MessageCounter,
}

struct PeerSettings {
    max_concurrent_streams: u32,
    initial_window: u32,
    max_frame: u32,
    table_size: usize,
}

/// One h2 connection and the calls running on it.
pub struct Connection<S> {
    io: S,
    spec: std::sync::Arc<CallSpec>,
    reader: FrameReader,
    out: Output,
    needs_flush: bool,
    decoder: pachgate_h2_wire::hpack_decode::Decoder,
    /// A header block split over CONTINUATION frames: its stream, END_STREAM, the bytes.
    continuing: Option<(u32, bool)>,
    header_block: Vec<u8>,
    calls: HashMap<u32, Call>,
    /// Calls whose request body waits for flow-control credit, oldest first.
    blocked: VecDeque<u32>,
    next_stream: u32,
    peer: PeerSettings,
    peer_settings_seen: bool,
    send_window: i64,
    unacknowledged: u32,
    requests: Option<RequestBlocks>,
    /// GOAWAY arrived: no new calls.
    going_away: bool,
    /// Finished calls not yet taken by the driver.
    completions: Vec<Completion>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the preface and our settings, and waits for the server's settings.
    pub async fn handshake(io: S, spec: std::sync::Arc<CallSpec>) -> Result<Self, String> {
        let mut connection = Connection {
            io,
            spec,
            reader: FrameReader::new(64 * 1024, MAX_FRAME as usize),
            out: Output {
                buf: BytesMut::with_capacity(64 * 1024),
                sealed: VecDeque::new(),
            },
            needs_flush: false,
            decoder: pachgate_h2_wire::hpack_decode::Decoder::new(DEFAULT_TABLE_SIZE),
            continuing: None,
            header_block: Vec::new(),
            calls: HashMap::new(),
            blocked: VecDeque::new(),
            next_stream: 1,
            peer: PeerSettings {
                max_concurrent_streams: u32::MAX,
                initial_window: DEFAULT_WINDOW,
                max_frame: DEFAULT_MAX_FRAME,
                table_size: DEFAULT_TABLE_SIZE,
            },
            peer_settings_seen: false,
            send_window: DEFAULT_WINDOW as i64,
            unacknowledged: 0,
            requests: None,
            going_away: false,
            completions: Vec::new(),
        };
        connection.out.buf.extend_from_slice(PREFACE);
        let settings = [
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, STREAM_WINDOW),
            (SETTINGS_MAX_FRAME_SIZE, MAX_FRAME),
        ];
        connection.put_frame_header(settings.len() * 6, SETTINGS, 0, 0);
        for (id, value) in settings {
            connection.out.buf.extend_from_slice(&id.to_be_bytes());
            connection.out.buf.extend_from_slice(&value.to_be_bytes());
        }
        connection.put_window_update(0, CONNECTION_WINDOW - DEFAULT_WINDOW);
        poll_fn(|cx| {
            while !connection.peer_settings_seen {
                std::task::ready!(connection.poll_io(cx))?;
            }
            Poll::Ready(Ok::<_, String>(()))
        })
        .await?;
        connection.requests = Some(RequestBlocks::encode(
            &connection.spec,
            connection.peer.table_size,
        ));
        Ok(connection)
    }

    /// Whether another call may start: the server's stream limit and ours, no GOAWAY.
    pub fn can_start(&self, streams: usize) -> bool {
        self.accepting()
            && self.calls.len() < streams.min(self.peer.max_concurrent_streams as usize)
    }

    /// Whether this connection may ever start another call (no GOAWAY, stream ids left).
    pub fn accepting(&self) -> bool {
        !self.going_away && self.next_stream <= i32::MAX as u32
    }

    pub fn active(&self) -> usize {
        self.calls.len()
    }

    pub fn take_completions(&mut self) -> std::vec::Drain<'_, Completion> {
        self.completions.drain(..)
    }

    /// Starts a call, measured from `started`: its HEADERS, and as much of its body as the
    /// windows allow.
    pub fn start(&mut self, started: Instant) {
        let stream = self.next_stream;
        self.next_stream += 2;
        let requests = self
            .requests
            .as_ref()
            .expect("handshake encoded the request");
        // Stream 1 carries the first call, which fills the server's table.
        let block = if stream == 1 {
            &requests.first
        } else {
            &requests.repeat
        };
        let end_stream = self.spec.body.is_empty();
        let max_frame = self.peer.max_frame as usize;
        put_header_block(&mut self.out.buf, max_frame, stream, block, end_stream);
        self.calls.insert(
            stream,
            Call {
                started,
                body_sent: 0,
                send_window: self.peer.initial_window as i64,
                unacknowledged: 0,
                status: None,
                messages: MessageCounter::default(),
            },
        );
        if !self.spec.body.is_empty() && !self.send_body(stream) {
            self.blocked.push_back(stream);
        }
    }

    /// Writes what is queued, reads what arrived, and handles it. `Ready(Ok(()))`: frames
    /// were handled (completions may be waiting, calls may have room); `Pending`: nothing
    /// more until a wake-up; an error ends the connection.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        if let Poll::Ready(Err(e)) = self.poll_flush(cx) {
            return Poll::Ready(Err(transport(&e)));
        }
        match self.poll_read(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(self.process_frames()),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Ends every call still running with `error` (the connection failed).
    pub fn fail_all(&mut self, error: &str) {
        for (_, call) in self.calls.drain() {
            self.completions
                .push((call.started, Err(error.to_string())));
        }
        self.blocked.clear();
    }

    /// Says goodbye (GOAWAY, NO_ERROR) and closes the connection, best effort.
    pub async fn close(mut self) {
        let last_stream = self.next_stream.saturating_sub(2);
        self.put_frame_header(8, GOAWAY, 0, 0);
        self.out.buf.extend_from_slice(&last_stream.to_be_bytes());
        self.out.buf.extend_from_slice(&0u32.to_be_bytes());
        // Bounded: a target that stopped reading must not hold the run open.
        let goodbye = async {
            let _ = poll_fn(|cx| self.poll_flush(cx)).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.io).await;
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), goodbye).await;
    }

    /// Writes the queued frames; `Ready(Ok)` once all of them are out.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut slices = [io::IoSlice::new(&[]); 64];
            let count = self.out.queued(&mut slices);
            if count == 0 {
                break;
            }
            let n = std::task::ready!(
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..count])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.advance(n);
            self.needs_flush = true;
        }
        if self.needs_flush {
            // TLS keeps what the socket did not take; flushing writes it.
            std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            self.needs_flush = false;
        }
        Poll::Ready(Ok(()))
    }

    /// Reads once into the buffer behind any partial frame.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        match self.reader.poll_read(&mut self.io, cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err("transport: connection closed".into())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(transport(&e))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Handles every whole frame in the read buffer.
    fn process_frames(&mut self) -> Result<(), String> {
        let mut reader = std::mem::take(&mut self.reader);
        let result = (|| loop {
            let (kind, head) = match reader.next_frame() {
                Next::Incomplete => return Ok(()),
                Next::Oversized { kind, length } => (kind, Err(length)),
                Next::Frame(head) => (head.kind, Ok(head)),
            };
            if !self.peer_settings_seen && kind != SETTINGS {
                return Err("protocol: the target did not open with h2 SETTINGS \
                            (not an h2 server?)"
                    .into());
            }
            let head =
                head.map_err(|length| format!("protocol: {length}-byte frame over our limit"))?;
            self.frame(kind, head.flags, head.stream, reader.payload(&head))?;
        })();
        self.reader = reader;
        result
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Result<(), String> {
        if self.continuing.is_some() && kind != CONTINUATION {
            return Err("protocol: header block interrupted".into());
        }
        match kind {
            DATA => self.data(flags, stream, payload),
            HEADERS => {
                let block = unpad(flags, payload, if flags & PRIORITY != 0 { 5 } else { 0 })?;
                if flags & END_HEADERS != 0 {
                    self.header_block_done(stream, block, flags & END_STREAM != 0)
                } else {
                    self.header_block.clear();
                    self.header_block.extend_from_slice(block);
                    self.continuing = Some((stream, flags & END_STREAM != 0));
                    Ok(())
                }
            }
            CONTINUATION => {
                let Some((open, end_stream)) = self.continuing else {
                    return Err("protocol: CONTINUATION without HEADERS".into());
                };
                if open != stream {
                    return Err("protocol: CONTINUATION on another stream".into());
                }
                self.header_block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    self.continuing = None;
                    let block = std::mem::take(&mut self.header_block);
                    let result = self.header_block_done(stream, &block, end_stream);
                    self.header_block = block;
                    result
                } else {
                    Ok(())
                }
            }
            RST_STREAM => {
                let code = be_u32(payload)?;
                self.end_call(
                    stream,
                    Err(format!("transport: reset {:?}", h2::Reason::from(code))),
                );
                Ok(())
            }
            SETTINGS => {
                if flags & ACK == 0 {
                    self.settings(payload)?;
                    self.put_frame_header(0, SETTINGS, ACK, 0);
                }
                Ok(())
            }
            PING => {
                if flags & ACK == 0 {
                    self.put_frame_header(payload.len(), PING, ACK, 0);
                    self.out.buf.extend_from_slice(payload);
                }
                Ok(())
            }
            GOAWAY => {
                let last_stream = be_u32(payload)? & 0x7fff_ffff;
                let code = be_u32(&payload[4..])?;
                self.going_away = true;
                let refused: Vec<u32> = self
                    .calls
                    .keys()
                    .copied()
                    .filter(|id| *id > last_stream)
                    .collect();
                for id in refused {
                    self.end_call(
                        id,
                        Err(format!("transport: goaway {:?}", h2::Reason::from(code))),
                    );
                }
                Ok(())
            }
            WINDOW_UPDATE => {
                let increment = (be_u32(payload)? & 0x7fff_ffff) as i64;
                if stream == 0 {
                    self.send_window += increment;
                } else if let Some(call) = self.calls.get_mut(&stream) {
                    call.send_window += increment;
                }
                self.send_blocked();
                Ok(())
            }
            PUSH_PROMISE => Err("protocol: PUSH_PROMISE though push is off".into()),
            // PRIORITY and frame types we do not know are ignored, as RFC 9113 asks.
            _ => Ok(()),
        }
    }

    fn data(&mut self, flags: u8, stream: u32, payload: &[u8]) -> Result<(), String> {
        // Flow control counts the whole payload, padding included, known stream or not.
        self.unacknowledged += payload.len() as u32;
        if self.unacknowledged >= CONNECTION_WINDOW / 4 {
            let increment = std::mem::take(&mut self.unacknowledged);
            self.put_window_update(0, increment);
        }
        let data = unpad(flags, payload, 0)?;
        let end_stream = flags & END_STREAM != 0;
        let Some(call) = self.calls.get_mut(&stream) else {
            return Ok(()); // a call we already ended
        };
        call.messages.feed(data);
        if end_stream {
            self.cancel(stream, true);
            self.end_call(stream, Err("no grpc-status".into()));
            return Ok(());
        }
        call.unacknowledged += payload.len() as u32;
        if call.unacknowledged >= STREAM_WINDOW / 4 {
            let increment = std::mem::take(&mut call.unacknowledged);
            self.put_window_update(stream, increment);
        }
        Ok(())
    }

    /// Decodes a response header block (always, to keep the HPACK table in step) and ends
    /// the call when it carries the gRPC status.
    fn header_block_done(
        &mut self,
        stream: u32,
        block: &[u8],
        end_stream: bool,
    ) -> Result<(), String> {
        let mut status = None;
        let mut grpc_status: Option<Result<u32, String>> = None;
        self.decoder
            .decode(block, |field| match field.name {
                b":status" => status = parse_number(field.value).map(|s| s as u16),
                b"grpc-status" => {
                    grpc_status = Some(
                        parse_number(field.value)
                            .ok_or_else(|| String::from_utf8_lossy(field.value).into_owned()),
                    );
                }
                _ => {}
            })
            .map_err(|e| format!("protocol: hpack: {e}"))?;
        let Some(call) = self.calls.get_mut(&stream) else {
            return Ok(());
        };
        if call.status.is_none() {
            match status {
                Some(100..=199) => return Ok(()), // informational; the real headers follow
                Some(200) => call.status = Some(200),
                Some(other) => {
                    self.cancel(stream, end_stream);
                    self.end_call(stream, Err(format!("http status {other}")));
                    return Ok(());
                }
                None => {
                    self.cancel(stream, end_stream);
                    self.end_call(stream, Err("protocol: response without :status".into()));
                    return Ok(());
                }
            }
        }
        let outcome = match grpc_status {
            None if !end_stream => return Ok(()), // response headers; messages follow
            None => Err("no grpc-status".to_string()),
            Some(Ok(0)) => Ok(call.messages.messages),
            Some(Ok(code)) => Err(format!("grpc-status {code}")),
            Some(Err(text)) => Err(format!("grpc-status {text}")),
        };
        // A status before the stream's end (trailers-only without END_STREAM) still ends it.
        self.cancel(stream, end_stream);
        self.end_call(stream, outcome);
        Ok(())
    }

    fn settings(&mut self, payload: &[u8]) -> Result<(), String> {
        if !payload.len().is_multiple_of(6) {
            return Err("protocol: SETTINGS length".into());
        }
        for entry in payload.chunks_exact(6) {
            let value = u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]);
            match u16::from_be_bytes([entry[0], entry[1]]) {
                SETTINGS_HEADER_TABLE_SIZE => {
                    let size = value as usize;
                    if self.requests.as_ref().is_some_and(|r| size < r.table_bytes) {
                        return Err(
                            "protocol: server shrank its HPACK table under the request's entries"
                                .into(),
                        );
                    }
                    if self.requests.is_none() {
                        self.peer.table_size = size;
                    }
                }
                SETTINGS_MAX_CONCURRENT_STREAMS => self.peer.max_concurrent_streams = value,
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let delta = value as i64 - self.peer.initial_window as i64;
                    self.peer.initial_window = value;
                    for call in self.calls.values_mut() {
                        call.send_window += delta;
                    }
                    self.send_blocked();
                }
                SETTINGS_MAX_FRAME_SIZE => self.peer.max_frame = value,
                _ => {}
            }
        }
        self.peer_settings_seen = true;
        Ok(())
    }

    /// Sends as much of the call's body as both windows allow; true once all of it is out.
    fn send_body(&mut self, stream: u32) -> bool {
        let body = self.spec.body.clone();
        let Some(call) = self.calls.get_mut(&stream) else {
            return true;
        };
        while call.body_sent < body.len() {
            let room = self.send_window.min(call.send_window).max(0) as usize;
            let n = (body.len() - call.body_sent)
                .min(room)
                .min(self.peer.max_frame as usize);
            if n == 0 {
                return false;
            }
            let end = call.body_sent + n == body.len();
            let flags = if end { END_STREAM } else { 0 };
            self.send_window -= n as i64;
            call.send_window -= n as i64;
            put_frame_header(&mut self.out.buf, n, DATA, flags, stream);
            let chunk = call.body_sent..call.body_sent + n;
            if n >= WRITTEN_IN_PLACE {
                self.out.put_in_place(body.slice(chunk));
            } else {
                self.out.buf.extend_from_slice(&body[chunk]);
            }
            call.body_sent += n;
        }
        true
    }

    fn send_blocked(&mut self) {
        for _ in 0..self.blocked.len() {
            let Some(stream) = self.blocked.pop_front() else {
                break;
            };
            if !self.send_body(stream) {
                self.blocked.push_back(stream);
            }
        }
    }

    /// Resets a call's stream unless both sides are done with it: the server ended it and
    /// all of the request body went out (a server may answer before reading the whole
    /// request; the stream would stay open on its side otherwise).
    fn cancel(&mut self, stream: u32, ended_by_server: bool) {
        let body_left = self
            .calls
            .get(&stream)
            .is_some_and(|call| call.body_sent < self.spec.body.len());
        if !ended_by_server || body_left {
            self.put_frame_header(4, RST_STREAM, 0, stream);
            self.out.buf.extend_from_slice(&CANCEL.to_be_bytes());
        }
    }

    fn end_call(&mut self, stream: u32, outcome: Result<u64, String>) {
        if let Some(call) = self.calls.remove(&stream) {
            self.completions.push((call.started, outcome));
            if call.body_sent < self.spec.body.len() {
                self.blocked.retain(|id| *id != stream);
            }
        }
    }

    fn put_window_update(&mut self, stream: u32, increment: u32) {
        self.put_frame_header(4, WINDOW_UPDATE, 0, stream);
        self.out.buf.extend_from_slice(&increment.to_be_bytes());
    }

    fn put_frame_header(&mut self, length: usize, kind: u8, flags: u8, stream: u32) {
        put_frame_header(&mut self.out.buf, length, kind, flags, stream);
    }
}

fn be_u32(bytes: &[u8]) -> Result<u32, String> {
    bytes
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "protocol: frame too short".to_string())
}

/// The payload without its padding (and `skip` bytes of priority fields).
fn unpad(flags: u8, payload: &[u8], skip: usize) -> Result<&[u8], String> {
    pachgate_h2_wire::unpad(flags, payload, skip)
        .ok_or_else(|| "protocol: padding longer than the frame".to_string())
}

fn parse_number(bytes: &[u8]) -> Option<u32> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

fn transport(error: &io::Error) -> String {
    format!("transport: {}", error.kind())
}

/// Counts length-prefixed gRPC messages across DATA chunks.
#[derive(Default)]
struct MessageCounter {
    messages: u64,
    header: [u8; 5],
    header_filled: usize,
    body_remaining: usize,
}

impl MessageCounter {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.body_remaining > 0 {
                let take = self.body_remaining.min(data.len());
                self.body_remaining -= take;
                data = &data[take..];
                continue;
            }
            let take = (5 - self.header_filled).min(data.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&data[..take]);
            self.header_filled += take;
            data = &data[take..];
            if self.header_filled == 5 {
                self.header_filled = 0;
                self.messages += 1;
                self.body_remaining = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Output written in pieces of every awkward size, through as few or as many slices as
    /// the writer takes, comes out as the bytes and in-place slices in their order.
    #[test]
    fn output_with_in_place_slices_is_written_in_order_whatever_the_write_sizes() {
        let body: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let body = Bytes::from(body);
        for (piece, slots) in [(1, 64), (7, 2), (4096, 3), (5000, 1), (100_000, 64)] {
            let mut out = Output::default();
            let mut expected = Vec::new();
            out.buf.extend_from_slice(b"head");
            expected.extend_from_slice(b"head");
            out.put_in_place(body.slice(0..9000));
            expected.extend_from_slice(&body[0..9000]);
            // Two slices back to back, then bytes, then a slice at the very end.
            out.put_in_place(body.slice(9000..15000));
            expected.extend_from_slice(&body[9000..15000]);
            out.buf.extend_from_slice(b"middle");
            expected.extend_from_slice(b"middle");
            out.put_in_place(body.slice(15000..20000));
            expected.extend_from_slice(&body[15000..20000]);

            let mut written = Vec::new();
            loop {
                let mut slices = vec![io::IoSlice::new(&[]); slots];
                let count = out.queued(&mut slices);
                if count == 0 {
                    break;
                }
                // A writer that takes at most `piece` bytes per call.
                let mut taken = 0;
                for slice in &slices[..count] {
                    let take = slice.len().min(piece - taken);
                    written.extend_from_slice(&slice[..take]);
                    taken += take;
                    if taken == piece {
                        break;
                    }
                }
                out.advance(taken);
            }
            assert_eq!(
                written, expected,
                "pieces of {piece}, {slots} slices per write"
            );
            assert!(out.buf.is_empty() && out.sealed.is_empty());
        }
    }

    #[test]
    fn counts_messages_across_chunk_boundaries() {
        let mut stream = Vec::new();
        for len in [0u32, 3, 70000, 1] {
            stream.push(0);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for piece in [1, 2, 5, 7, 4096, stream.len()] {
            let mut counter = MessageCounter::default();
            for chunk in stream.chunks(piece) {
                counter.feed(chunk);
            }
            assert_eq!(counter.messages, 4, "piece {piece}");
        }
    }

    fn spec(metadata: Metadata) -> CallSpec {
        CallSpec {
            https: true,
            authority: "localhost:8443".into(),
            path: "/pachgate.standin.Echo/Unary".into(),
            metadata,
            body: Bytes::new(),
        }
    }

    fn lossy(value: std::borrow::Cow<'_, [u8]>) -> String {
        String::from_utf8_lossy(&value).into_owned()
    }

    /// Decodes `blocks` in order with an independent HPACK decoder, as a server would.
    fn decode(blocks: &[&[u8]], table_size: usize) -> Vec<Vec<(String, String)>> {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_table_size(table_size);
        blocks
            .iter()
            .map(|block| {
                decoder
                    .decode(block)
                    .unwrap()
                    .into_iter()
                    .map(|(n, v)| (lossy(n.into()), lossy(v.into())))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn later_calls_name_the_first_calls_headers_by_index() {
        let spec = spec(vec![(b"authn-token".to_vec(), b"secret".to_vec())]);
        let blocks = RequestBlocks::encode(&spec, DEFAULT_TABLE_SIZE);
        assert!(blocks.repeat.len() < 10, "{:?}", blocks.repeat);
        let decoded = decode(&[&blocks.first, &blocks.repeat, &blocks.repeat], 4096);
        let expected: Vec<(String, String)> = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "localhost:8443"),
            (":path", "/pachgate.standin.Echo/Unary"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("authn-token", "secret"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        for headers in decoded {
            assert_eq!(headers, expected);
        }
    }

    #[test]
    fn a_small_server_table_gets_literals_every_time() {
        let long = vec![b'v'; 300];
        let spec = spec(vec![(b"x-long".to_vec(), long.clone())]);
        let blocks = RequestBlocks::encode(&spec, 256);
        assert_eq!(blocks.table_bytes, 0);
        let decoded = decode(&[&blocks.first, &blocks.repeat], 256);
        assert_eq!(decoded[0], decoded[1]);
        assert_eq!(decoded[0][6].1.as_bytes(), &long[..]);
    }
}
