//! HTTP/1.1 and h2 requests, and TLS connection workloads (idle connections held, handshakes
//! per second).

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use crate::connect::{Stream, Target};
use crate::driver::{collect, finish, spawn_progress, Labels, Plan, Recorder, Shared};
use crate::report::Report;
use crate::{ConnectionsArgs, ConnectionsMode, HttpArgs, HttpProtocol};

/// An h2 client connection (hyper's) with large fixed windows.
async fn h2_handshake(stream: Stream) -> Result<http2::SendRequest<Full<Bytes>>, String> {
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

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

pub async fn run(args: HttpArgs) -> Result<Report, String> {
    let common = &args.common;
    let alpn: &[&[u8]] = match args.protocol {
        HttpProtocol::H1 => &[b"http/1.1"],
        HttpProtocol::H2 => &[b"h2"],
    };
    let target = Target::new(common, alpn, true)?;
    let uri: Uri = common
        .target
        .parse()
        .map_err(|e| format!("--target: {e}"))?;
    let method = if args.size > 0 {
        Method::POST
    } else {
        Method::GET
    };
    let body = Bytes::from(vec![b'h'; args.size]);
    let streams = match args.protocol {
        HttpProtocol::H1 => 1,
        HttpProtocol::H2 => args.streams.max(1),
    };

    let mut senders = Vec::new();
    for _ in 0..common.connections {
        let stream = target
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", target.address))?;
        senders.push(match args.protocol {
            HttpProtocol::H1 => {
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("http/1.1 handshake: {e}"))?;
                tokio::spawn(connection);
                Sender::H1(sender)
            }
            HttpProtocol::H2 => Sender::H2(h2_handshake(stream).await?),
        });
    }
    let shared = Shared::new(Plan::from(common));
    let progress = spawn_progress(shared.clone());
    let uri = Arc::new(uri);
    let mut workers = Vec::new();
    for sender in senders {
        // HTTP/1.1 carries one request at a time; h2 multiplexes `streams` per connection.
        let copies = match &sender {
            Sender::H1(_) => vec![sender],
            Sender::H2(h2) => (0..streams).map(|_| Sender::H2(h2.clone())).collect(),
        };
        for sender in copies {
            workers.push(tokio::spawn(worker(
                sender,
                shared.clone(),
                uri.clone(),
                method.clone(),
                body.clone(),
            )));
        }
    }
    let recorders = collect(&shared, progress, workers).await?;
    Ok(finish(
        &shared,
        recorders,
        Labels {
            workload: format!(
                "http {} {method}, {} B body",
                match args.protocol {
                    HttpProtocol::H1 => "HTTP/1.1",
                    HttpProtocol::H2 => "h2",
                },
                args.size
            ),
            target: common.target.clone(),
            connections: common.connections,
            streams,
            units: "operations",
        },
    ))
}

fn request(uri: &Uri, method: &Method, body: &Bytes, h1: bool) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method.clone());
    builder = if h1 {
        // HTTP/1.1 request line in origin form, host in the Host header.
        let host = uri.authority().map(|a| a.as_str()).unwrap_or("localhost");
        builder
            .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
            .header(http::header::HOST, host)
    } else {
        builder.uri(uri.clone())
    };
    builder
        .body(Full::new(body.clone()))
        .expect("valid request parts")
}

async fn read_response(
    response: Result<http::Response<hyper::body::Incoming>, hyper::Error>,
) -> Result<(), String> {
    let response = response.map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("http status {}", status.as_u16()))
    }
}

impl Sender {
    /// Sends one request when the connection can take it.
    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<hyper::body::Incoming>, hyper::Error> {
        match self {
            Sender::H1(sender) => {
                sender.ready().await?;
                sender.send_request(request).await
            }
            Sender::H2(sender) => sender.send_request(request).await,
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(sender) => sender.is_closed(),
            Sender::H2(sender) => sender.is_closed(),
        }
    }
}

