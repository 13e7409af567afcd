//! Websockets toward `h2c` and `h2` upstreams: pachgate opens an RFC 8441 extended CONNECT
//! stream (`:protocol websocket`) where the upstream's SETTINGS enable it, and tunnels the
//! client's websocket (an HTTP/1.1 Upgrade, or the client's own extended CONNECT over h2)
//! through that stream's DATA frames. An upstream that does not enable it gets no stream and
//! the client a 502. The upstream is hyper's h2 server (its extended CONNECT support on or
//! off; over TLS for `h2`) running tungstenite's server role on the stream; clients are
//! tungstenite over rustls, and hyper's h2 client for extended CONNECT.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use common::*;

const COOKIE: &str = "session=ws-h2-upstream-cookie";

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    protocol: Option<String>,
    uri: http::Uri,
    headers: HeaderMap,
}

/// An h2c server on loopback. With `connect_protocol` it advertises
/// SETTINGS_ENABLE_CONNECT_PROTOCOL and serves websockets on extended CONNECT streams,
/// echoing text and binary messages; a path under `/refused` is answered 403. Anything else
/// is answered 200 "plain".
struct H2Upstream {
    address: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicUsize>,
    /// Websocket sessions whose stream has ended, however it did: the close code each got
    /// from the client side, if a close frame came.
    ended: Arc<Mutex<Vec<Option<u16>>>>,
}

impl H2Upstream {
    async fn start(connect_protocol: bool) -> H2Upstream {
        H2Upstream::start_with(connect_protocol, None, None).await
    }

    /// Over TLS with ALPN `h2` when `tls` is given; with `window` as its stream and
    /// connection windows (hyper's default: 1 MiB) when given.
    async fn start_with(
        connect_protocol: bool,
        tls: Option<tokio_rustls::TlsAcceptor>,
        window: Option<u32>,
    ) -> H2Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let ended = Arc::new(Mutex::new(Vec::new()));
        let (seen_by_server, counted) = (seen.clone(), connections.clone());
        let ended_by_server = ended.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let seen = seen_by_server.clone();
                let ended = ended_by_server.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let mut builder =
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    if connect_protocol {
                        builder.enable_connect_protocol();
                    }
                    if let Some(window) = window {
                        builder
                            .initial_stream_window_size(window)
                            .initial_connection_window_size(window);
                    }
                    let service = hyper::service::service_fn(move |request| {
                        let (seen, ended) = (seen.clone(), ended.clone());
                        async move { Ok::<_, Infallible>(serve(request, &seen, ended)) }
                    });
                    match tls {
                        None => {
                            let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                        }
                    }
                });
            }
        });
        H2Upstream {
            address,
            seen,
            connections,
            ended,
        }
    }

    fn ended(&self) -> Vec<Option<u16>> {
        self.ended.lock().unwrap().clone()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(
    mut request: Request<Incoming>,
    seen: &Mutex<Vec<Seen>>,
    ended: Arc<Mutex<Vec<Option<u16>>>>,
) -> Response<Full<Bytes>> {
    let protocol = request
        .extensions()
        .get::<hyper::ext::Protocol>()
        .map(|p| p.as_str().to_string());
    seen.lock().unwrap().push(Seen {
        method: request.method().clone(),
        protocol: protocol.clone(),
        uri: request.uri().clone(),
        headers: request.headers().clone(),
    });
    if request.uri().path().starts_with("/refused") {
        return Response::builder()
            .status(StatusCode::FORBIDDEN)
            .body(Full::new(Bytes::from_static(b"not for you\n")))
            .unwrap();
    }
    if request.method() != Method::CONNECT || protocol.as_deref() != Some("websocket") {
        return Response::new(Full::new(Bytes::from_static(b"plain\n")));
    }
    let subprotocol = request.headers().get("sec-websocket-protocol").cloned();
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let mut close_code = None;
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(frame) = &message {
                close_code = frame.as_ref().map(|f| u16::from(f.code));
                let _ = ws.close(None).await;
                break;
            }
            if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
                break;
            }
        }
        ended.lock().unwrap().push(close_code);
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    if let Some(subprotocol) = subprotocol {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", subprotocol);
    }
    response
}

