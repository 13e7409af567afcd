//! Health checks against real peers on loopback: the stand-in pachd's gRPC health service
//! (tonic), the stand-in console, pachd HTTP and dex (hyper), the same behind a TLS front
//! with a generated certificate, and scripted bad peers (refused, silent, garbage, hostile
//! HTTP/2 answers).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use pachgate_health::{spawn, CheckKind, CheckSpec, Checker, HealthState, Transport};
use pachgate_standins::{Health, PachdOptions, PachdState};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

type Changes = mpsc::UnboundedReceiver<(bool, String)>;

fn grpc() -> CheckKind {
    CheckKind::Grpc {
        service: String::new(),
    }
}

fn get(path: &str) -> CheckKind {
    CheckKind::HttpGet { path: path.into() }
}

fn spec(kind: CheckKind, interval_ms: u64, timeout_ms: u64) -> CheckSpec {
    CheckSpec {
        kind,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        unhealthy_threshold: 2,
        healthy_threshold: 3,
    }
}

/// Starts a checker whose changes arrive on the returned channel.
fn start(address: SocketAddr, transport: Transport, spec: CheckSpec) -> (Checker, Changes) {
    let (tx, rx) = mpsc::unbounded_channel();
    let checker = spawn(
        address,
        "localhost".into(),
        transport,
        spec,
        move |healthy, reason| {
            let _ = tx.send((healthy, reason.to_string()));
        },
    );
    (checker, rx)
}

async fn next_change(changes: &mut Changes) -> (bool, String) {
    tokio::time::timeout(Duration::from_secs(10), changes.recv())
        .await
        .expect("a health change within 10 s")
        .expect("the checker is running")
}

/// Waits until `state` has finished at least `n` checks.
async fn checks_done(state: &HealthState, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while state.checks() < n {
        assert!(Instant::now() < deadline, "{n} checks within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

async fn pachd(health: &Health) -> SocketAddr {
    let (listener, address) = bind().await;
    tokio::spawn(pachgate_standins::serve_pachd(
        listener,
        PachdOptions {
            health: health.clone(),
            ..PachdOptions::default()
        },
    ));
    address
}

async fn console(health: &Health) -> SocketAddr {
    let (listener, address) = bind().await;
    tokio::spawn(pachgate_standins::serve_console_with_health(
        listener,
        health.clone(),
    ));
    address
}

#[tokio::test]
async fn a_serving_pachd_is_unhealthy_until_its_first_check_passes_at_once() {
    let address = pachd(&Health::new()).await;
    // An hour between checks: only the first one, made at once, can turn it healthy.
    let (checker, mut changes) = start(address, Transport::Plain, spec(grpc(), 3_600_000, 1000));
    let state = checker.state();
    // The test runtime is single-threaded: the checker has not run yet.
    assert!(!state.is_healthy());
    assert_eq!(
        next_change(&mut changes).await,
        (true, "status SERVING".into())
    );
    assert!(state.is_healthy());
    assert_eq!((state.checks(), state.failures()), (1, 0));
    assert_eq!(state.last_failure(), None);
}

#[tokio::test]
async fn not_serving_turns_unhealthy_after_the_threshold_and_back_after_its_own() {
    let health = Health::new();
    let address = pachd(&health).await;
    let (checker, mut changes) = start(address, Transport::Plain, spec(grpc(), 200, 1000));
    let state = checker.state();
    assert_eq!(
        next_change(&mut changes).await,
        (true, "status SERVING".into())
    );

    health.set_serving(false);
    assert_eq!(
        next_change(&mut changes).await,
        (false, "status NOT_SERVING".into())
    );
    // Two failures in a row (unhealthy_threshold), none before.
    assert_eq!(state.failures(), 2);
    assert!(!state.is_healthy());
    assert_eq!(state.last_failure().as_deref(), Some("status NOT_SERVING"));

    // The next check is an interval away: flip now, count the successes it takes.
    health.set_serving(true);
    let passed_before = state.checks() - state.failures();
    assert_eq!(
        next_change(&mut changes).await,
        (true, "status SERVING".into())
    );
    assert_eq!(state.checks() - state.failures() - passed_before, 3);
    assert!(state.is_healthy());
}

#[tokio::test]
async fn the_service_name_reaches_the_server() {
    // The stand-in (tonic, prost) knows only the server as a whole: a named service is
    // NOT_FOUND there, so this fails only if the name was encoded and decoded.
    let address = pachd(&Health::new()).await;
    let kind = CheckKind::Grpc {
        service: "pfs_v2.API".into(),
    };
    let (checker, _changes) = start(address, Transport::Plain, spec(kind, 3_600_000, 1000));
    let state = checker.state();
    checks_done(&state, 1).await;
    assert_eq!(
        state.last_failure().as_deref(),
        Some("grpc-status 5 NOT_FOUND")
    );
}

#[tokio::test]
async fn a_pod_listed_but_never_ready_never_turns_healthy_and_is_reported_once() {
    let health = Health::new();
    health.set_serving(false);
    let address = pachd(&health).await;
    let (checker, mut changes) = start(address, Transport::Plain, spec(grpc(), 30, 1000));
    let state = checker.state();
    checks_done(&state, 5).await;
    assert!(!state.is_healthy());
    assert_eq!(state.failures(), state.checks());
    assert_eq!(state.last_failure().as_deref(), Some("status NOT_SERVING"));
    // Reported once, with the reason, though it never changed state: a check failing from
    // the start (a wrong path or service) is not left unnoticed.
    assert_eq!(
        changes.try_recv().ok(),
        Some((
            false,
            "no check passed since it was listed; status NOT_SERVING".to_string()
        ))
    );
    assert!(changes.try_recv().is_err(), "reported more than once");
}

#[tokio::test]
async fn a_refused_port_fails_both_kinds() {
    let (listener, address) = bind().await;
    drop(listener);
    for kind in [grpc(), get("/health")] {
        let (checker, _changes) = start(address, Transport::Plain, spec(kind, 30, 1000));
        let state = checker.state();
        checks_done(&state, 2).await;
        assert!(!state.is_healthy());
        assert_eq!(state.last_failure().as_deref(), Some("connect refused"));
    }
}

/// Accepts connections and holds them open without a byte; counts accepts.
async fn blackhole() -> (SocketAddr, Arc<AtomicU64>) {
    let (listener, address) = bind().await;
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (address, accepted)
}

#[tokio::test]
async fn a_peer_that_accepts_and_never_answers_times_out() {
    let (address, _) = blackhole().await;
    for kind in [grpc(), get("/health")] {
        let started = Instant::now();
        let (checker, _changes) = start(address, Transport::Plain, spec(kind, 3_600_000, 300));
        let state = checker.state();
        checks_done(&state, 1).await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(3),
            "{took:?}"
        );
        assert_eq!(
            state.last_failure().as_deref(),
            Some("timed out after 300ms")
        );
        assert!(!state.is_healthy());
    }
}

/// Answers every connection with `bytes` and then holds it open.
async fn garbage_peer(bytes: Vec<u8>) -> SocketAddr {
    let (listener, address) = bind().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut tcp, _)) = listener.accept().await {
            let _ = tcp.write_all(&bytes).await;
            held.push(tcp);
        }
    });
    address
}

