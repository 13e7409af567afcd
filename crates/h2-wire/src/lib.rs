//! HTTP/2 on the wire (RFC 9113, RFC 7541), shared by pachgate's two h2 clients: the upstream
//! connection in proxy-core (`h2_client`) and the load generator's (`bench::h2_calls`). It
//! owns the frame constants, writing frame headers and header blocks cut into frames,
//! stripping padding, HPACK integers and literal strings, and a read buffer that hands out
//! whole frames. Connection state, flow control and errors stay with each client.
//!
//! `hpack_decode` is the HPACK decoder (RFC 7541) for the header blocks a peer sends (the
//! upstream client's responses): integers, raw and Huffman literals, the static and dynamic
//! tables, size updates, every bad input an error value. `huffman` is the Huffman code it
//! decodes (Appendix B), built once at compile time, with an encoder for tests and fuzzing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

pub mod hpack_decode;
pub mod huffman;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const FRAME_HEADER: usize = 9;

pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441: the peer accepts extended CONNECT (`:protocol`), e.g. websockets over HTTP/2.
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// RFC 9113 defaults, until the peer's SETTINGS say otherwise.
pub const DEFAULT_WINDOW: u32 = 65_535;
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// RFC 7541's HPACK dynamic table size until SETTINGS_HEADER_TABLE_SIZE says otherwise.
pub const DEFAULT_HEADER_TABLE_SIZE: u32 = 4_096;