/// pachgate with `/ws` to an upstream that enables extended CONNECT and `/plain-h2` to one
/// that does not (both h2c).
fn proxy(supporting: &H2Upstream, unsupporting: &H2Upstream) -> Proxy {
    proxy_with(supporting, unsupporting, "")
}

/// The same, with more config (a `[limits]` section, say) after the routes.
fn proxy_with(supporting: &H2Upstream, unsupporting: &H2Upstream, more: &str) -> Proxy {
    TestConfig::new()
        .upstream("rfc8441", supporting.address, "h2c")
        .upstream("plain-h2", unsupporting.address, "h2c")
        .route("plain-h2", "path_prefix = \"/plain-h2\"", "plain-h2")
        .route("rfc8441", "path_prefix = \"/\"", "rfc8441")
        .section(more)
        .start()
}

async fn tls_to(proxy: &Proxy, alpn: &[u8]) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(proxy.https()).await.unwrap();
    tokio_rustls::TlsConnector::from(common::client_tls(&proxy.ca(), alpn))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// A websocket to `path` through pachgate over TLS (HTTP/1.1 Upgrade), with a cookie, an
/// origin and a subprotocol offer.
async fn connect(
    proxy: &Proxy,
    path: &str,
) -> Result<(Ws, tungstenite::handshake::client::Response), tungstenite::Error> {
    let stream = tls_to(proxy, b"http/1.1").await;
    let mut request = format!("wss://{}{path}", proxy.target())
        .into_client_request()
        .unwrap();
    let headers = request.headers_mut();
    headers.insert("cookie", COOKIE.parse().unwrap());
    headers.insert("origin", "https://console.example".parse().unwrap());
    headers.insert("sec-websocket-protocol", "chat".parse().unwrap());
    tokio_tungstenite::client_async(request, stream).await
}

async fn next_message<S>(ws: &mut WebSocketStream<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo within 10 s")
        .expect("the session is open")
        .expect("a message")
}

async fn echo<S>(ws: &mut WebSocketStream<S>, message: Message)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    ws.send(message.clone()).await.unwrap();
    assert_eq!(next_message(ws).await, message);
}

/// The status and body pachgate answered a websocket request it did not switch.
fn refusal<T>(result: Result<T, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

// Two workers: the upstream keeps running while the test waits for pachgate's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_websocket_reaches_an_h2c_upstream_by_extended_connect() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);

    let (mut ws, response) = connect(&proxy, "/ws/session?x=1")
        .await
        .expect("the upgrade through pachgate succeeds");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");

    echo(&mut ws, Message::text("over extended CONNECT")).await;
    // Larger than the stream's initial window (64 KiB) both ways: flow control at work.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    echo(&mut ws, Message::binary(big.clone())).await;
    echo(&mut ws, Message::binary(big)).await;
    echo(&mut ws, Message::text("and after")).await;
    ws.close(None).await.unwrap();
    // The upstream answers the close; the tunnel then ends.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(closed.is_ok(), "the close handshake completes");
    drop(ws);

    // One access line for the tunnel, when it closes, with its byte counts both ways.
    let lines = proxy
        .running
        .stdout_until("\"websocket\"", Duration::from_secs(10));
    let tunnel: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| record["kind"] == "websocket")
        .collect();
    assert_eq!(tunnel.len(), 1, "{lines:#?}");
    assert_eq!(tunnel[0]["status"], 101);
    assert_eq!(tunnel[0]["upstream_protocol"], "h2c");
    assert_eq!(tunnel[0]["upstream"], supporting.address.to_string());
    assert_eq!(tunnel[0]["route"], "rfc8441");
    for direction in ["bytes_received", "bytes_sent"] {
        let bytes = tunnel[0][direction].as_u64().unwrap();
        assert!(bytes > 400_000, "{direction}: {bytes}");
    }

    let seen = supporting.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let request = &seen[0];
    assert_eq!(request.method, Method::CONNECT);
    assert_eq!(request.protocol.as_deref(), Some("websocket"));
    assert_eq!(request.uri.path(), "/ws/session");
    assert_eq!(request.uri.query(), Some("x=1"));
    assert_eq!(
        request.uri.authority().map(|a| a.as_str()),
        Some(proxy.target().as_str())
    );
    let headers = &request.headers;
    assert_eq!(headers["cookie"], COOKIE);
    assert_eq!(headers["origin"], "https://console.example");
    assert_eq!(headers["sec-websocket-version"], "13");
    assert_eq!(headers["sec-websocket-protocol"], "chat");
    for absent in ["sec-websocket-key", "upgrade", "connection", "host"] {
        assert!(
            !headers.contains_key(absent),
            "{absent} forwarded: {headers:?}"
        );
    }
}