async fn worker(
    mut sender: Sender,
    shared: Arc<Shared>,
    uri: Arc<Uri>,
    method: Method,
    body: Bytes,
) -> Recorder {
    let h1 = matches!(sender, Sender::H1(_));
    let mut recorder = Recorder::new(shared.clone());
    while let Some(started) = shared.next().await {
        if sender.is_closed() {
            recorder.error("connection closed");
            break;
        }
        let response = sender.send(request(&uri, &method, &body, h1)).await;
        match read_response(response).await {
            Ok(()) => recorder.ok(started, 1),
            Err(kind) => recorder.error(kind),
        }
    }
    recorder
}

/// `hold`: opens `--connections` TLS h2 connections (TLS handshake and h2 preface, no
/// request), prints a line, keeps them idle for `--duration`. `handshakes`: full TLS
/// handshakes (no resumption) in a loop on `--connections` tasks.
pub async fn connections(args: ConnectionsArgs) -> Result<Report, String> {
    let common = &args.common;
    match args.mode {
        ConnectionsMode::Hold => hold(common).await,
        ConnectionsMode::Handshakes => handshakes(common).await,
    }
}

async fn hold(common: &crate::CommonArgs) -> Result<Report, String> {
    let target = Target::new(common, &[b"h2"], true)?;
    let shared = Shared::new(Plan {
        duration: common.duration,
        requests: None,
        rate: None,
        quiet: true,
    });
    let mut recorder = Recorder::new(shared.clone());
    let mut held = Vec::with_capacity(common.connections);
    // Open in batches so the target sees a burst it can accept, not a SYN flood.
    for batch in (0..common.connections).collect::<Vec<_>>().chunks(64) {
        let mut opening = Vec::new();
        for _ in batch {
            let target = target.clone();
            opening.push(tokio::spawn(async move {
                let started = Instant::now();
                let stream = target
                    .connect()
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                // TLS is complete here and the h2 preface and SETTINGS follow at once. No
                // request is sent, so the target has no upstream work to account for: this
                // measures what an idle client connection itself costs.
                let sender = h2_handshake(stream).await?;
                Ok::<_, String>((started, sender))
            }));
        }
        for task in opening {
            match task.await.map_err(|e| e.to_string())? {
                Ok((started, sender)) => {
                    recorder.ok(started, 1);
                    held.push(sender);
                }
                Err(kind) => recorder.error(kind),
            }
        }
    }
    // Harnesses wait for this line, then measure the target's memory.
    {
        use std::io::Write;
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "holding {} connections", held.len());
        let _ = stdout.flush();
    }
    tokio::time::sleep_until(shared.deadline().into()).await;
    drop(held);
    Ok(finish(
        &shared,
        vec![recorder],
        Labels {
            workload: "idle TLS h2 connections held (latency: connect + TLS + first request)"
                .into(),
            target: common.target.clone(),
            connections: common.connections,
            streams: 0,
            units: "connections",
        },
    ))
}

async fn handshakes(common: &crate::CommonArgs) -> Result<Report, String> {
    let target = Target::new(common, &[b"h2"], false)?;
    if !target.is_tls() {
        return Err("handshakes mode needs an https:// target".into());
    }
    let shared = Shared::new(Plan::from(common));
    let progress = spawn_progress(shared.clone());
    let mut workers = Vec::new();
    for _ in 0..common.connections {
        let target = target.clone();
        let shared = shared.clone();
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::new(shared.clone());
            while let Some(started) = shared.next().await {
                match target.connect().await {
                    Ok(stream) => {
                        drop(stream);
                        recorder.ok(started, 1)
                    }
                    Err(e) => recorder.error(format!("handshake: {}", e.kind())),
                }
            }
            recorder
        }));
    }
    let recorders = collect(&shared, progress, workers).await?;
    Ok(finish(
        &shared,
        recorders,
        Labels {
            workload: "full TLS handshakes (no resumption)".into(),
            target: common.target.clone(),
            connections: common.connections,
            streams: 1,
            units: "handshakes",
        },
    ))
}