pub fn put_frame_header(out: &mut BytesMut, length: usize, kind: u8, flags: u8, stream: u32) {
    out.extend_from_slice(&(length as u32).to_be_bytes()[1..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// A header block as HEADERS, then CONTINUATION frames where it exceeds the peer's frame size.
pub fn put_header_block(
    out: &mut BytesMut,
    max_frame: usize,
    stream: u32,
    block: &[u8],
    end_stream: bool,
) {
    let mut chunks = block.chunks(max_frame.max(1));
    let first = chunks.next().unwrap_or(&[]);
    let rest = chunks.len();
    let flags = if end_stream { END_STREAM } else { 0 } | if rest == 0 { END_HEADERS } else { 0 };
    put_frame_header(out, first.len(), HEADERS, flags, stream);
    out.extend_from_slice(first);
    for (i, chunk) in chunks.enumerate() {
        let flags = if i + 1 == rest { END_HEADERS } else { 0 };
        put_frame_header(out, chunk.len(), CONTINUATION, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// The payload length in a frame header.
pub fn frame_length(header: &[u8]) -> usize {
    u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize
}

/// The payload without its padding and the `skip` bytes of priority fields after the pad
/// length; `None` when the padding does not fit the frame.
pub fn unpad(flags: u8, payload: &[u8], skip: usize) -> Option<&[u8]> {
    let (pad, rest) = if flags & PADDED != 0 {
        let (pad, rest) = payload.split_first()?;
        (usize::from(*pad), rest)
    } else {
        (0, payload)
    };
    (rest.len() >= pad + skip).then(|| &rest[skip..rest.len() - pad])
}

/// An HPACK integer (RFC 7541 §5.1) with `pattern` in the bits above the prefix. Inline
/// for the value that fits the prefix (nearly every one: a request head's encoder calls this
/// about a dozen times a request, and the call cost more than the work).
#[inline]
pub fn put_integer(out: &mut Vec<u8>, pattern: u8, prefix_bits: u32, value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(pattern | value as u8);
    } else {
        put_long_integer(out, pattern | max as u8, value - max);
    }
}

#[cold]
#[inline(never)]
fn put_long_integer(out: &mut Vec<u8>, first: u8, mut rest: usize) {
    out.push(first);
    while rest >= 0x80 {
        out.push((rest & 0x7f) as u8 | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// An HPACK string literal, not Huffman-coded.
#[inline]
pub fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 1);
    put_integer(out, 0x00, 7, bytes.len());
    out.extend_from_slice(bytes);
}

/// A frame's header fields; its payload is [`FrameReader::payload`].
#[derive(Debug, Clone, Copy)]
pub struct FrameHead {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    start: usize,
    length: usize,
}

/// What the read buffer holds next.
pub enum Next {
    Frame(FrameHead),
    /// Part of a frame; read more.
    Incomplete,
    /// A frame longer than the reader allows (its type, for the caller's error).
    Oversized {
        kind: u8,
        length: usize,
    },
}

/// Bytes read from a peer, handed out frame by frame. A frame is read into one contiguous
/// span, so its payload is borrowed, never copied out.
pub struct FrameReader {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_frame: usize,
}

impl FrameReader {
    /// `capacity` to start with; frames longer than `max_frame` are refused (no buffer grows
    /// for them).
    pub fn new(capacity: usize, max_frame: usize) -> Self {
        FrameReader {
            buf: vec![0; capacity],
            start: 0,
            end: 0,
            max_frame,
        }
    }

    /// Reads once into the buffer behind any partial frame: the bytes read, 0 when the peer
    /// closed.
    pub fn poll_read<T: AsyncRead + Unpin + ?Sized>(
        &mut self,
        io: &mut T,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let pending = self.end - self.start;
        let needed = if pending >= FRAME_HEADER {
            FRAME_HEADER + frame_length(&self.buf[self.start..]).min(self.max_frame)
        } else {
            FRAME_HEADER
        };
        if self.buf.len() - self.start < needed || self.buf.len() - self.end < 4096 {
            self.buf.copy_within(self.start..self.end, 0);
            self.start = 0;
            self.end = pending;
            if self.buf.len() < needed + 4096 {
                self.buf.resize(needed + 4096, 0);
            }
        }
        let mut read = ReadBuf::new(&mut self.buf[self.end..]);
        match Pin::new(io).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                self.end += n;
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// The next whole frame, consumed from the buffer.
    pub fn next_frame(&mut self) -> Next {
        if self.end - self.start < FRAME_HEADER {
            return Next::Incomplete;
        }
        let header = &self.buf[self.start..self.start + FRAME_HEADER];
        let length = frame_length(header);
        let kind = header[3];
        if length > self.max_frame {
            return Next::Oversized { kind, length };
        }
        if self.end - self.start < FRAME_HEADER + length {
            return Next::Incomplete;
        }
        let head = FrameHead {
            kind,
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            start: self.start + FRAME_HEADER,
            length,
        };
        self.start = head.start + length;
        Next::Frame(head)
    }

    /// The payload of a frame this reader handed out, until the next read.
    pub fn payload(&self, head: &FrameHead) -> &[u8] {
        &self.buf[head.start..head.start + head.length]
    }
}

impl Default for FrameReader {
    /// An empty reader, for taking a connection's reader out while its frames are handled.
    fn default() -> Self {
        FrameReader::new(0, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_past_their_prefix_continue_in_seven_bit_groups() {
        let mut out = Vec::new();
        put_integer(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10]); // RFC 7541 C.1.2
        out.clear();
        put_integer(&mut out, 0x80, 7, 10);
        assert_eq!(out, [0x8a]);
        // A value equal to the prefix's maximum takes a second byte (of zero).
        out.clear();
        put_integer(&mut out, 0x10, 4, 15);
        assert_eq!(out, [0x1f, 0]);
        out.clear();
        put_string(&mut out, &[b'v'; 127]);
        assert_eq!(&out[..2], [0x7f, 0]);
        assert_eq!(out.len(), 2 + 127);
    }

    #[test]
    fn padding_and_priority_fields_are_stripped_and_overlong_padding_refused() {
        assert_eq!(
            unpad(PADDED, &[3u8, b'a', b'b', 0, 0, 0], 0),
            Some(&b"ab"[..])
        );
        assert_eq!(
            unpad(PRIORITY, &[0u8, 0, 0, 1, 16, b'h'], 5),
            Some(&b"h"[..])
        );
        assert_eq!(unpad(PADDED, &[9u8, b'a'], 0), None);
        assert_eq!(unpad(PADDED, &[], 0), None);
    }

    #[test]
    fn header_blocks_past_the_frame_size_continue_in_continuation_frames() {
        let mut out = BytesMut::new();
        put_header_block(&mut out, 4, 3, b"abcdefghij", true);
        let frames: Vec<(usize, u8, u8)> = {
            let mut at = 0;
            let mut frames = Vec::new();
            while at < out.len() {
                let length = frame_length(&out[at..]);
                frames.push((length, out[at + 3], out[at + 4]));
                at += FRAME_HEADER + length;
            }
            frames
        };
        assert_eq!(
            frames,
            [
                (4, HEADERS, END_STREAM),
                (4, CONTINUATION, 0),
                (2, CONTINUATION, END_HEADERS)
            ]
        );
    }
}
