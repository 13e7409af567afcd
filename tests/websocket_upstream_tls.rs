//! Websocket upgrades honour the upstream's protocol: over TLS (its `ca`, `server_name`) to
//! an `http1-tls` upstream, never in cleartext to a TLS port; a certificate that does not
//! verify is a 502 that says so; h2 and h2c upstreams that do not enable RFC 8441 extended
//! CONNECT get a clear 502 (tests/websocket_h2_upstream.rs has one that does). The upstream
//! is Python's `websockets` server with TLS, behind a spy that reports whether each
//! connection began with a TLS ClientHello or with cleartext (tests/clients/ws_tls_upstream.py);
//! the client is tungstenite over rustls; bystanders are websocket sessions to the stand-in
//! console through the same pachgate.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use common::*;

const COOKIE: &str = "session=ws-upstream-secret-cookie";

/// A CA and a leaf for `backend.internal` in `dir/name/` (ca.crt, tls.crt, tls.key).
fn generate_cert(dir: &Path, name: &str) {
    let generated = Command::new(BIN)
        .args([
            "cert",
            "generate",
            "--out",
            name,
            "--host",
            "backend.internal",
        ])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{generated:?}");
}

/// The spy-fronted TLS websocket upstream, with `dir/backend/`'s certificate.
fn tls_ws_upstream(dir: &Path) -> Running {
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/clients/ws_tls_upstream.py"))
        .arg("--cert")
        .arg(dir.join("backend/tls.crt"))
        .arg("--key")
        .arg(dir.join("backend/tls.key"));
    start(command, 1)
}

/// The spy's and the server's reports so far, as JSON.
fn events(upstream: &Running) -> Vec<serde_json::Value> {
    upstream
        .stdout_lines_now()
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON event line"))
        .collect()
}

/// The upstream's events once it has reported at least one connection (pachgate has
/// reached it by then) and then nothing new for 300 ms: a check of what reached it is made
/// on its whole report, however long the report takes on a loaded machine, and never
/// passes on an empty one. Reading takes the lines, so every poll's are kept.
async fn events_once_connected(upstream: &Running) -> Vec<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    let mut quiet_since = tokio::time::Instant::now();
    loop {
        let new = events(upstream);
        if !new.is_empty() {
            seen.extend(new);
            quiet_since = tokio::time::Instant::now();
        }
        let connected = seen.iter().any(|e| e["event"] == "connection");
        if connected && quiet_since.elapsed() >= Duration::from_millis(300) {
            return seen;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream reported no connection, or did not fall quiet, within 10 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// pachgate with `/ws` to the TLS upstream (protocol and CA as given), `/ws-h2` to it as an
/// `h2` upstream, `/ws-h2c` to the stand-in pachd (h2c), and everything else to the
/// stand-in console, whose websocket echo is the bystanders' peer.
fn proxy(standins: &Running, upstream: &Running, ca: &Path) -> Proxy {
    let backend = upstream.address("ws-tls-upstream");
    let ca = ca.display();
    let tls = format!("ca = \"{ca}\"\nserver_name = \"backend.internal\"");
    TestConfig::new()
        .upstream_with("backend", backend, "http1-tls", &tls)
        .upstream_with("backend-h2", backend, "h2", &tls)
        .upstream("pachd", standins.address("standin-pachd"), "h2c")
        .upstream("console", standins.address("standin-console"), "http1")
        .route("ws-tls", "path_prefix = \"/ws\"", "backend")
        .route("ws-h2", "path_prefix = \"/ws-h2\"", "backend-h2")
        .route("ws-h2c", "path_prefix = \"/ws-h2c\"", "pachd")
        .route("console", "path_prefix = \"/\"", "console")
        .start()
}

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// The stand-ins, a TLS websocket upstream with its own CA, and pachgate trusting that CA.
struct Setup {
    _dir: tempfile::TempDir,
    _standins: Running,
    upstream: Running,
    proxy: Proxy,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        generate_cert(dir.path(), "backend");
        let standins = standins();
        let upstream = tls_ws_upstream(dir.path());
        let proxy = proxy(&standins, &upstream, &dir.path().join("backend/ca.crt"));
        Setup {
            _dir: dir,
            _standins: standins,
            upstream,
            proxy,
        }
    }
}

/// Only TLS reached the upstream, and no websocket handshake.
async fn assert_only_tls_reached(upstream: &Running) {
    let seen = events_once_connected(upstream).await;
    assert!(
        seen.iter()
            .all(|e| e["event"] == "connection" && e["first_bytes"] == "tls"),
        "only TLS reached the upstream, and no handshake: {seen:?}"
    );
}

/// A websocket to `path` through pachgate over TLS (HTTP/1.1), with a session cookie.
async fn connect(proxy: &Proxy, path: &str) -> Result<Ws, tungstenite::Error> {
    let tls = common::client_tls(&proxy.ca(), b"http/1.1");
    let tcp = TcpStream::connect(proxy.https()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("wss://{}{path}", proxy.target())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("cookie", COOKIE.parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
    Ok(ws)
}

async fn echo(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).await.unwrap();
    let back = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("an echo within 10 s")
        .expect("the session is open")
        .expect("a message");
    assert_eq!(back, Message::text(text));
}

/// The status and body pachgate answered a websocket request it did not switch.
fn refusal(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Err(tungstenite::Error::Http(response)) => (
            response.status().as_u16(),
            String::from_utf8_lossy(response.body().as_deref().unwrap_or_default()).into_owned(),
        ),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

#[tokio::test]
async fn websocket_to_an_http1_tls_upstream_goes_over_tls() {
    let setup = Setup::new();
    let (upstream, proxy) = (&setup.upstream, &setup.proxy);

    let session = connect(proxy, "/ws").await;
    let seen = events_once_connected(upstream).await;
    let connections: Vec<_> = seen.iter().filter(|e| e["event"] == "connection").collect();
    assert!(
        connections.iter().all(|e| e["first_bytes"] == "tls"),
        "the upstream's TLS port was sent cleartext: {connections:?}"
    );
    assert_eq!(connections.len(), 1, "{seen:?}");

    let mut ws = session.expect("the upgrade through pachgate succeeds");
    echo(&mut ws, "over TLS to the upstream").await;
    ws.send(Message::binary(vec![7u8; 200_000])).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![7u8; 200_000])
    );
    ws.close(None).await.unwrap();

    // The handshake, cookie included, reached the upstream inside TLS.
    let handshakes: Vec<_> = events(upstream)
        .into_iter()
        .chain(seen)
        .filter(|e| e["event"] == "handshake")
        .collect();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert_eq!(handshakes[0]["path"], "/ws");
    assert_eq!(handshakes[0]["cookie"], COOKIE);
}

#[tokio::test]
async fn a_tls_upstream_with_a_wrong_certificate_is_a_clear_502() {
    let dir = tempfile::tempdir().unwrap();
    generate_cert(dir.path(), "backend");
    generate_cert(dir.path(), "other");
    let standins = standins();
    let upstream = tls_ws_upstream(dir.path());
    // pachgate trusts a CA that did not sign the upstream's certificate.
    let proxy = proxy(&standins, &upstream, &dir.path().join("other/ca.crt"));

    let mut bystander = connect(&proxy, "/console/ws").await.unwrap();
    echo(&mut bystander, "before").await;

    let (status, body) = refusal(connect(&proxy, "/ws").await);
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("TLS verification failed"), "{body}");
    assert_only_tls_reached(&upstream).await;

    echo(&mut bystander, "after").await;
    let mut fresh = connect(&proxy, "/console/ws").await.unwrap();
    echo(&mut fresh, "a new bystander").await;
}