#[tokio::test]
async fn h2_client_extended_connect_reaches_an_h2c_upstream_by_extended_connect() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);

    let stream = tls_to(&proxy, b"h2").await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{}/ws-h2", proxy.target()))
        .header("sec-websocket-version", "13")
        .header("cookie", COOKIE)
        .body(Empty::<Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    echo(&mut ws, Message::text("h2 both sides")).await;
    echo(&mut ws, Message::binary(vec![3u8; 200_000])).await;

    let seen = supporting.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::CONNECT);
    assert_eq!(seen[0].protocol.as_deref(), Some("websocket"));
    assert_eq!(seen[0].uri.path(), "/ws-h2");
    assert_eq!(seen[0].headers["cookie"], COOKIE);
}

#[tokio::test]
async fn an_upstream_refusal_is_passed_back() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);

    let (status, body) = refusal(connect(&proxy, "/refused").await);
    assert_eq!(status, 403, "{body}");
    assert_eq!(body, "not for you\n");
    let seen = supporting.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].protocol.as_deref(), Some("websocket"));

    let (mut ws, _) = connect(&proxy, "/ws").await.unwrap();
    echo(&mut ws, Message::text("still served")).await;
}

#[tokio::test]
async fn an_h2c_upstream_without_extended_connect_is_a_502_and_gets_no_stream() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);
    let (mut bystander, _) = connect(&proxy, "/bystander").await.unwrap();
    echo(&mut bystander, Message::text("before")).await;

    let (status, body) = refusal(connect(&proxy, "/plain-h2/ws").await);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body, "websocket upgrade failed\n");
    let why = "does not support websockets over HTTP/2";
    let logged = tokio::time::timeout(Duration::from_secs(5), async {
        while !proxy.running.stderr_so_far().contains(why) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        logged.is_ok(),
        "the log says why: {}",
        proxy.running.stderr_so_far()
    );
    // pachgate connected to read the upstream's SETTINGS, and opened no stream.
    assert_eq!(unsupporting.connections.load(Ordering::SeqCst), 1);
    assert!(unsupporting.seen().is_empty(), "{:?}", unsupporting.seen());

    // The same upstream connection still serves ordinary requests.
    let stream = tls_to(&proxy, b"h2").await;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let request = Request::get(format!("https://{}/plain-h2/page", proxy.target()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"plain\n");
    assert_eq!(unsupporting.connections.load(Ordering::SeqCst), 1);
    assert_eq!(unsupporting.seen().len(), 1);
    assert_eq!(unsupporting.seen()[0].method, Method::GET);

    echo(&mut bystander, Message::text("after")).await;
}

/// A client that vanishes without a close frame: the upstream's stream ends too (pachgate
/// ends or resets it), so nothing is left open upstream; other sessions go on.
#[tokio::test]
async fn a_client_that_vanishes_ends_the_upstream_stream() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);
    let (mut bystander, _) = connect(&proxy, "/bystander").await.unwrap();
    let (mut ws, _) = connect(&proxy, "/ws").await.unwrap();
    echo(&mut ws, Message::text("then gone")).await;
    drop(ws);

    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while supporting.ended().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the upstream's session is still open");
    echo(&mut bystander, Message::text("still here")).await;
    assert_eq!(supporting.ended(), [None], "ended without a close frame");
}

/// SIGTERM with a tunnel open: at `drain_timeout` both sides get a close frame 1001 (the
/// upstream's through its h2 stream), and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_closes_a_tunnel_to_an_h2c_upstream_with_1001_both_ways() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let mut proxy = proxy_with(
        &supporting,
        &unsupporting,
        "[limits]\ndrain_timeout = \"1s\"",
    );
    let (mut ws, _) = connect(&proxy, "/ws").await.unwrap();
    echo(&mut ws, Message::text("before the drain")).await;

    proxy.running.signal("TERM");
    match next_message(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1001, "{frame:?}"),
        other => panic!("expected a close frame 1001, got {other:?}"),
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while supporting.ended().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ended.is_ok(), "the upstream's session did not end");
    assert_eq!(
        supporting.ended(),
        [Some(1001)],
        "the upstream got a close frame 1001"
    );
    let status = tokio::task::block_in_place(|| proxy.running.wait_exit(Duration::from_secs(10)));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// A client stream that reads at most 4 KiB at a time, 1 ms apart: a client on a slow link.
