//! pachgate's own client side of an upstream HTTP/2 connection.
//!
//! A profile of small gRPC calls put about a third of the proxy's CPU in the h2 crate's
//! client: its generic stream store, its send queue and its HPACK encoder, all built for
//! every use of HTTP/2. A proxy's upstream connection needs less: requests whose heads it
//! already holds as `http` types, bodies handed on as they come, and responses read into the
//! task that forwards them. This crate speaks exactly that (RFC 9113, client side):
//! HEADERS and CONTINUATION, DATA with both levels of flow control, trailers, RST_STREAM,
//! SETTINGS, PING (answers and keepalive), GOAWAY, and the peer's stream limit. Response
//! header blocks go through a full HPACK decoder (`pachgate_h2_wire::hpack_decode`, ours:
//! loona-hpack's built a Huffman table per string); request heads are written as literals
//! that never enter the upstream's table, except the request id's name, added once per
//! connection (`UpstreamTable`, the encoder's only state).
//!
//! One mutex guards a connection. The task that drives it reads and writes the socket;
//! stream tasks queue frames and wake it. benches/README.md has the before/after.
//!
//! It owns the client side of the upstream connection and nothing above it: which upstream
//! and endpoint to use, resending a refused request, TLS and the connect itself are
//! proxy-core's (`upstream.rs`), which hands over a connected [`Transport`]. It must not
//! trust a byte the upstream sends (every limit is enforced as frames arrive, and a broken
//! peer fails its stream or its connection, never the process). The frame layout itself is `pachgate-h2-wire`'s, shared with the load
//! generator.
//!
//! Where things are: `connection` holds the state and opens streams, `driver` drives the
//! socket (reads, SETTINGS deadline, keepalive), `output` queues and writes frames, `frames`
//! handles what the upstream sends, `settings` its SETTINGS and the acknowledgements owed for
//! them and PINGs, `flow` the receive windows, `stream` a stream's state and its
//! caller's handle, `header_block` response header decoding within limits, `request_head`
//! the request's HPACK block, `failure` how a stream or connection ends badly.
//!
//! Tests: unit tests here (request heads, SETTINGS over an in-memory pipe, and
//! `tests/flow_control.rs`: padding, stray WINDOW_UPDATEs, uploads to an upstream that stops
//! reading, clients that stop reading, a stream limit of 0, over loopback); frame scripts
//! from a hostile upstream over loopback in proxy-core's `tests/h2_upstream_frames.rs`,
//! which drive this client through `Upstream::send`; the fuzz targets `h2_client_frames`
//! and `hpack_response_blocks` through `fuzzing`.

mod connection;
mod driver;
mod failure;
mod flow;
mod frames;
#[doc(hidden)]
pub mod fuzzing;
mod header_block;
mod output;
mod request_head;
mod settings;
mod stream;
#[cfg(test)]
mod tests;

use std::time::Duration;

use pachgate_h2_wire::{self as wire, DEFAULT_HEADER_TABLE_SIZE};

pub use connection::{ConnectProtocol, Connection, Transport};
pub use failure::Failure;
pub use request_head::ExtraField;
pub use stream::StreamRef;

/// Body errors: boxed, so hyper finds an h2 reset reason in the chain (the same type as
/// proxy-core's `body::BodyError`).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) const DEFAULT_MAX_FRAME: usize = wire::DEFAULT_MAX_FRAME as usize;
pub(crate) const MAX_WINDOW: i64 = 0x7fff_ffff;
pub(crate) const LAST_STREAM_ID: u32 = 0x7fff_ffff;

/// Largest frame we accept (advertised in SETTINGS); big response messages then cost fewer
/// frames.
pub(crate) const MAX_FRAME_IN: usize = 256 * 1024;
/// A response header block (HEADERS plus CONTINUATIONs) past this is a connection error:
/// no upstream gets to make pachgate buffer without bound.
pub(crate) const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// CONTINUATION frames one header block may take. An encoder fills frames up to the frame
/// size (16 KiB at least), so a block within MAX_HEADER_BLOCK needs at most 16; a peer that
/// sends more is drip-feeding (empty CONTINUATIONs never grow the block) and the connection
/// ends (ENHANCE_YOUR_CALM).
pub(crate) const MAX_CONTINUATIONS: u32 = 64;
/// The HPACK dynamic table the upstream may use for our decoder: what SETTINGS advertise
/// (the RFC 7541 default, said out loud). A size update past it is a COMPRESSION_ERROR.
pub(crate) const HEADER_TABLE_SIZE: u32 = DEFAULT_HEADER_TABLE_SIZE;
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
pub(crate) const MAX_UNWRITTEN_ACKS: usize = 1024;
/// Reads handled per wake-up before the driver yields to other tasks.
pub(crate) const READS_PER_WAKE: usize = 32;
/// Bytes queued for the upstream's socket past which request bodies wait for the queue to
/// drain: an upstream that grants large windows and stops reading cannot make the proxy
/// hold a client's upload (the h2 crate's default send buffer is 400 KiB a stream).
pub(crate) const MAX_QUEUED_OUT: usize = 1024 * 1024;
/// DATA payloads at least this large are written from their own buffer, not copied.
pub(crate) const WRITTEN_IN_PLACE: usize = 4096;
/// Small DATA frames that arrive before the last is handed on join it, up to this many bytes.
pub(crate) const COALESCE_LIMIT: usize = 16 * 1024;

/// Windows and batching, as the caller configures the connection.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
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
