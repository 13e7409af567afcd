//! A scripted h2 upstream for the in-process tests: a loopback `TcpListener` whose
//! connections are played frame by frame (h2-wire's encoder), so a test writes exactly the
//! frames it means, hostile or refusing, and reads what pachgate sent. Shared by the test
//! files that need it; each uses a part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use pachgate_h2_wire::{self as wire, FRAME_HEADER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as bytes.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    wire::put_frame_header(&mut out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
    out
}

/// A header block of literals without indexing.
pub fn literals(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        wire::put_string(&mut block, name.as_bytes());
        wire::put_string(&mut block, value.as_bytes());
    }
    block
}

pub fn ok_head() -> Vec<u8> {
    literals(&[(":status", "200"), ("content-type", "application/grpc")])
}

pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A request as the upstream received it: its stream, its decoded header fields in the
/// order sent, and its whole body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub stream: u32,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a field.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The upstream's side of one connection.
pub struct Peer {
    pub socket: TcpStream,
    /// pachgate's request header blocks, decoded in order (its encoder may index fields).
    decoder: loona_hpack::Decoder<'static>,
}

impl Peer {
    pub fn new(socket: TcpStream) -> Peer {
        Peer {
            socket,
            decoder: loona_hpack::Decoder::new(),
        }
    }

    /// Accepts pachgate's connection: its preface and SETTINGS in, ours (`settings`) and the
    /// ACK out.
    pub async fn accept(listener: &TcpListener, settings: &[(u16, u32)]) -> Peer {
        let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("pachgate connects")
            .unwrap();
        let mut preface = [0u8; 24];
        socket.read_exact(&mut preface).await.unwrap();
        assert_eq!(&preface[..], wire::PREFACE);
        let mut peer = Peer::new(socket);
        let first = peer.read_frame().await;
        assert_eq!(first.kind, wire::SETTINGS);
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        peer.write(&frame(wire::SETTINGS, 0, 0, &payload)).await;
        peer.write(&frame(wire::SETTINGS, wire::ACK, 0, &[])).await;
        peer
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.socket.write_all(bytes).await.unwrap();
    }

    pub async fn read_frame(&mut self) -> Frame {
        let mut header = [0u8; FRAME_HEADER];
        tokio::time::timeout(Duration::from_secs(10), self.socket.read_exact(&mut header))
            .await
            .expect("a frame from pachgate in time")
            .unwrap();
        let mut payload = vec![0u8; wire::frame_length(&header)];
        self.socket.read_exact(&mut payload).await.unwrap();
        Frame {
            kind: header[3],
            flags: header[4],
            stream: u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff,
            payload,
        }
    }

    /// Reads until a request's HEADERS (with END_HEADERS); the frame, its block decoded.
    async fn head_frame(&mut self) -> (Frame, Vec<(String, String)>) {
        loop {
            let frame = self.read_frame().await;
            if frame.kind != wire::HEADERS {
                continue;
            }
            assert_ne!(frame.flags & wire::END_HEADERS, 0);
            let priority = if frame.flags & wire::PRIORITY != 0 {
                5
            } else {
                0
            };
            let block = wire::unpad(frame.flags, &frame.payload, priority).expect("sound padding");
            let fields = self
                .decoder
                .decode(block)
                .expect("pachgate's header block decodes")
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect();
            return (frame, fields);
        }
    }

    /// Reads until a request's HEADERS (with END_HEADERS); its stream id.
    pub async fn request(&mut self) -> u32 {
        self.head_frame().await.0.stream
    }

    /// Reads until a request's HEADERS (with END_HEADERS); its stream id and decoded fields.
    pub async fn request_head(&mut self) -> (u32, Vec<(String, String)>) {
        let (frame, fields) = self.head_frame().await;
        (frame.stream, fields)
    }

    /// Reads a whole request: its HEADERS, then its DATA up to END_STREAM.
    pub async fn read_request(&mut self) -> Received {
        let (head, headers) = self.head_frame().await;
        let ended = head.flags & wire::END_STREAM != 0;
        let body = if ended {
            Vec::new()
        } else {
            let (body, ended) = self.read_data(head.stream, usize::MAX).await;
            assert!(ended, "the request ended with END_STREAM");
            body
        };
        Received {
            stream: head.stream,
            headers,
            body,
        }
    }

    /// Reads `stream`'s DATA until `at_least` bytes came or the stream ended, crediting each
    /// DATA back at once to the stream and the connection (as a server reading it would).
    /// The bytes, and whether END_STREAM came (false too when the stream was reset).
    pub async fn read_data(&mut self, stream: u32, at_least: usize) -> (Vec<u8>, bool) {
        let mut data = Vec::new();
        while data.len() < at_least {
            let next = self.read_frame().await;
            if next.stream != stream {
                continue;
            }
            if next.kind == wire::RST_STREAM {
                return (data, false);
            }
            if next.kind != wire::DATA {
                continue;
            }
            data.extend_from_slice(
                wire::unpad(next.flags, &next.payload, 0).expect("sound padding"),
            );
            if !next.payload.is_empty() {
                let credit = (next.payload.len() as u32).to_be_bytes();
                let mut out = frame(wire::WINDOW_UPDATE, 0, 0, &credit);
                out.extend_from_slice(&frame(wire::WINDOW_UPDATE, 0, stream, &credit));
                self.write(&out).await;
            }
            if next.flags & wire::END_STREAM != 0 {
                return (data, true);
            }
        }
        (data, false)
    }

    /// Reads until a frame of `kind` (RST_STREAM, GOAWAY); its error code.
    pub async fn error_frame(&mut self, kind: u8) -> (u32, u32) {
        loop {
            let frame = self.read_frame().await;
            if frame.kind == kind {
                let at = if kind == wire::GOAWAY { 4 } else { 0 };
                let code = u32::from_be_bytes(frame.payload[at..at + 4].try_into().unwrap());
                return (frame.stream, code);
            }
        }
    }

    /// Resets `stream` with `code`.
    pub async fn reset(&mut self, stream: u32, code: u32) {
        self.write(&frame(wire::RST_STREAM, 0, stream, &code.to_be_bytes()))
            .await;
    }

    /// A GOAWAY naming `last_stream` as the last one processed.
    pub async fn go_away(&mut self, last_stream: u32, code: u32) {
        let mut payload = last_stream.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        self.write(&frame(wire::GOAWAY, 0, 0, &payload)).await;
    }

    /// A whole, honest response on `stream`.
    pub async fn respond(&mut self, stream: u32) {
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &ok_head(), false);
        out.extend_from_slice(&frame(wire::DATA, 0, stream, b"\0\0\0\0\x02hi"));
        wire::put_header_block(
            &mut out,
            16_384,
            stream,
            &literals(&[("grpc-status", "0")]),
            true,
        );
        self.write(&out).await;
    }
}

pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}