struct SlowReader<S> {
    inner: S,
    pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for SlowReader<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if let Some(pause) = self.pause.as_mut() {
            std::task::ready!(std::future::Future::poll(pause.as_mut(), cx));
            self.pause = None;
        }
        let mut small = [0u8; 4096];
        let want = buf.remaining().min(small.len());
        let mut part = tokio::io::ReadBuf::new(&mut small[..want]);
        std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        buf.put_slice(part.filled());
        self.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(1))));
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for SlowReader<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A message larger than the socket buffers toward a slow client arrives whole: the last
/// TLS records of the echo, which the socket could not take when pachgate wrote them, are
/// pushed out as it drains, not left in rustls's buffer until the next message comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_reaches_a_slow_client_whole() {
    let (supporting, unsupporting) = (
        H2Upstream::start(true).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(proxy.https()).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(common::client_tls(&proxy.ca(), b"http/1.1"))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let slow = SlowReader {
        inner: tls,
        pause: None,
    };
    let request = format!("wss://{}/ws", proxy.target())
        .into_client_request()
        .unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(request, slow)
        .await
        .unwrap();
    let large: Vec<u8> = (0..6 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(large.clone())).await.unwrap();
    match next_message(&mut ws).await {
        Message::Binary(echoed) => assert!(
            echoed[..] == large[..],
            "the echo differs: {} bytes of {}",
            echoed.len(),
            large.len()
        ),
        other => panic!("expected the binary echo, got {other:?}"),
    }
}

/// A message many times the upstream's h2 windows reaches it whole while the client waits
/// for the echo: the last DATA, held back until the upstream's WINDOW_UPDATE, is sent when
/// it comes, not left until the client's next message (which would never come).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_upstreams_window_reaches_it_whole() {
    let (supporting, unsupporting) = (
        H2Upstream::start_with(true, None, Some(65_535)).await,
        H2Upstream::start(false).await,
    );
    let proxy = proxy(&supporting, &unsupporting);
    let (mut ws, _) = connect(&proxy, "/ws").await.unwrap();
    let large: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        echo(&mut ws, Message::binary(large.clone())).await;
    }
}

/// The TLS acceptor of an upstream with a certificate for `backend.internal`, made by
/// `pachgate cert generate` in `dir/backend/`, offering ALPN `h2`.
fn backend_tls(dir: &std::path::Path) -> tokio_rustls::TlsAcceptor {
    use rustls_pki_types::PrivateKeyDer;
    let generated = std::process::Command::new(BIN)
        .args([
            "cert",
            "generate",
            "--out",
            "backend",
            "--host",
            "backend.internal",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("backend/tls.crt"))
            .unwrap()
            .map(|cert| cert.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("backend/tls.key")).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

/// An `h2` upstream (TLS, verified against its `ca` and `server_name`) takes the websocket
/// the same way, inside TLS.
#[tokio::test]
async fn http1_websocket_reaches_an_h2_tls_upstream_by_extended_connect() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = H2Upstream::start_with(true, Some(backend_tls(dir.path())), None).await;
    let ca = dir.path().join("backend/ca.crt");
    let proxy = TestConfig::new()
        .upstream_with(
            "backend",
            upstream.address,
            "h2",
            &format!(
                "ca = \"{}\"\nserver_name = \"backend.internal\"",
                ca.display()
            ),
        )
        .route("backend", "path_prefix = \"/\"", "backend")
        .start();
    let (mut ws, _) = connect(&proxy, "/ws-tls")
        .await
        .expect("the upgrade through pachgate succeeds");
    echo(&mut ws, Message::text("inside TLS")).await;
    echo(&mut ws, Message::binary(vec![9u8; 200_000])).await;
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, Method::CONNECT);
    assert_eq!(seen[0].protocol.as_deref(), Some("websocket"));
    assert_eq!(seen[0].uri.scheme_str(), Some("https"));
    assert_eq!(seen[0].headers["cookie"], COOKIE);
}
