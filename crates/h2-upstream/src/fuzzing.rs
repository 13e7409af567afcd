//! Entry points for the fuzz targets in `fuzz/` (not an API: no stability, no docs).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use pachgate_h2_wire::SETTINGS;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::connection::Connection;
use crate::header_block::decode_response_block;
use crate::header_block::response_decoder;
use crate::stream::StreamRef;
use crate::HeaderLimits;
use crate::Settings;

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
pub(crate) struct Scripted {
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
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
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
    {
        // Every byte a stream held was handed on or dropped with it, and its credit given.
        let inner = shared.lock();
        assert_eq!(
            (inner.buffered, inner.held),
            (0, 0),
            "response bytes unaccounted"
        );
    }
    drop(connection);
    let _ = shared.poll_drive(&mut cx);
}
