//! HTTP/1.1 request-smuggling guard. hyper resolves a request carrying both Content-Length
//! and Transfer-Encoding by Transfer-Encoding and closes the connection afterwards (allowed
//! by RFC 9112 §6.1), but it drops the Content-Length header before the request reaches us,
//! so the proxy could not refuse such a request. This guard follows the message framing of
//! the raw byte stream hyper reads and remembers which request on the connection was
//! ambiguous, so the pipeline can answer it 400 and close.
//!
//! It only observes bytes; hyper remains the parser of record. Anything it does not
//! understand switches it off (hyper then rejects the input itself).

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest request head followed; beyond it hyper answers 431 anyway.
const MAX_HEAD_BYTES: usize = 128 * 1024;
/// A chunk-size line as long as hyper reads one: its 16 KiB of extensions (hyper's limit per
/// body) and the size's digits. The guard gives up only where hyper refuses anyway.
const MAX_CHUNK_LINE_BYTES: usize = 16 * 1024 + 64;
const MAX_HEADERS: usize = 128;

/// What the guard learned, shared with the request pipeline of the same connection.
#[derive(Debug, Default)]
pub struct FramingVerdicts {
    /// 1-based index of the first request whose framing was ambiguous; 0: none.
    ambiguous_request: AtomicU64,
    /// Requests the pipeline has taken so far.
    served: AtomicU64,
    /// The connection switched protocols (a websocket's 101): its bytes are no longer HTTP/1.
    upgraded: std::sync::atomic::AtomicBool,
}