#[tokio::test]
async fn garbage_fails_at_once_not_at_the_timeout() {
    // Bytes that read as a complete first frame or head, so a parser can reject them at
    // once (a peer that sends a frame head and then too few bytes is the timeout's case).
    let noise: Vec<u8> = (0u32..600).map(|i| (i * 7919 % 251) as u8 ^ 0xa5).collect();
    let peers: [Vec<u8>; 3] = [
        [&b"\x00\x01\x02\xff\xfe garbage \r\n\r\n"[..], &noise].concat(),
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
        // An h2 SETTINGS frame with a length that is not a multiple of 6.
        b"\x00\x00\x05\x04\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05".to_vec(),
    ];
    for bytes in peers {
        let address = garbage_peer(bytes.clone()).await;
        for kind in [grpc(), get("/health")] {
            let http = matches!(kind, CheckKind::HttpGet { .. });
            let (checker, _changes) = start(address, Transport::Plain, spec(kind, 3_600_000, 5000));
            let state = checker.state();
            checks_done(&state, 1).await;
            // An h1 peer's well-formed 200 to an h1 GET is a pass; everything else fails.
            if http && bytes.starts_with(b"HTTP/1.1 200") {
                assert!(state.is_healthy(), "{:?}", state.last_failure());
                continue;
            }
            let reason = state.last_failure().expect("a failure");
            assert!(!state.is_healthy());
            assert!(!reason.starts_with("timed out"), "{reason}");
        }
    }
}

