//! The pipeline's tunnel stage, driven in-process: websocket handshakes from an HTTP/1.1
//! client (Upgrade) and from an h2c client (RFC 8441 extended CONNECT) through a gateway in
//! this test's runtime to scripted upstreams — a raw HTTP/1.1 backend, and a frame-scripted
//! h2c upstream that enables extended CONNECT. The tests check, in Rust, what each side
//! received: the handshake the upstream saw, the answer the client got, the websocket bytes
//! both ways (passed through unchanged) and the close; and that a refused upgrade reaches
//! the client as the upstream's own answer, its body under the route's timers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use pachgate_h2_wire as wire;
use pachgate_proxy_core::{
    ClientPolicy, Gateway, RouteSpec, Snapshot, UpstreamProtocol, UpstreamSpec,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod fixture;
mod scripted_h2;
use fixture::*;
use scripted_h2::{literals, Peer};

/// RFC 6455's own example key and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A gateway whose `/ws` route leads to an upstream of `protocol` at `upstream_addr`.
async fn gateway_to(
    upstream_addr: SocketAddr,
    protocol: UpstreamProtocol,
) -> (Arc<Gateway>, SocketAddr) {
    let backend = upstream("backend", upstream_addr, protocol);
    gateway_with(open_route("ws", "/ws", "backend"), backend).await
}

/// A gateway with one `route`, to the upstream `backend` (which must be named so).
async fn gateway_with(route: RouteSpec, backend: UpstreamSpec) -> (Arc<Gateway>, SocketAddr) {
    let snapshot = Snapshot::build(
        vec![route],
        vec![backend],
        None,
        None,
        ClientPolicy::default(),
    )
    .expect("a valid snapshot");
    serve(snapshot).await
}

/// A gateway whose `/ws` route has a 300 ms `idle_timeout`, to an HTTP/1.1 backend that
/// listens on the returned listener (the test plays it).
async fn gateway_with_300ms_idle_timeout() -> (TcpListener, Arc<Gateway>, SocketAddr) {
    let (listener, backend) = scripted_h2::listener().await;
    let mut route = open_route("ws", "/ws", "backend");
    route.timeouts = pachgate_proxy_core::RouteTimeouts {
        total: None,
        idle: Some(Duration::from_millis(300)),
    };
    let backend = upstream("backend", backend, UpstreamProtocol::Http1);
    let (gateway, addr) = gateway_with(route, backend).await;
    (listener, gateway, addr)
}

/// A backend that reads one request head and then holds the connection without a word.
fn silent_backend(listener: TcpListener) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let _ = read_head(&mut socket).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(socket);
    })
}

/// A websocket frame as a server sends it (unmasked, payload under 126 bytes).
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x80 | opcode, payload.len() as u8];
    frame.extend_from_slice(payload);
    frame
}

/// A websocket frame as a client must send it (masked, payload under 126 bytes).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut frame = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;

/// The frames of one conversation: the server's greeting, the client's message and close,
/// the server's close.
struct Script {
    welcome: Vec<u8>,
    hello: Vec<u8>,
    client_close: Vec<u8>,
    server_close: Vec<u8>,
}

fn script() -> Script {
    Script {
        welcome: server_frame(TEXT, b"welcome"),
        hello: client_frame(TEXT, b"hello from the client"),
        client_close: client_frame(CLOSE, &1000u16.to_be_bytes()),
        server_close: server_frame(CLOSE, &1000u16.to_be_bytes()),
    }
}

/// Reads an HTTP/1.1 head (to the blank line); the head as text and what followed it.
async fn read_head(socket: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buffer.split_off(end + 4);
            return (String::from_utf8(buffer).unwrap(), rest);
        }
        let n = tokio::time::timeout(Duration::from_secs(10), socket.read(&mut chunk))
            .await
            .expect("a head in time")
            .unwrap();
        assert!(n > 0, "the connection ended inside a head");
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The request line and header fields of a head (names lower-cased).
struct Head {
    line: String,
    fields: Vec<(String, String)>,
}

