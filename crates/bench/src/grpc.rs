//! gRPC workloads over h2: unary echo and server streaming. A call counts as successful only
//! when `grpc-status: 0` arrives (in the trailers, or in a trailers-only response).
//!
//! Each connection is one task driving all of its calls (`h2_calls`): the generator's own
//! CPU per call stays low, so more of the machine is left to the target.

use std::future::{poll_fn, Future};
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use pachgate_standins::messages::EchoRequest;
use prost::Message;

use crate::connect::{Stream, Target};
use crate::driver::{collect, finish, spawn_progress, Labels, Plan, Recorder, Shared, Slot};
use crate::h2_calls::{CallSpec, Connection, Metadata};
use crate::report::Report;
use crate::{GrpcArgs, GrpcMode};

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
    if !method.starts_with('/') || http::uri::PathAndQuery::try_from(method.as_str()).is_err() {
        return Err(format!(
            "--method {method:?}: expected a path like /package.Service/Method"
        ));
    }
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
    let spec = Arc::new(CallSpec {
        https: target.is_tls(),
        authority: target.authority.clone(),
        path: method.clone(),
        metadata: parse_metadata(&args.metadata)?,
        body: grpc_frame(&request),
    });

    let mut connections = Vec::with_capacity(common.connections);
    for _ in 0..common.connections {
        let stream = target
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", target.address))?;
        let handshake = Connection::handshake(stream, spec.clone());
        let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
            .await
            .map_err(|_| {
                format!(
                    "h2 handshake with {}: no SETTINGS within {HANDSHAKE_TIMEOUT:?}",
                    target.address
                )
            })?
            .map_err(|e| format!("h2 handshake with {}: {e}", target.address))?;
        connections.push(connection);
    }
    let shared = Shared::new(Plan::from(common));
    let progress = spawn_progress(shared.clone());
    let streams = args.streams.max(1);
    let workers = connections
        .into_iter()
        .map(|connection| tokio::spawn(drive(connection, shared.clone(), streams)))
        .collect();
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
            streams,
            units: match args.mode {
                GrpcMode::Unary => "operations",
                GrpcMode::ServerStream => "messages",
            },
        },
    ))
}

/// How long a target may take to answer the h2 preface with its SETTINGS.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A length-prefixed, uncompressed gRPC message.
fn grpc_frame(message: &EchoRequest) -> Bytes {
    let encoded = message.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + encoded.len());
    frame.put_u8(0);
    frame.put_u32(encoded.len() as u32);
    frame.put_slice(&encoded);
    frame.freeze()
}

/// Runs calls on one connection, up to `streams` at once, until the plan says stop; then
/// waits for the calls in flight and says goodbye.
async fn drive(
    mut connection: Connection<Stream>,
    shared: Arc<Shared>,
    streams: usize,
) -> Recorder {
    let mut recorder = Recorder::new(shared.clone());
    // Open loop: one timer, reset for each call that waits for its slot.
    let mut sleep = Box::pin(tokio::time::sleep_until(tokio::time::Instant::now()));
    let mut waiting = false;
    let mut exhausted = false;
    let mut failed = false;
    poll_fn(|cx| loop {
        while !exhausted && connection.can_start(streams) {
            if waiting {
                if sleep.as_mut().poll(cx).is_pending() {
                    break;
                }
                waiting = false;
                connection.start(Instant::now());
                continue;
            }
            match shared.claim() {
                Slot::Done => exhausted = true,
                Slot::Now(started) => connection.start(started),
                Slot::At(at) => {
                    sleep.as_mut().reset(at.into());
                    waiting = true;
                }
            }
        }
        let progress = connection.poll_io(cx);
        if let Poll::Ready(Err(error)) = &progress {
            connection.fail_all(error);
            failed = true;
        }
        for (started, outcome) in connection.take_completions() {
            match outcome {
                Ok(messages) => recorder.ok(started, messages),
                Err(kind) => recorder.error(kind),
            }
        }
        // Nothing in flight and nothing may start: the plan is done, the server sent GOAWAY,
        // or it allows no streams at all (SETTINGS_MAX_CONCURRENT_STREAMS 0).
        let finished = connection.active() == 0 && (exhausted || !connection.can_start(streams));
        if finished && !exhausted && connection.accepting() {
            recorder.error("target allows no concurrent streams");
        }
        if failed || finished {
            return Poll::Ready(());
        }
        if progress.is_pending() {
            return Poll::Pending;
        }
    })
    .await;
    if !failed {
        connection.close().await;
    }
    recorder
}

/// `name=value` pairs as request headers; gRPC metadata names are lower-case.
fn parse_metadata(pairs: &[String]) -> Result<Metadata, String> {
    let mut metadata = Vec::new();
    for pair in pairs {
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("--metadata {pair:?}: expected NAME=VALUE"))?;
        let name = HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes())
            .map_err(|e| format!("--metadata {pair:?}: {e}"))?;
        let value =
            HeaderValue::from_str(value).map_err(|e| format!("--metadata {pair:?}: {e}"))?;
        metadata.push((name.as_str().as_bytes().to_vec(), value.as_bytes().to_vec()));
    }
    Ok(metadata)
}