/// The stand-in pachd (h2c) does not enable extended CONNECT in its SETTINGS: pachgate
/// opens no stream there and answers 502 (tests/websocket_h2_upstream.rs covers one that
/// does, and checks that no stream is opened).
#[tokio::test]
async fn websocket_to_an_h2c_upstream_without_extended_connect_is_a_clear_502() {
    let setup = Setup::new();
    let proxy = &setup.proxy;
    let mut bystander = connect(proxy, "/console/ws").await.unwrap();

    let (status, body) = refusal(connect(proxy, "/ws-h2c").await);
    assert_eq!(status, 502, "{body}");
    assert_eq!(body, "websocket upgrade failed\n");

    echo(&mut bystander, "still here").await;
}

/// An `h2` upstream is reached over TLS as HTTP/2 (to read whether its SETTINGS enable
/// extended CONNECT); here the port speaks HTTP/1.1 websockets only, so the attempt fails
/// with a 502 and not a byte of cleartext, nor a handshake, reaches it.
#[tokio::test]
async fn websocket_to_an_h2_upstream_never_writes_cleartext_to_its_tls_port() {
    let setup = Setup::new();
    let (upstream, proxy) = (&setup.upstream, &setup.proxy);
    let mut bystander = connect(proxy, "/console/ws").await.unwrap();

    let (status, body) = refusal(connect(proxy, "/ws-h2").await);
    assert_eq!(status, 502, "{body}");
    assert_only_tls_reached(upstream).await;

    echo(&mut bystander, "still here").await;
}

/// An RFC 8441 websocket from an h2 client, which pachgate turns into an HTTP/1.1 upgrade:
/// toward an `http1-tls` upstream that upgrade goes over TLS as well.
#[tokio::test]
async fn extended_connect_from_an_h2_client_reaches_the_tls_upstream_over_tls() {
    use http_body_util::Empty;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let setup = Setup::new();
    let (upstream, proxy) = (&setup.upstream, &setup.proxy);

    let tls = common::client_tls(&proxy.ca(), b"h2");
    let tcp = TcpStream::connect(proxy.https()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(format!("https://{}/ws", proxy.target()))
        .header("sec-websocket-version", "13")
        .header("cookie", COOKIE)
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = sender.send_request(request).await.unwrap();

    let seen = events_once_connected(upstream).await;
    assert!(
        seen.iter()
            .filter(|e| e["event"] == "connection")
            .all(|e| e["first_bytes"] == "tls"),
        "the upstream's TLS port was sent cleartext: {seen:?}"
    );
    assert_eq!(response.status(), http::StatusCode::OK, "{response:?}");
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("over h2, then TLS")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("over h2, then TLS")
    );
    let handshakes: Vec<_> = events(upstream)
        .into_iter()
        .chain(seen)
        .filter(|e| e["event"] == "handshake")
        .collect();
    assert_eq!(handshakes.len(), 1, "{handshakes:?}");
    assert_eq!(handshakes[0]["cookie"], COOKIE);
}
