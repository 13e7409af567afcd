//! A route's `timeout` and `idle_timeout` through pachgate, against the stand-ins: curl for
//! HTTP (HTTP/1.1 and HTTP/2), grpcio for gRPC (tests/clients/grpc_outcome.py reports, the
//! verdict is here), and tokio-tungstenite over rustls for a websocket tunnel.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use tokio_tungstenite::tungstenite::Message;

use common::*;

/// The stand-ins behind pachgate, with `grpc_keys` / `http_keys` added to the gRPC and the
/// catch-all console route.
fn proxy_with(standins: &Running, grpc_keys: &str, http_keys: &str) -> Proxy {
    TestConfig::new()
        .upstream("pachd", standins.address("standin-pachd"), "h2c")
        .upstream("console", standins.address("standin-console"), "http1")
        .route_with("pachd-grpc", "grpc = true", "pachd", grpc_keys)
        .route_with("console", "path_prefix = \"/\"", "console", http_keys)
        .start()
}

struct CurlOutcome {
    /// curl's exit code: 0, or why the transfer failed (18 / 92: cut short).
    exit: i32,
    status: String,
    body: String,
    took: Duration,
}

fn curl(proxy: &Proxy, path: &str, version: &str) -> CurlOutcome {
    let started = Instant::now();
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", version, "--cacert"])
        .arg(proxy.ca())
        .args(["-w", "\n%{http_code}"])
        .arg(format!("https://{}{path}", proxy.target()))
        .output()
        .expect("curl must be installed");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    CurlOutcome {
        exit: output.status.code().unwrap_or(-1),
        status: status.trim().to_string(),
        body: body.to_string(),
        took: started.elapsed(),
    }
}

/// One gRPC call through pachgate (grpcio); what came of it.
fn grpc_outcome(proxy: &Proxy, args: &[&str]) -> serde_json::Value {
    let (target, ca) = (proxy.target(), proxy.ca());
    let mut all = vec!["--target", target.as_str(), "--ca", ca.to_str().unwrap()];
    all.extend(args);
    let output = python("grpc_outcome.py", &all);
    serde_json::from_slice(&output.stdout).expect("grpc_outcome.py prints JSON")
}

#[test]
fn route_timeout_answers_504_and_deadline_exceeded_and_cuts_late_bodies() {
    let standins = standins();
    let proxy = proxy_with(&standins, "timeout = \"1s\"", "timeout = \"1s\"");

    for version in ["--http1.1", "--http2"] {
        // No head within the route's timeout: 504, about when the timeout ran out.
        let slow = curl(&proxy, "/slow?head_ms=4000", version);
        assert_eq!(slow.exit, 0, "{version}");
        assert_eq!(slow.status, "504", "{version}: {}", slow.body);
        assert!(
            slow.body.contains("upstream request timeout"),
            "{}",
            slow.body
        );
        assert!(
            slow.took >= Duration::from_millis(900) && slow.took < Duration::from_secs(3),
            "{version}: answered after {:?}",
            slow.took
        );
        // The head came in time, the body's end did not: the response is cut, not finished.
        let late = curl(&proxy, "/slow?head_ms=0&body_ms=4000", version);
        assert_eq!(late.status, "200", "{version}");
        assert!(late.body.starts_with("first"), "{version}: {:?}", late.body);
        assert!(!late.body.contains("last"), "{version}: {:?}", late.body);
        assert!(
            matches!(late.exit, 18 | 56 | 92),
            "{version}: curl exit {} (want a transfer cut short)",
            late.exit
        );
        assert!(
            late.took < Duration::from_secs(3),
            "{version}: {:?}",
            late.took
        );
        // Well within the limit: untouched.
        let quick = curl(&proxy, "/slow?head_ms=100&body_ms=100", version);
        assert_eq!((quick.exit, quick.status.as_str()), (0, "200"));
        assert_eq!(quick.body, "first\nlast\n");
    }

    // gRPC: a unary answer later than the timeout is DEADLINE_EXCEEDED from pachgate, long
    // before the client's own 60 s deadline.
    let unary = grpc_outcome(&proxy, &["unary", "--interval-ms", "4000"]);
    assert_eq!(unary["code"], "DEADLINE_EXCEEDED", "{unary}");
    assert!(
        unary["details"].as_str().unwrap().contains("pachgate"),
        "{unary}"
    );
    assert!(unary["seconds"].as_f64().unwrap() < 3.0, "{unary}");
    // A server stream that has started answering ends with DEADLINE_EXCEEDED trailers,
    // and its upstream stream is reset (the stand-in counts a client that went away).
    let cancelled = || {
        grpc_outcome(&proxy, &["stats"])["cancelled"]
            .as_u64()
            .unwrap()
    };
    let cancelled_before = cancelled();
    let stream = grpc_outcome(&proxy, &["server", "--count", "20", "--interval-ms", "300"]);
    assert_eq!(stream["code"], "DEADLINE_EXCEEDED", "{stream}");
    assert!(
        stream["details"]
            .as_str()
            .unwrap()
            .contains("route timeout"),
        "{stream}"
    );
    let replies = stream["replies"].as_u64().unwrap();
    assert!((1..20).contains(&replies), "{stream}");
    // The stand-in notices at its next send, up to 300 ms later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while cancelled() == cancelled_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        cancelled(),
        cancelled_before + 1,
        "the upstream stream was not dropped"
    );
    // And a quick call still passes.
    let quick = grpc_outcome(&proxy, &["unary"]);
    assert_eq!(quick["code"], "OK", "{quick}");
}