impl Head {
    fn parse(text: &str) -> Head {
        let mut lines = text.trim_end().split("\r\n");
        let line = lines.next().unwrap().to_string();
        let fields = lines
            .map(|l| {
                let (name, value) = l.split_once(':').expect("a header field");
                (name.trim().to_ascii_lowercase(), value.trim().to_string())
            })
            .collect();
        Head { line, fields }
    }

    fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads exactly `len` bytes, `already` first.
async fn read_exactly<R: AsyncRead + Unpin>(
    from: &mut R,
    already: &mut Vec<u8>,
    len: usize,
) -> Vec<u8> {
    let mut out: Vec<u8> = already.drain(..already.len().min(len)).collect();
    let mut rest = vec![0u8; len - out.len()];
    tokio::time::timeout(Duration::from_secs(10), from.read_exact(&mut rest))
        .await
        .expect("bytes in time")
        .unwrap();
    out.extend_from_slice(&rest);
    out
}

/// True when `from` ends (EOF or reset) within 5 s without sending more.
async fn ends<R: AsyncRead + Unpin>(from: &mut R) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), from.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// What the HTTP/1.1 backend observed of one websocket.
struct BackendSaw {
    head: Head,
    from_client: Vec<u8>,
    close: Vec<u8>,
    ended: bool,
}

/// An HTTP/1.1 websocket backend for one connection: it answers the handshake with 101 (the
/// accept value for the key it received), greets, reads the client's message and close,
/// answers the close and ends the connection.
async fn backend_accepting(listener: TcpListener) -> BackendSaw {
    let s = script();
    let (mut socket, _) = listener.accept().await.unwrap();
    let (text, mut rest) = read_head(&mut socket).await;
    let head = Head::parse(&text);
    let key = head.field("sec-websocket-key").expect("a key").to_string();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
    socket.write_all(answer.as_bytes()).await.unwrap();
    socket.write_all(&s.welcome).await.unwrap();
    let from_client = read_exactly(&mut socket, &mut rest, s.hello.len()).await;
    let close = read_exactly(&mut socket, &mut rest, s.client_close.len()).await;
    socket.write_all(&s.server_close).await.unwrap();
    socket.shutdown().await.unwrap();
    let ended = ends(&mut socket).await;
    BackendSaw {
        head,
        from_client,
        close,
        ended,
    }
}

/// The client's half of the conversation on an open tunnel: reads the greeting, sends its
/// message and close, reads the server's close, then the end, and ends its own side; checks
/// each read came as the server sent it.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(tunnel: &mut S, mut already: Vec<u8>) {
    let s = script();
    let welcome = read_exactly(tunnel, &mut already, s.welcome.len()).await;
    assert_eq!(welcome, s.welcome, "the server's greeting, byte for byte");
    tunnel.write_all(&s.hello).await.unwrap();
    tunnel.write_all(&s.client_close).await.unwrap();
    tunnel.flush().await.unwrap();
    let close = read_exactly(tunnel, &mut already, s.server_close.len()).await;
    assert_eq!(close, s.server_close, "the server's close, byte for byte");
    assert!(
        ends(tunnel).await,
        "pachgate ended the client's side after the close"
    );
    // As a client does once the close handshake is over: its side ends too.
    tunnel.shutdown().await.unwrap();
}