/// What a scripted HTTP/2 peer answers a health check with.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A good head and trailers around this message body.
    Body(&'static [u8]),
    /// A good head, `n` bytes of body.
    Big(usize),
    /// A trailers-only answer with this grpc-status.
    TrailersOnly(&'static str),
    /// This HTTP status, no grpc-status.
    Http(u16),
    /// A body, no trailers at all.
    NoTrailers,
}

async fn h2_peer(answer: Answer) -> SocketAddr {
    let (listener, address) = bind().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut connection) = h2::server::handshake(tcp).await else {
                    return;
                };
                while let Some(Ok((_request, mut respond))) = connection.accept().await {
                    let grpc_head = || {
                        http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                    };
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    match answer {
                        Answer::Body(body) => {
                            let mut send = respond
                                .send_response(grpc_head().body(()).unwrap(), false)
                                .unwrap();
                            send.send_data(Bytes::from_static(body), false).unwrap();
                            send.send_trailers(trailers).unwrap();
                        }
                        Answer::Big(n) => {
                            let mut send = respond
                                .send_response(grpc_head().body(()).unwrap(), false)
                                .unwrap();
                            let _ = send.send_data(Bytes::from(vec![0u8; n]), false);
                            let _ = send.send_trailers(trailers);
                        }
                        Answer::TrailersOnly(code) => {
                            let head = grpc_head().header("grpc-status", code).body(()).unwrap();
                            respond.send_response(head, true).unwrap();
                        }
                        Answer::Http(status) => {
                            let head = http::Response::builder().status(status).body(()).unwrap();
                            respond.send_response(head, true).unwrap();
                        }
                        Answer::NoTrailers => {
                            let mut send = respond
                                .send_response(grpc_head().body(()).unwrap(), false)
                                .unwrap();
                            send.send_data(Bytes::from_static(&[0, 0, 0, 0, 2, 8, 1]), true)
                                .unwrap();
                        }
                    }
                }
            });
        }
    });
    address
}

#[tokio::test]
async fn hostile_grpc_answers_fail_with_their_reason() {
    let cases: &[(Answer, &str)] = &[
        // The control: a well-formed SERVING answer from the scripted peer passes.
        (Answer::Body(&[0, 0, 0, 0, 2, 0x08, 1]), ""),
        (
            Answer::Body(&[0, 0, 0, 0, 2, 0x08, 2]),
            "status NOT_SERVING",
        ),
        (Answer::Body(&[0, 0, 0, 0, 0]), "status UNKNOWN"),
        (
            Answer::Body(&[0, 0, 0, 0, 2, 0x08, 3]),
            "status SERVICE_UNKNOWN",
        ),
        (Answer::Body(&[]), "no response message"),
        (
            Answer::Body(&[0, 0xff, 0xff, 0xff, 0xff, 0x08, 1]),
            "truncated gRPC frame",
        ),
        (
            Answer::Body(&[1, 0, 0, 0, 2, 0x08, 1]),
            "compressed or malformed gRPC frame",
        ),
        (
            Answer::Body(&[0, 0, 0, 0, 2, 0x08, 0x80]),
            "truncated varint",
        ),
        (
            Answer::Body(&[0, 0, 0, 0, 2, 0x0f, 1]),
            "bad protobuf wire type 7",
        ),
        (Answer::Big(100_000), "answer over 65536 bytes"),
        (Answer::TrailersOnly("14"), "grpc-status 14 UNAVAILABLE"),
        (Answer::TrailersOnly("99"), "grpc-status 99"),
        (Answer::TrailersOnly("zero"), "malformed grpc-status"),
        (Answer::Http(503), "HTTP 503"),
        (Answer::NoTrailers, "no grpc-status"),
    ];
    for &(answer, expected) in cases {
        let address = h2_peer(answer).await;
        let (checker, _changes) = start(address, Transport::Plain, spec(grpc(), 3_600_000, 5000));
        let state = checker.state();
        checks_done(&state, 1).await;
        if expected.is_empty() {
            assert!(state.is_healthy(), "{answer:?}: {:?}", state.last_failure());
        } else {
            assert!(!state.is_healthy(), "{answer:?}");
            assert_eq!(
                state.last_failure().as_deref(),
                Some(expected),
                "{answer:?}"
            );
        }
    }
}

