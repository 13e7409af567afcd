//! gRPC workloads over h2: unary echo and server streaming. A call counts as successful only
//! when `grpc-status: 0` arrives (in the trailers, or in a trailers-only response).
//!
//! Calls use the h2 crate directly rather than hyper's client: each call is sent, fed and
//! read inside its worker's task, with no dispatch channel or spawned body task per call,
//! which keeps the generator's own CPU per call low.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, TE};
use http::{Request, Uri};
use http_body_util::Full;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use pachgate_standins::messages::EchoRequest;
use prost::Message;

use crate::connect::{Stream, Target};
use crate::driver::{collect, finish, spawn_progress, Labels, Plan, Recorder, Shared};
use crate::report::Report;
use crate::{GrpcArgs, GrpcMode};

/// An h2 client connection tuned like the proxy's upstream side: large fixed windows.
pub async fn h2_handshake(stream: Stream) -> Result<http2::SendRequest<Full<Bytes>>, String> {
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(256 * 1024)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}

pub async fn run(args: GrpcArgs) -> Result<Report, String> {
    let common = &args.common;
    let target = Target::new(common, &[b"h2"], true)?;
    let method = args.method.clone().unwrap_or_else(|| {
        match args.mode {
            GrpcMode::Unary => "/pachgate.standin.Echo/Unary",
            GrpcMode::ServerStream => "/pachgate.standin.Echo/ServerStream",
        }
        .to_string()
    });
    let scheme = if target.is_tls() { "https" } else { "http" };
    let uri: Uri = format!("{scheme}://{}{method}", target.authority)
        .parse()
        .map_err(|e| format!("method {method:?}: {e}"))?;
    let request = match args.mode {
        GrpcMode::Unary => EchoRequest {
            payload: vec![b'x'; args.size].into(),
            ..EchoRequest::default()
        },
        GrpcMode::ServerStream => EchoRequest {
            response_count: args.messages,
            response_size: args.size as u32,
            ..EchoRequest::default()
        },
    };
    let body = grpc_frame(&request);
    let metadata = Arc::new(parse_metadata(&args.metadata)?);

    let mut senders = Vec::with_capacity(common.connections);
    for _ in 0..common.connections {
        let stream = target
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", target.address))?;
        senders.push(raw_h2_handshake(stream).await?);
    }
    let shared = Shared::new(Plan::from(common));
    let progress = spawn_progress(shared.clone());
    let uri = Arc::new(uri);
    let mut workers = Vec::new();
    for sender in senders {
        for _ in 0..args.streams.max(1) {
            workers.push(tokio::spawn(worker(
                sender.clone(),
                shared.clone(),
                uri.clone(),
                body.clone(),
                metadata.clone(),
            )));
        }
    }
    let recorders = collect(&shared, progress, workers).await?;
    let workload = match args.mode {
        GrpcMode::Unary => format!("grpc unary {method}, {} B", args.size),
        GrpcMode::ServerStream => format!(
            "grpc server-stream {method}, {} × {} B per call",
            args.messages, args.size
        ),
    };
    Ok(finish(
        &shared,
        recorders,
        Labels {
            workload,
            target: common.target.clone(),
            connections: common.connections,
            streams: args.streams.max(1),
            units: match args.mode {
                GrpcMode::Unary => "operations",
                GrpcMode::ServerStream => "messages",
            },
        },
    ))
}

/// A length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &EchoRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

async fn worker(
    mut sender: h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
    uri: Arc<Uri>,
    body: Bytes,
    metadata: Arc<HeaderMap>,
) -> Recorder {
    let mut recorder = Recorder::new(shared.clone());
    while let Some(started) = shared.next().await {
        match call(&mut sender, &uri, &body, &metadata).await {
            Ok(messages) => recorder.ok(started, messages),
            Err(kind) => recorder.error(kind),
        }
    }
    recorder
}

/// `name=value` pairs as request headers; gRPC metadata names are lower-case.
fn parse_metadata(pairs: &[String]) -> Result<HeaderMap, String> {
    let mut metadata = HeaderMap::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--metadata {pair:?}: expected NAME=VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("--metadata {pair:?}: {e}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|e| format!("--metadata {pair:?}: {e}"))?;
        metadata.append(name, value);
    }
    Ok(metadata)
}

/// The gRPC client connection: large fixed windows, like the proxy's upstream side.
async fn raw_h2_handshake(stream: Stream) -> Result<h2::client::SendRequest<Bytes>, String> {
    let (sender, connection) = h2::client::Builder::new()
        .initial_window_size(4 * 1024 * 1024)
        .initial_connection_window_size(16 * 1024 * 1024)
        .max_frame_size(256 * 1024)
        .handshake(stream)
        .await
        .map_err(|e| format!("h2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// One call; returns the number of response messages.
async fn call(
    sender: &mut h2::client::SendRequest<Bytes>,
    uri: &Uri,
    body: &Bytes,
    metadata: &HeaderMap,
) -> Result<u64, String> {
    let mut request = Request::post(uri.clone())
        .header(CONTENT_TYPE, "application/grpc")
        .header(TE, "trailers")
        .body(())
        .expect("static parts are valid");
    for (name, value) in metadata {
        request.headers_mut().append(name, value.clone());
    }
    // Waits for a free stream slot (the server's concurrency limit) on this connection.
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(|e| h2_error(&e))?;
    let (response, mut upload) = sender
        .send_request(request, false)
        .map_err(|e| h2_error(&e))?;
    upload
        .send_data(body.clone(), true)
        .map_err(|e| h2_error(&e))?;
    let response = response.await.map_err(|e| h2_error(&e))?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("http status {}", response.status().as_u16()));
    }
    if let Some(status) = response.headers().get("grpc-status") {
        // Trailers-only response: the status is all there is.
        return match status.as_bytes() {
            b"0" => Ok(0),
            other => Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
        };
    }
    let mut body = response.into_body();
    let mut counter = MessageCounter::default();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| h2_error(&e))?;
        counter.feed(&chunk);
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    let trailers = body.trailers().await.map_err(|e| h2_error(&e))?;
    match trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .map(|s| s.as_bytes())
    {
        Some(b"0") => Ok(counter.messages),
        Some(other) => Err(format!("grpc-status {}", String::from_utf8_lossy(other))),
        None => Err("no grpc-status".into()),
    }
}

/// Error kinds kept few: a reset with its reason, a GOAWAY, or an I/O failure.
fn h2_error(error: &h2::Error) -> String {
    match (error.reason(), error.get_io()) {
        (Some(reason), _) if error.is_go_away() => format!("transport: goaway {reason:?}"),
        (Some(reason), _) => format!("transport: reset {reason:?}"),
        (None, Some(io)) => format!("transport: {}", io.kind()),
        (None, None) => "transport: h2".into(),
    }
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
    use super::MessageCounter;

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
}