/// An HTTP/1.1 websocket upgrade from a raw client, answered 101 with the accept value for
/// its key and the subprotocol: the client's connection, and the bytes after the head.
async fn http1_upgrade(gateway: SocketAddr, target: &str) -> (TcpStream, Vec<u8>) {
    let mut client = TcpStream::connect(gateway).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: pachgate.test\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: chat\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let (text, rest) = read_head(&mut client).await;
    let answer = Head::parse(&text);
    assert_eq!(answer.line, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(answer.field("sec-websocket-accept"), Some(ACCEPT));
    assert_eq!(answer.field("sec-websocket-protocol"), Some("chat"));
    let upgrade = answer.field("upgrade").map(str::to_ascii_lowercase);
    assert_eq!(upgrade.as_deref(), Some("websocket"));
    (client, rest)
}

fn assert_backend_saw_the_conversation(saw: &BackendSaw) {
    let s = script();
    assert_eq!(
        saw.from_client, s.hello,
        "the client's frame, byte for byte"
    );
    assert_eq!(
        saw.close, s.client_close,
        "the client's close, byte for byte"
    );
    assert!(saw.ended, "pachgate ended the backend side after the close");
    assert_eq!(saw.head.field("upgrade"), Some("websocket"));
    assert_eq!(
        saw.head
            .field("connection")
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("upgrade")
    );
    assert_eq!(saw.head.field("sec-websocket-version"), Some("13"));
    assert_eq!(saw.head.field("sec-websocket-protocol"), Some("chat"));
}

#[tokio::test]
async fn an_http1_websocket_upgrade_is_tunnelled_both_ways_and_closed() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(backend_accepting(listener));

    let (mut client, rest) = http1_upgrade(addr, "/ws/chat?room=1").await;
    converse(&mut client, rest).await;

    let saw = backend.await.unwrap();
    assert_eq!(saw.head.line, "GET /ws/chat?room=1 HTTP/1.1");
    assert_eq!(
        saw.head.field("sec-websocket-key"),
        Some(KEY),
        "the client's own key"
    );
    assert_eq!(saw.head.field("host"), Some("pachgate.test"));
    assert_backend_saw_the_conversation(&saw);
}

/// A websocket upgrade request for `target`, as hyper's HTTP/1.1 client sends it.
fn upgrade_request(target: &str) -> Request<TestBody> {
    Request::get(target)
        .header("host", "pachgate.test")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", KEY)
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap()
}

#[tokio::test]
async fn a_refused_upgrade_reaches_the_client_as_the_backends_answer() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (text, _) = read_head(&mut socket).await;
        socket
            .write_all(
                b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\
                  X-Backend: refused\r\n\r\nno websocket for you\n",
            )
            .await
            .unwrap();
        Head::parse(&text)
    });
    let request = upgrade_request("/ws/chat");
    let answer = send_http1(addr, request).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.header("x-backend"), Some("refused"));
    assert_eq!(answer.header("sec-websocket-accept"), None);
    assert_eq!(answer.body, "no websocket for you\n");
    let saw = backend.await.unwrap();
    assert_eq!(
        saw.field("upgrade"),
        Some("websocket"),
        "the upgrade was asked for"
    );
}

/// A backend that reads the upgrade and never answers it is given up on after the
/// upstream's `response_timeout`, as an h2 upstream's extended CONNECT is: 504.
#[tokio::test]
async fn an_upgrade_the_backend_never_answers_ends_at_the_response_timeout() {
    let (listener, backend) = scripted_h2::listener().await;
    let mut spec = upstream("backend", backend, UpstreamProtocol::Http1);
    spec.response_timeout = Some(Duration::from_millis(300));
    let (_gateway, addr) = gateway_with(open_route("ws", "/ws", "backend"), spec).await;
    let silent = silent_backend(listener);
    let request = upgrade_request("/ws/chat");
    let answer = tokio::time::timeout(Duration::from_secs(5), send_http1(addr, request))
        .await
        .expect("an answer at the response timeout, not a wait");
    assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
    silent.abort();
}

/// With `response_timeout` off (its default), the route's `idle_timeout` bounds the
/// handshake as it bounds any request's wait for its response head: 504, for an HTTP/1.1
/// upgrade and for an h2 extended CONNECT, instead of a wait for good.
#[tokio::test]
async fn an_upgrade_the_backend_never_answers_ends_at_the_routes_idle_timeout() {
    for extended in [false, true] {
        let (listener, _gateway, addr) = gateway_with_300ms_idle_timeout().await;
        let silent = silent_backend(listener);
        let status = tokio::time::timeout(Duration::from_secs(5), async {
            match extended {
                false => send_http1(addr, upgrade_request("/ws/chat")).await.status,
                true => extended_connect(addr, "/ws/chat").await.status(),
            }
        })
        .await
        .expect("an answer at the idle timeout, not a wait");
        assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "extended: {extended}");
        silent.abort();
    }
}