#[tokio::test]
async fn http_checks_pass_on_2xx_and_fail_on_503() {
    let switch = Health::new();
    let address = console(&switch).await;
    let mut one_failure = spec(get("/health"), 100, 1000);
    one_failure.unhealthy_threshold = 1;
    let (checker, mut changes) = start(address, Transport::Plain, one_failure);
    assert_eq!(next_change(&mut changes).await, (true, "HTTP 200".into()));
    switch.set_serving(false);
    assert_eq!(next_change(&mut changes).await, (false, "HTTP 503".into()));
    assert_eq!(checker.state().failures(), 1);

    // pachd HTTP's /healthz and dex's discovery document, as the preset checks them.
    let pachd_switch = Health::new();
    let dex_switch = Health::new();
    let state = Arc::new(PachdState::new(PachdOptions {
        health: pachd_switch.clone(),
        dex_health: dex_switch.clone(),
        ..PachdOptions::default()
    }));
    let (http_listener, http) = bind().await;
    let (dex_listener, dex) = bind().await;
    tokio::spawn(pachgate_standins::serve_pachd_http(
        http_listener,
        state.clone(),
    ));
    tokio::spawn(pachgate_standins::serve_dex(dex_listener, state));
    for (address, path, switch) in [
        (http, "/healthz", &pachd_switch),
        (dex, "/dex/.well-known/openid-configuration", &dex_switch),
    ] {
        let (_checker, mut changes) = start(address, Transport::Plain, spec(get(path), 50, 1000));
        assert_eq!(next_change(&mut changes).await, (true, "HTTP 200".into()));
        switch.set_serving(false);
        assert_eq!(next_change(&mut changes).await, (false, "HTTP 503".into()));
    }
}

struct TlsFront {
    address: SocketAddr,
    /// Trusts the front's CA.
    trusting: tokio_rustls::TlsConnector,
    _dir: tempfile::TempDir,
}

/// A TLS front on a generated certificate for `localhost` (pachgate's own generator) that
/// relays each connection to `backend`, offering `alpn`.
async fn tls_front(backend: SocketAddr, alpn: &[u8]) -> TlsFront {
    let dir = tempfile::tempdir().unwrap();
    let paths = pachgate_tls::generate_into(dir.path(), &["localhost".to_string()]).unwrap();
    let pair = pachgate_tls::load_cert_and_key(&paths.cert, &paths.key).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(pair.chain, pair.key)
        .unwrap();
    server.alpn_protocols = vec![alpn.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let (listener, address) = bind().await;
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut upstream) = TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
            });
        }
    });
    let ca = pachgate_tls::load_ca_certificates(&paths.ca_cert).unwrap();
    let client = pachgate_tls::upstream_client_config(ca, None, &[alpn]).unwrap();
    TlsFront {
        address,
        trusting: tokio_rustls::TlsConnector::from(client),
        _dir: dir,
    }
}

fn tls(connector: &tokio_rustls::TlsConnector) -> Transport {
    Transport::Tls {
        connector: connector.clone(),
        server_name: rustls::pki_types::ServerName::try_from("localhost").unwrap(),
    }
}

#[tokio::test]
async fn checks_over_tls_with_a_generated_certificate() {
    let grpc_front = tls_front(pachd(&Health::new()).await, b"h2").await;
    let http_front = tls_front(console(&Health::new()).await, b"http/1.1").await;
    let cases = [
        (&grpc_front, grpc(), "status SERVING"),
        (&http_front, get("/health"), "HTTP 200"),
    ];
    for (front, kind, reason) in cases {
        let transport = tls(&front.trusting);
        let (_checker, mut changes) = start(front.address, transport, spec(kind, 3_600_000, 2000));
        assert_eq!(next_change(&mut changes).await, (true, reason.into()));
    }

    // A peer whose certificate the connector does not trust fails in the handshake.
    let stranger = tls_front(console(&Health::new()).await, b"http/1.1").await;
    let transport = tls(&stranger.trusting);
    let (checker, _changes) = start(
        http_front.address,
        transport,
        spec(get("/health"), 3_600_000, 2000),
    );
    let state = checker.state();
    checks_done(&state, 1).await;
    assert!(!state.is_healthy());
    let reason = state.last_failure().unwrap();
    assert!(reason.starts_with("TLS handshake failed: "), "{reason}");

    // A gRPC check on a TLS peer that picks http/1.1 fails before sending anything.
    let transport = tls(&http_front.trusting);
    let (checker, _changes) = start(http_front.address, transport, spec(grpc(), 3_600_000, 2000));
    let state = checker.state();
    checks_done(&state, 1).await;
    assert_eq!(
        state.last_failure().as_deref(),
        Some("TLS peer did not choose h2")
    );
}

#[tokio::test]
async fn dropping_the_checker_stops_its_connections() {
    let (address, accepted) = blackhole().await;
    // Checks every 20 ms, each held by the peer until the 50 ms timeout.
    let (checker, _changes) = start(address, Transport::Plain, spec(grpc(), 20, 50));
    let state = checker.state();
    checks_done(&state, 3).await;
    drop(checker);
    // A connect already in the kernel's backlog may still be accepted: let it land.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_drop = accepted.load(Ordering::SeqCst);
    let checks_after_drop = state.checks();
    assert!(after_drop >= 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(accepted.load(Ordering::SeqCst), after_drop);
    assert_eq!(state.checks(), checks_after_drop);
}