impl FramingVerdicts {
    /// Called once per HTTP/1 request, in order: true when this request must be refused.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let index = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        index == self.ambiguous_request.load(Ordering::Acquire)
    }

    /// The pipeline answered 101: what follows is another protocol's bytes (a websocket's
    /// frames need not hold a line feed for 128 KiB), not to be followed, or buffered, as a
    /// request head. Only then: an Upgrade header alone leaves the connection HTTP/1 when
    /// the answer is not 101, and its later requests are still guarded.
    pub fn connection_upgraded(&self) {
        self.upgraded.store(true, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    FixedBody(u64),
    ChunkSizeLine,
    ChunkData(u64),
    ChunkDataEnd,
    Trailers,
    Off,
}

/// Follows request framing byte by byte through heads and chunk lines, and skips bodies.
#[derive(Debug)]
pub struct FramingTracker {
    state: State,
    line: Vec<u8>,
    /// Bytes other than CR on the current line (0 at a line start).
    current_line_len: usize,
    /// Whether the current head has a non-empty line yet (leading blank lines are skipped).
    head_started: bool,
    requests: u64,
}

impl Default for FramingTracker {
    fn default() -> Self {
        FramingTracker {
            state: State::Head,
            line: Vec::new(),
            current_line_len: 0,
            head_started: false,
            requests: 0,
        }
    }
}

impl FramingTracker {
    /// Feeds bytes read from the client; returns the index of a request found ambiguous.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        let mut flagged = None;
        while !data.is_empty() {
            match self.state {
                State::Off => break,
                State::Head => {
                    let (used, complete) = self.scan_head(data);
                    data = &data[used..];
                    if complete {
                        flagged = flagged.or(self.finish_head());
                    }
                }
                State::FixedBody(remaining) => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == remaining {
                        self.start_head()
                    } else {
                        State::FixedBody(remaining - take)
                    };
                }
                State::ChunkSizeLine => {
                    let Some(newline) = data.iter().position(|&b| b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > MAX_CHUNK_LINE_BYTES {
                            self.state = State::Off;
                        }
                        break;
                    };
                    self.line.extend_from_slice(&data[..newline]);
                    data = &data[newline + 1..];
                    self.state = match parse_chunk_size(&self.line) {
                        Some(0) => {
                            self.current_line_len = 0;
                            State::Trailers
                        }
                        Some(size) => State::ChunkData(size),
                        None => State::Off,
                    };
                    self.line.clear();
                }
                State::ChunkData(remaining) => {
                    let take = remaining.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == remaining {
                        State::ChunkDataEnd
                    } else {
                        State::ChunkData(remaining - take)
                    };
                }
                State::ChunkDataEnd => match data.iter().position(|&b| b == b'\n') {
                    Some(newline) => {
                        data = &data[newline + 1..];
                        self.state = State::ChunkSizeLine;
                    }
                    None => break,
                },
                State::Trailers => {
                    let mut used = 0;
                    for &byte in data {
                        used += 1;
                        if byte == b'\n' {
                            if self.current_line_len == 0 {
                                self.state = self.start_head();
                                break;
                            }
                            self.current_line_len = 0;
                        } else if byte != b'\r' {
                            self.current_line_len += 1;
                        }
                    }
                    data = &data[used..];
                }
            }
        }
        if self.state == State::Off && self.line.capacity() > 0 {
            // Nothing more is followed on this connection: what a head or a chunk line held
            // is not kept for the connection's life.
            self.line = Vec::new();
        }
        flagged
    }

    /// Follows nothing more, and keeps nothing of what it held.
    fn stop(&mut self) {
        self.state = State::Off;
        self.line = Vec::new();
    }

    fn start_head(&mut self) -> State {
        self.line.clear();
        self.current_line_len = 0;
        self.head_started = false;
        State::Head
    }

    /// Collects head bytes; returns (bytes used, whether the head is complete).
    fn scan_head(&mut self, data: &[u8]) -> (usize, bool) {
        for (i, &byte) in data.iter().enumerate() {
            if byte == b'\n' {
                if self.current_line_len == 0 {
                    if self.head_started {
                        self.line.push(byte);
                        return (i + 1, true);
                    }
                    // A blank line before the request line is ignored (RFC 9112 §2.2).
                    self.line.clear();
                    continue;
                }
                self.head_started = true;
                self.current_line_len = 0;
            } else if byte != b'\r' {
                self.current_line_len += 1;
            }
            self.line.push(byte);
            if self.line.len() > MAX_HEAD_BYTES {
                self.state = State::Off;
                return (i + 1, false);
            }
        }
        (data.len(), false)
    }

    /// Parses a complete head, decides the body framing, and reports ambiguity.
    fn finish_head(&mut self) -> Option<u64> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let parsed = matches!(request.parse(&self.line), Ok(httparse::Status::Complete(_)));
        if !parsed || request.method == Some("PRI") {
            // Not HTTP/1 we can follow (or the h2 preface): hyper decides from here.
            self.state = State::Off;
            return None;
        }
        self.requests += 1;
        let mut content_length: Option<Option<u64>> = None;
        let mut transfer_encoding: Option<&[u8]> = None;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
                content_length = Some(value);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                transfer_encoding = Some(header.value);
            }
        }
        let state = match (transfer_encoding, content_length) {
            (Some(_), Some(_)) => {
                // hyper closes the connection after this request; nothing more to follow.
                self.state = State::Off;
                return Some(self.requests);
            }
            (Some(te), None) => {
                let last = te.rsplit(|&b| b == b',').next().unwrap_or(te);
                if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    self.line.clear();
                    State::ChunkSizeLine
                } else {
                    State::Off
                }
            }
            (None, Some(Some(0))) | (None, None) => self.start_head(),
            (None, Some(Some(length))) => State::FixedBody(length),
            (None, Some(None)) => State::Off,
        };
        self.state = state;
        None
    }
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line
        .split(|&b| b == b';' || b == b' ' || b == b'\t' || b == b'\r')
        .next()?;
    // Leading zeros are allowed in any number, as hyper allows them: only the value must
    // fit 64 bits.
    let significant = match digits.iter().position(|&b| b != b'0') {
        Some(first) => &digits[first..],
        None if !digits.is_empty() => return Some(0),
        None => return None,
    };
    if significant.len() > 16 {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(significant).ok()?, 16).ok()
}

/// The client connection as hyper reads it, with the tracker watching what is read.
pub struct FramingGuard<IO> {
    io: IO,
    tracker: FramingTracker,
    verdicts: Arc<FramingVerdicts>,
}