/// A refused upgrade whose body stops coming is an ordinary answer held up: the route's
/// `idle_timeout` cuts it, for an HTTP/1.1 upgrade and for an h2 extended CONNECT, instead
/// of the client (and its connection) waiting for good.
#[tokio::test]
async fn a_refused_upgrade_whose_body_stalls_is_cut_at_the_routes_idle_timeout() {
    for extended in [false, true] {
        let (listener, _gateway, addr) = gateway_with_300ms_idle_timeout().await;
        let stalling = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let _ = read_head(&mut socket).await;
            socket
                .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 100\r\n\r\npartial")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let response = match extended {
            false => {
                let tcp = TcpStream::connect(addr).await.unwrap();
                let (mut sender, connection) =
                    hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .unwrap();
                tokio::spawn(connection);
                sender
                    .send_request(upgrade_request("/ws/chat"))
                    .await
                    .unwrap()
            }
            true => extended_connect(addr, "/ws/chat").await,
        };
        assert_eq!(
            response.status(),
            StatusCode::FORBIDDEN,
            "extended: {extended}"
        );
        let body = tokio::time::timeout(
            Duration::from_secs(5),
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .unwrap_or_else(|_| panic!("extended: {extended}: the stalled body was not cut"));
        assert!(
            body.is_err(),
            "extended: {extended}: a cut body must not look complete"
        );
        stalling.abort();
    }
}

/// Opens an h2c connection to the gateway and sends an extended CONNECT for `path`.
async fn extended_connect(
    gateway: SocketAddr,
    path: &str,
) -> http::Response<hyper::body::Incoming> {
    let mut sender = h2c_sender(gateway).await;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("http://pachgate.test{path}"))
        .header("sec-websocket-version", "13")
        .header("sec-websocket-protocol", "chat")
        .body(empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("the gateway accepts extended CONNECT")
}

/// An extended CONNECT websocket over h2c, answered 200 with the subprotocol: its stream.
async fn h2_websocket(gateway: SocketAddr) -> TokioIo<hyper::upgrade::Upgraded> {
    let response = extended_connect(gateway, "/ws/chat").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["sec-websocket-protocol"], "chat");
    TokioIo::new(hyper::upgrade::on(response).await.expect("a tunnel"))
}

#[tokio::test]
async fn an_h2_extended_connect_to_an_http1_backend_is_tunnelled() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(backend_accepting(listener));

    let mut tunnel = h2_websocket(addr).await;
    converse(&mut tunnel, Vec::new()).await;

    let saw = backend.await.unwrap();
    // pachgate made the HTTP/1.1 handshake itself: GET, its own key, the client's host.
    assert_eq!(saw.head.line, "GET /ws/chat HTTP/1.1");
    assert_eq!(saw.head.field("host"), Some("pachgate.test"));
    assert_eq!(saw.head.field("sec-websocket-key").map(str::len), Some(24));
    assert_backend_saw_the_conversation(&saw);
}

/// What the h2c upstream observed of one extended CONNECT stream.
struct StreamSaw {
    headers: Vec<(String, String)>,
    from_client: Vec<u8>,
    ended: bool,
}

/// An h2c upstream that enables extended CONNECT and plays the server's half of the
/// conversation on the first stream: 200, the greeting, then (once the client's message and
/// close arrived) its close with END_STREAM.
async fn h2_upstream_accepting(listener: TcpListener) -> StreamSaw {
    let s = script();
    let mut peer = Peer::accept(&listener, &[(wire::SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)]).await;
    let (stream, headers) = peer.request_head().await;
    let mut out = BytesMut::new();
    wire::put_header_block(
        &mut out,
        16_384,
        stream,
        &literals(&[(":status", "200"), ("sec-websocket-protocol", "chat")]),
        false,
    );
    out.extend_from_slice(&scripted_h2::frame(wire::DATA, 0, stream, &s.welcome));
    peer.write(&out).await;
    let expected = s.hello.len() + s.client_close.len();
    let (from_client, mut ended) = peer.read_data(stream, expected).await;
    peer.write(&scripted_h2::frame(
        wire::DATA,
        wire::END_STREAM,
        stream,
        &s.server_close,
    ))
    .await;
    if !ended {
        ended = peer.read_data(stream, usize::MAX).await.1;
    }
    StreamSaw {
        headers,
        from_client,
        ended,
    }
}