#[test]
fn idle_timeout_ends_quiet_http_exchanges_and_grpc_without_it_stays_open() {
    let standins = standins();
    // The console route has an idle limit; the gRPC route has none.
    let proxy = proxy_with(&standins, "", "idle_timeout = \"1s\"");

    for version in ["--http1.1", "--http2"] {
        // 3 s without a byte after `first`: cut after about 1 s.
        let quiet = curl(&proxy, "/slow?body_ms=3000", version);
        assert_eq!(quiet.status, "200", "{version}");
        assert_eq!(quiet.body, "first\n", "{version}");
        assert!(
            matches!(quiet.exit, 18 | 56 | 92),
            "{version}: curl exit {}",
            quiet.exit
        );
        assert!(
            quiet.took >= Duration::from_millis(900) && quiet.took < Duration::from_millis(2500),
            "{version}: cut after {:?}",
            quiet.took
        );
        // No head for 3 s is idle too: 504.
        let no_head = curl(&proxy, "/slow?head_ms=3000", version);
        assert_eq!(no_head.status, "504", "{version}");
        // Gaps shorter than the limit, over a longer whole: untouched.
        let busy = curl(&proxy, "/slow?head_ms=600&body_ms=600", version);
        assert_eq!((busy.exit, busy.body.as_str()), (0, "first\nlast\n"));
    }

    // A gRPC server stream quiet for 2.5 s between its two messages, past the console
    // route's 1 s idle limit, runs to its end on the route without one.
    let stream = grpc_outcome(&proxy, &["server", "--count", "2", "--interval-ms", "2500"]);
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(stream["replies"], 2, "{stream}");
    assert!(stream["seconds"].as_f64().unwrap() >= 4.5, "{stream}");
}

#[tokio::test]
async fn websocket_tunnel_with_idle_timeout_is_closed_when_quiet() {
    let standins = standins();
    let proxy = proxy_with(&standins, "", "idle_timeout = \"1s\"");

    let tls = common::client_tls(&proxy.ca(), b"http/1.1");
    let connector = tokio_rustls::TlsConnector::from(tls);
    let tcp = tokio::net::TcpStream::connect(proxy.https()).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://{}/ws", proxy.target());
    let (mut ws, response) = tokio_tungstenite::client_async(url.as_str(), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    // Messages every 400 ms for 2.4 s: never idle for 1 s, so the tunnel stays.
    for i in 0..6 {
        let text = format!("busy {i}");
        ws.send(Message::text(text.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(text));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Then quiet both ways: pachgate closes the tunnel about 1 s after the last byte.
    let quiet_since = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the quiet tunnel was not closed within 10 s");
    let after = quiet_since.elapsed();
    assert!(
        !matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))),
        "{ended:?}"
    );
    assert!(
        after >= Duration::from_millis(500) && after < Duration::from_millis(2500),
        "closed {after:?} after the last message"
    );
}
