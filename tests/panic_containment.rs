//! A panic costs one connection (HTTP/1.1) or one stream (HTTP/2), never the process: an
//! in-process gateway on a loopback listener, with pachgate's own panic hook installed, is
//! made to panic inside one request's service while bystander clients keep using it.
//!
//! The panic is provoked without any switch in the gateway: the test's `tracing` subscriber
//! panics when the gateway logs an event about the request path `/panic-probe` (it logs "no
//! route" for it), so the panic happens inside the request's own future, where any bug in
//! the request path would. The hook then counts it and logs it once; both are asserted.
//!
//! Everything runs in this test binary's one process, so the test is alone in its file: the
//! panic hook and the count are process-wide.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use pachgate_proxy_core::{
    ClientPolicy, Gateway, RouteAuth, RouteSpec, RouteTimeouts, ServerLimits, Snapshot,
    UpstreamProtocol, UpstreamSpec,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const PROBE_PATH: &str = "/panic-probe";
const SECRET: &str = "Bearer probe-secret-token-1234";

/// Panics on any event that carries a field whose value is exactly [`PROBE_PATH`]; records
/// the panic hook's own events (target `pachgate::panic`) as text.
struct Probe {
    panic_lines: Arc<Mutex<Vec<String>>>,
}

#[derive(Default)]
struct Fields {
    text: String,
    probe: bool,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.probe |= value == PROBE_PATH;
        self.text.push_str(&format!(" {}={value:?}", field.name()));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}");
        self.probe |= value == PROBE_PATH || value == format!("{PROBE_PATH:?}");
        self.text.push_str(&format!(" {}={value}", field.name()));
    }
}

impl<S: tracing::Subscriber> Layer<S> for Probe {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if event.metadata().target() == "pachgate::panic" {
            self.panic_lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(format!("{}{}", event.metadata().level(), fields.text));
            return;
        }
        // Once per request: the request's own cleanup (its access record) logs the path
        // again while the panic unwinds, and a second panic there would abort.
        if fields.probe && !std::thread::panicking() {
            panic!("probe: a bug in the request path");
        }
    }
}

/// The gateway in front of the stand-in console (HTTP/1.1), routing `/headers` to it; every
/// other path has no route.
async fn start_gateway() -> (Arc<Gateway>, std::net::SocketAddr) {
    let console = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let console_addr = console.local_addr().unwrap();
    tokio::spawn(pachgate_standins::serve_console(console));
    let snapshot = Snapshot::build(
        vec![RouteSpec {
            name: "console".into(),
            matcher: pachgate_routing::MatchSpec {
                path_prefix: Some("/headers".into()),
                ..Default::default()
            },
            upstream: "console".into(),
            auth: RouteAuth::None,
            allow: Default::default(),
            forward_as_sent: false,
            timeouts: RouteTimeouts::default(),
        }],
        vec![UpstreamSpec {
            name: "console".into(),
            endpoints: vec![console_addr.to_string()],
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(5),
            response_timeout: None,
            h2_keepalive_interval: None,
            h2_keepalive_timeout: Duration::from_secs(20),
            h2_max_response_headers: pachgate_proxy_core::upstream::DEFAULT_MAX_RESPONSE_HEADERS,
            h2_max_response_header_bytes:
                pachgate_proxy_core::upstream::DEFAULT_MAX_RESPONSE_HEADER_BYTES,
            tls: None,
            ..UpstreamSpec::new("console", Vec::new(), UpstreamProtocol::Http1)
        }],
        None,
        None,
        ClientPolicy::default(),
    )
    .expect("a valid snapshot");
    let gateway = Gateway::new(snapshot, ServerLimits::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gateway.clone().serve_plain(listener));
    (gateway, addr)
}

/// One HTTP/1.1 request on an open connection; the response head and body as text, or
/// `None` when the connection closed without an answer.
async fn http1_exchange(tcp: &mut TcpStream, path: &str) -> Option<String> {
    let request =
        format!("GET {path} HTTP/1.1\r\nhost: pachgate.test\r\nauthorization: {SECRET}\r\n\r\n");
    if tcp.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buffer))
            .await
            .expect("the gateway answers or closes within 10 s");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buffer[..n]),
        }
        let text = String::from_utf8_lossy(&seen);
        // The stand-in's /headers answer is JSON with a Content-Length: done at its end.
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|length| body.len() >= length) {
                break;
            }
        }
    }
    (!seen.is_empty()).then(|| String::from_utf8_lossy(&seen).into_owned())
}

fn panics_total(gateway: &Gateway) -> String {
    gateway
        .metrics()
        .encode()
        .lines()
        .find(|l| l.starts_with("pachgate_panics_total"))
        .expect("/metrics has pachgate_panics_total")
        .to_string()
}

#[tokio::test]
async fn a_panic_in_one_request_costs_only_its_connection_or_stream() {
    let panic_lines = Arc::new(Mutex::new(Vec::new()));
    let subscriber = tracing_subscriber::registry().with(Probe {
        panic_lines: panic_lines.clone(),
    });
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");
    pachgate_observe::metrics::install_panic_hook();

    let (gateway, addr) = start_gateway().await;
    assert_eq!(panics_total(&gateway), "pachgate_panics_total 0");

    // HTTP/1.1: a bystander connection open before and after the panic.
    let mut bystander = TcpStream::connect(addr).await.unwrap();
    let answer = http1_exchange(&mut bystander, "/headers").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let mut attacker = TcpStream::connect(addr).await.unwrap();
    let answer = http1_exchange(&mut attacker, PROBE_PATH).await;
    assert_eq!(
        answer, None,
        "the panicking request's connection closes without an answer"
    );
    assert_eq!(panics_total(&gateway), "pachgate_panics_total 1");

    // The same bystander connection, and a new one, still work.
    let answer = http1_exchange(&mut bystander, "/headers").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    let answer = http1_exchange(&mut fresh, "/headers").await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    // HTTP/2 (h2c): the panic costs its stream; the connection's other streams go on.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2c handshake");
    tokio::spawn(connection);
    let request = |path: &str| {
        Request::get(format!("http://pachgate.test{path}"))
            .header("authorization", SECRET)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let probe = sender.send_request(request(PROBE_PATH)).await;
    assert!(
        probe.is_err(),
        "the panicking stream is reset, not answered: {probe:?}"
    );
    for _ in 0..3 {
        let response = sender
            .send_request(request("/headers"))
            .await
            .expect("the same h2 connection still serves");
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert!(!body.is_empty());
    }
    assert_eq!(panics_total(&gateway), "pachgate_panics_total 2");

    // One log line per panic: where and what, never the request's headers.
    let lines = panic_lines.lock().unwrap().clone();
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert!(line.starts_with("ERROR"), "{line}");
        assert!(
            line.contains("location=tests/panic_containment.rs:"),
            "{line}"
        );
        assert!(
            line.contains("panic=\"probe: a bug in the request path\""),
            "{line}"
        );
        assert!(!line.contains("probe-secret-token"), "{line}");
    }
}

/// The shipped build must unwind for any of the above to hold: with `panic = "abort"` the
/// first panic ends every connection of the process.
#[test]
fn the_release_build_unwinds() {
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"))
        .expect("the workspace manifest");
    let manifest: toml::Table = manifest.parse().expect("valid TOML");
    let panic = manifest
        .get("profile")
        .and_then(|p| p.get("release"))
        .and_then(|r| r.get("panic"))
        .and_then(|p| p.as_str())
        .unwrap_or("unwind");
    assert_eq!(
        panic, "unwind",
        "[profile.release] panic must be \"unwind\""
    );
}