fn assert_stream_saw_the_conversation(saw: &StreamSaw) {
    let s = script();
    let field = |name: &str| {
        saw.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field(":method"), Some("CONNECT"));
    assert_eq!(field(":protocol"), Some("websocket"));
    assert_eq!(field(":path"), Some("/ws/chat"));
    assert_eq!(field("sec-websocket-version"), Some("13"));
    assert_eq!(field("sec-websocket-protocol"), Some("chat"));
    for hop in ["upgrade", "connection", "sec-websocket-key", "host"] {
        assert_eq!(field(hop), None, "{hop} belongs to the client's hop");
    }
    assert_eq!(saw.from_client, [s.hello, s.client_close].concat());
    assert!(
        saw.ended,
        "pachgate ended the stream (END_STREAM) after the client did"
    );
}

#[tokio::test]
async fn an_h2_extended_connect_to_an_h2c_upstream_is_an_extended_connect_there() {
    let (listener, upstream_addr) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(upstream_addr, UpstreamProtocol::H2c).await;
    let upstream = tokio::spawn(h2_upstream_accepting(listener));

    let mut tunnel = h2_websocket(addr).await;
    converse(&mut tunnel, Vec::new()).await;
    assert_stream_saw_the_conversation(&upstream.await.unwrap());
}

#[tokio::test]
async fn an_http1_upgrade_to_an_h2c_upstream_becomes_an_extended_connect() {
    let (listener, upstream_addr) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(upstream_addr, UpstreamProtocol::H2c).await;
    let upstream = tokio::spawn(h2_upstream_accepting(listener));

    // The upstream's stream has no key to answer: pachgate derives the accept value itself.
    let (mut client, rest) = http1_upgrade(addr, "/ws/chat").await;
    converse(&mut client, rest).await;
    assert_stream_saw_the_conversation(&upstream.await.unwrap());
}

#[tokio::test]
async fn a_refused_extended_connect_reaches_the_client_as_the_upstreams_answer() {
    let (listener, upstream_addr) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(upstream_addr, UpstreamProtocol::H2c).await;
    let upstream = tokio::spawn(async move {
        let mut peer =
            Peer::accept(&listener, &[(wire::SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)]).await;
        let (stream, headers) = peer.request_head().await;
        let mut out = BytesMut::new();
        let head = literals(&[(":status", "403"), ("content-type", "text/plain")]);
        wire::put_header_block(&mut out, 16_384, stream, &head, false);
        out.extend_from_slice(&scripted_h2::frame(
            wire::DATA,
            wire::END_STREAM,
            stream,
            b"no websocket for you\n",
        ));
        peer.write(&out).await;
        (headers, peer)
    });
    let response = extended_connect(addr, "/ws/chat").await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(response.headers()["content-type"], "text/plain");
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(&body[..], b"no websocket for you\n");
    let (headers, _peer) = upstream.await.unwrap();
    assert!(headers.contains(&(":protocol".to_string(), "websocket".to_string())));
}

/// An h2 websocket's path is routed on its normal form, as every request's is: a `..`
/// cannot take it out of the route its first segments name, nor into one they do not.
#[tokio::test]
async fn an_extended_connect_is_routed_on_its_normal_path() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(backend_accepting(listener));

    let outside = extended_connect(addr, "/ws/../admin").await;
    assert_eq!(outside.status(), StatusCode::NOT_FOUND);

    let mut tunnel = TokioIo::new(
        hyper::upgrade::on(extended_connect(addr, "/elsewhere/../ws/./chat").await)
            .await
            .expect("the websocket opens"),
    );
    converse(&mut tunnel, Vec::new()).await;
    let saw = backend.await.unwrap();
    assert_eq!(saw.head.line, "GET /ws/chat HTTP/1.1");
}