impl<IO> FramingGuard<IO> {
    pub fn new(io: IO, verdicts: Arc<FramingVerdicts>) -> Self {
        FramingGuard {
            io,
            tracker: FramingTracker::default(),
            verdicts,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FramingGuard<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            if this.tracker.state != State::Off && this.verdicts.upgraded.load(Ordering::Acquire) {
                this.tracker.stop();
            }
            if this.tracker.state != State::Off {
                if let Some(index) = this.tracker.feed(&buf.filled()[before..]) {
                    let _ = this.verdicts.ambiguous_request.compare_exchange(
                        0,
                        index,
                        Ordering::Release,
                        Ordering::Relaxed,
                    );
                }
            }
        }
        poll
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FramingGuard<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_101_ends_the_following_and_frees_what_it_held() {
        let verdicts = Arc::new(FramingVerdicts::default());
        let head: &[u8] =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        // A websocket's frames: bytes without a line feed.
        let frames = vec![0x82u8; 100 * 1024];
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let mut guard = FramingGuard::new(server, verdicts.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut sink = vec![0u8; 1 << 20];
            client.write_all(head).await.unwrap();
            let _ = guard.read(&mut sink).await.unwrap();
            verdicts.connection_upgraded();
            client.write_all(&frames).await.unwrap();
            let mut read = 0;
            while read < frames.len() {
                read += guard.read(&mut sink).await.unwrap();
            }
        });
        assert_eq!(guard.tracker.state, State::Off);
        assert_eq!(guard.tracker.line.capacity(), 0);
    }

    #[test]
    fn chunk_lines_hyper_reads_are_followed_to_the_next_request() {
        let extension = "x".repeat(5 * 1024);
        let ambiguous = "POST /y HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        for first_body in [
            format!("5;ext={extension}\r\nhello\r\n0\r\n\r\n"),
            "00000000000000005\r\nhello\r\n000\r\n\r\n".to_string(),
        ] {
            let stream = format!(
                "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
                 {first_body}{ambiguous}"
            );
            // In reads of 512 bytes, as a slow client's arrive: the line is held across them.
            let mut tracker = FramingTracker::default();
            let mut flagged = None;
            for read in stream.as_bytes().chunks(512) {
                flagged = flagged.or(tracker.feed(read));
            }
            assert_eq!(flagged, Some(2), "{first_body:.40}");
        }
    }

    #[test]
    fn an_upgrade_header_alone_leaves_later_requests_guarded() {
        let stream = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n\
            POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdict(stream), Some(2));
    }

    /// Feeds the stream in pieces of every size from 1 byte up, so boundaries fall
    /// everywhere; the verdict must not depend on how reads were split.
    fn verdict(stream: &[u8]) -> Option<u64> {
        let mut verdicts = Vec::new();
        for piece in 1..=stream.len() {
            let mut tracker = FramingTracker::default();
            let mut flagged = None;
            for part in stream.chunks(piece) {
                flagged = flagged.or(tracker.feed(part));
            }
            verdicts.push(flagged);
        }
        assert!(verdicts.windows(2).all(|w| w[0] == w[1]), "{verdicts:?}");
        verdicts[0]
    }

    #[test]
    fn framing_cases() {
        let cases: &[(&str, &[u8], Option<u64>)] = &[
            ("plain get", b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", None),
            (
                "cl and te",
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                Some(1),
            ),
            (
                "te and cl",
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
                Some(1),
            ),
            (
                "third request ambiguous after fixed and chunked bodies",
                b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(3),
            ),
            (
                "header text inside a body is not a head",
                b"POST / HTTP/1.1\r\nContent-Length: 58\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: x\r\n\r\n",
                None,
            ),
            (
                "leading blank lines",
                b"\r\n\r\nGET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
                Some(2),
            ),
            (
                "h2 preface switches the guard off",
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n",
                None,
            ),
        ];
        for (name, stream, want) in cases {
            assert_eq!(verdict(stream), *want, "{name}");
        }
    }

    #[test]
    fn verdicts_match_request_order() {
        let verdicts = FramingVerdicts::default();
        verdicts.ambiguous_request.store(2, Ordering::Release);
        assert!(!verdicts.next_request_is_ambiguous());
        assert!(verdicts.next_request_is_ambiguous());
        assert!(!verdicts.next_request_is_ambiguous());
    }
}