/// A websocket handshake tells the upstream who the client is and which host it asked
/// for, as every forwarded request does: a client's own `X-Forwarded-*` are not passed on
/// (it is no trusted proxy: its address alone, proto and host pachgate's), and an
/// absolute-form target's host is the Host the backend sees (RFC 9112 §3.2.2), the one the
/// route and gate decided on.
#[tokio::test]
async fn a_websocket_handshake_carries_the_forwarded_headers_and_the_routed_host() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(backend_accepting(listener));

    let mut client = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET http://pachgate.test/ws/chat HTTP/1.1\r\nHost: elsewhere.test\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
    );
    client.write_all(request.as_bytes()).await.unwrap();
    let (text, rest) = read_head(&mut client).await;
    assert_eq!(Head::parse(&text).line, "HTTP/1.1 101 Switching Protocols");
    converse(&mut client, rest).await;

    let saw = backend.await.unwrap();
    assert_eq!(saw.head.line, "GET /ws/chat HTTP/1.1");
    assert_eq!(saw.head.field("host"), Some("pachgate.test"));
    assert_eq!(saw.head.field("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(saw.head.field("x-forwarded-proto"), Some("http"));
    assert_eq!(saw.head.field("x-forwarded-host"), Some("pachgate.test"));
}

/// A backend that answers an h2 client's websocket with 200 and a page (a single-page
/// app's fallback) has not opened a tunnel: for an extended CONNECT a 2xx would tell the
/// client it has one (RFC 8441 §5), so it gets 502 instead. The handshake went without the
/// client's Content-Length (a backend would wait for a body that never comes), and with the
/// client's cookie fields as one line (RFC 9113 §8.2.3), as a forwarded request's are.
#[tokio::test]
async fn an_extended_connect_answered_200_by_an_http1_backend_is_a_502() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (text, _) = read_head(&mut socket).await;
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 6\r\n\r\n<html>",
            )
            .await
            .unwrap();
        Head::parse(&text)
    });
    let mut sender = h2c_sender(addr).await;
    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri("http://pachgate.test/ws/chat")
        .header("sec-websocket-version", "13")
        .header("content-length", "0")
        .header("cookie", "session=abc")
        .header("cookie", "theme=dark")
        .body(empty())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    let saw = backend.await.unwrap();
    assert_eq!(saw.field("content-length"), None);
    let cookies: Vec<&str> = saw
        .fields
        .iter()
        .filter(|(name, _)| name == "cookie")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(cookies, ["session=abc; theme=dark"]);
}

/// A backend's 101 without `Upgrade: websocket` and the accept value for the client's key
/// is no websocket: the client gets 502 and its connection stays HTTP, so what it sends
/// next never reaches the backend as raw bytes (past routing and the gate). RFC 6455 §4.1.
#[tokio::test]
async fn a_101_without_the_websocket_accept_value_is_refused() {
    for answer in [
        "HTTP/1.1 101 Switching Protocols\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n",
    ] {
        let answer = answer.replace("{ACCEPT}", ACCEPT);
        let (listener, backend) = scripted_h2::listener().await;
        let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
        let backend = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (_, mut after) = read_head(&mut socket).await;
            socket.write_all(answer.as_bytes()).await.unwrap();
            // Whatever arrives after the handshake, until pachgate lets go.
            let mut chunk = [0u8; 1024];
            while let Ok(Ok(n @ 1..)) =
                tokio::time::timeout(Duration::from_secs(1), socket.read(&mut chunk)).await
            {
                after.extend_from_slice(&chunk[..n]);
            }
            after
        });

        let mut client = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: pachgate.test\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.write_all(request.as_bytes()).await.unwrap();
        let (text, _) = read_head(&mut client).await;
        assert_eq!(
            Head::parse(&text).line,
            "HTTP/1.1 502 Bad Gateway",
            "{text}"
        );
        let _ = client
            .write_all(b"GET /pfs/secret HTTP/1.1\r\nHost: pachgate.test\r\n\r\n")
            .await;
        let after = backend.await.unwrap();
        assert!(
            !String::from_utf8_lossy(&after).contains("/pfs/secret"),
            "the client's next request reached the backend raw: {:?}",
            String::from_utf8_lossy(&after)
        );
    }
}

/// A CONNECT that is no websocket (a plain one, over HTTP/1.1 or h2, or an extended
/// CONNECT for another protocol) is answered 405 by pachgate and never reaches an
/// upstream: pachgate is no forward proxy.
#[tokio::test]
async fn a_connect_other_than_a_websocket_is_refused_unforwarded() {
    let (listener, backend) = scripted_h2::listener().await;
    let backend = upstream("backend", backend, UpstreamProtocol::Http1);
    let (_gateway, addr) = gateway_with(open_route("all", "/", "backend"), backend).await;

    let mut raw = TcpStream::connect(addr).await.unwrap();
    raw.write_all(b"CONNECT pachd.internal:1650 HTTP/1.1\r\nHost: pachd.internal:1650\r\n\r\n")
        .await
        .unwrap();
    let (text, _) = read_head(&mut raw).await;
    let refused = Head::parse(&text);
    assert_eq!(refused.line, "HTTP/1.1 405 Method Not Allowed");
    assert!(refused
        .field("allow")
        .is_some_and(|allow| allow.contains("GET")));

    let mut sender = h2c_sender(addr).await;
    let plain = Request::builder()
        .method(Method::CONNECT)
        .uri("pachd.internal:1650")
        .body(empty())
        .unwrap();
    let mut other = Request::builder()
        .method(Method::CONNECT)
        .uri("http://pachgate.test/udp")
        .body(empty())
        .unwrap();
    other
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("connect-udp"));
    for request in [plain, other] {
        let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    }
    let reached = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(reached.is_err(), "a CONNECT reached the upstream");
}

/// A tunnel whose client has ended its side while the backend, gone quiet without a reset
/// (a vanished pod), never ends its own: the tunnel is given up a few seconds later, and
/// the client's connection closed, instead of staying open for good.
#[tokio::test]
async fn a_half_closed_tunnel_whose_other_side_never_ends_is_given_up() {
    let (listener, backend) = scripted_h2::listener().await;
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let backend = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let (text, _) = read_head(&mut socket).await;
        let key = Head::parse(&text)
            .field("sec-websocket-key")
            .unwrap()
            .to_string();
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n\r\n"
        );
        socket.write_all(answer.as_bytes()).await.unwrap();
        // Silent from here on, and never closes: held past the test's end.
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(socket);
    });
    let (mut client, _) = http1_upgrade(addr, "/ws/chat").await;
    client.write_all(&script().hello).await.unwrap();
    client.shutdown().await.unwrap();
    let mut byte = [0u8; 1];
    let ended = tokio::time::timeout(Duration::from_secs(10), client.read(&mut byte)).await;
    assert!(
        matches!(ended, Ok(Ok(0) | Err(_))),
        "the half-closed tunnel was kept: {ended:?}"
    );
    backend.abort();
}

/// An HTTP/1.1 upgrade without a `Sec-WebSocket-Key` is the client's error: 400, checked
/// before any upstream connection is made (so also with the upstream down).
#[tokio::test]
async fn an_upgrade_without_a_key_is_a_400_before_any_connection() {
    let (listener, backend) = scripted_h2::listener().await;
    drop(listener);
    let (_gateway, addr) = gateway_to(backend, UpstreamProtocol::Http1).await;
    let request = Request::get("/ws/chat")
        .header("host", "pachgate.test")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-version", "13")
        .body(empty())
        .unwrap();
    assert_eq!(
        send_http1(addr, request).await.status,
        StatusCode::BAD_REQUEST
    );
}
