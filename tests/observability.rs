//! What operators read: /metrics scraped after known traffic and parsed with prometheus-client's
//! OpenMetrics parser must count exactly that traffic, and the access log on stdout must have
//! one JSON line per gRPC call, HTTP request and websocket tunnel, with the fields an
//! operator greps for and without any token or query string.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const SECRET_TOKEN: &str = "SECRET-TOKEN-e3b0c442";
const SECRET_QUERY: &str = "SECRET-QUERY-98fc1c14";

fn sample(samples: &Value, key: &str) -> f64 {
    samples
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#}"))
}

#[test]
fn metrics_and_access_log_match_the_traffic_sent() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "admin = \"127.0.0.1:0\"");
    let admin = proxy.running.address("admin");

    for i in 0..3 {
        let output = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", "--cacert"])
            .arg(proxy.ca())
            .args(["-H", &format!("authorization: Bearer {SECRET_TOKEN}")])
            .args(["-H", &format!("x-request-id: observe-http-{i}")])
            .arg(format!(
                "https://{}/headers?code={SECRET_QUERY}",
                proxy.target()
            ))
            .output()
            .unwrap();
        assert!(output.status.success(), "curl failed: {output:?}");
    }
    // Plaintext to the TLS port: one handshake failure, reason not_tls.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "5"])
        .arg(format!("http://{}/", proxy.https()))
        .output()
        .unwrap();
    assert!(!output.status.success());

    let output = python(
        "observe.py",
        &[
            "traffic",
            "--target",
            &proxy.target(),
            "--ca",
            proxy.ca().to_str().unwrap(),
            "--grpc-ok",
            "5",
            "--grpc-not-found",
            "2",
            "--ws-url",
            &format!("wss://{}/ws", proxy.target()),
            "--secret",
            SECRET_TOKEN,
        ],
    );
    assert_traffic(&output, 5, 2);

    // The access log: every line JSON; the websocket's line comes when its tunnel closes.
    let lines = proxy
        .running
        .stdout_until("observe-ws", Duration::from_secs(10));
    let records: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    let by_id = |id: &str| -> Vec<&Value> {
        records
            .iter()
            .filter(|r| r["request_id"].as_str() == Some(id))
            .collect()
    };

    let http = by_id("observe-http-1");
    assert_eq!(http.len(), 1, "{records:#?}");
    let http = http[0];
    assert!(http["timestamp"].is_string(), "{http}");
    assert_eq!(http["method"], "GET");
    assert_eq!(http["path"], "/headers", "the query must not be logged");
    assert_eq!(http["kind"], "http");
    assert_eq!(http["protocol"], "HTTP/2");
    assert_eq!(http["upstream_protocol"], "http1");
    assert_eq!(http["status"], 200);
    assert_eq!(http["route"], "console");
    assert_eq!(
        http["upstream"],
        standins.address("standin-console").to_string()
    );
    assert_eq!(http["authority"], proxy.target());
    assert!(http["user_agent"].as_str().unwrap().starts_with("curl/"));
    assert!(http["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(http["bytes_sent"].as_u64().unwrap() > 0);
    assert!(http["duration_ms"].is_f64(), "{http}");

    let grpc = by_id("observe-grpc");
    assert_eq!(grpc.len(), 5, "{records:#?}");
    for line in &grpc {
        assert_eq!(line["kind"], "grpc");
        assert_eq!(line["path"], "/pachgate.standin.Echo/Unary");
        assert_eq!(line["grpc_status"], 0);
        assert_eq!(line["upstream_protocol"], "h2c");
        assert_eq!(line["route"], "pachd-grpc");
        assert!(line["bytes_received"].as_u64().unwrap() >= 100);
        assert!(line["user_agent"].as_str().unwrap().contains("grpc-python"));
    }
    let not_found: Vec<&Value> = records.iter().filter(|r| r["grpc_status"] == 5).collect();
    assert_eq!(not_found.len(), 2, "{records:#?}");
    assert_eq!(not_found[0]["grpc_message"], "no such repo");
    assert_eq!(
        not_found[0]["request_id"].as_str().unwrap().len(),
        32,
        "a generated request id"
    );

    let websocket = by_id("observe-ws");
    assert_eq!(websocket.len(), 1, "{records:#?}");
    let websocket = websocket[0];
    assert_eq!(websocket["kind"], "websocket");
    assert_eq!(websocket["status"], 101);
    assert_eq!(websocket["path"], "/ws");
    assert!(websocket["bytes_received"].as_u64().unwrap() >= 1000);
    assert!(websocket["bytes_sent"].as_u64().unwrap() >= 1000);

    // /metrics, through a real Prometheus parser.
    let samples = scrape_metrics(admin);
    let requests = |labels: &str| sample(&samples, &format!("pachgate_requests_total{{{labels}}}"));
    assert_eq!(
        requests("grpc_status=0,protocol=grpc,route=pachd-grpc,status=200"),
        5.0
    );
    assert_eq!(
        requests("grpc_status=5,protocol=grpc,route=pachd-grpc,status=200"),
        2.0
    );
    assert_eq!(
        requests("grpc_status=,protocol=http,route=console,status=200"),
        3.0
    );
    assert_eq!(
        requests("grpc_status=,protocol=websocket,route=console,status=101"),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            "pachgate_request_duration_seconds_count{route=pachd-grpc}"
        ),
        7.0
    );
    assert_eq!(
        sample(
            &samples,
            "pachgate_request_duration_seconds_bucket{le=+Inf,route=console}"
        ),
        4.0
    );
    assert!(sample(&samples, "pachgate_received_bytes_total{route=pachd-grpc}") >= 500.0);
    assert!(sample(&samples, "pachgate_sent_bytes_total{route=console}") >= 1000.0);
    assert_eq!(
        sample(
            &samples,
            "pachgate_tls_handshake_failures_total{reason=not_tls}"
        ),
        1.0
    );
    assert_eq!(sample(&samples, "pachgate_active_streams{}"), 0.0);
    assert_eq!(sample(&samples, "pachgate_active_websocket_tunnels{}"), 0.0);
    assert_eq!(
        sample(&samples, "pachgate_config_reloads_total{result=ok}"),
        0.0
    );
    let expiry = samples
        .as_object()
        .unwrap()
        .iter()
        .find(|(k, _)| k.starts_with("pachgate_certificate_expiry_timestamp_seconds{"))
        .map(|(_, v)| v.as_f64().unwrap())
        .expect("a certificate expiry sample");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not in the future");

    // The status page names the routes, upstreams and the certificate.
    let page = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/")])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&page.stdout);
    for needle in [
        "pachd-grpc",
        "console",
        "h2c",
        "localhost",
        "UTC",
        "requests served",
    ] {
        assert!(page.contains(needle), "status page lacks {needle}: {page}");
    }

    // No token and no query value anywhere in what pachgate wrote.
    let stderr = proxy.running.stderr_so_far();
    for secret in [SECRET_TOKEN, SECRET_QUERY] {
        assert!(
            !lines.iter().any(|l| l.contains(secret)) && !stderr.contains(secret),
            "{secret} was logged"
        );
    }
}

#[test]
fn with_the_access_log_off_metrics_still_count_and_nothing_is_logged() {
    let standins = standins();
    let proxy = pachgate(
        &format!(
            "[log]\naccess = \"off\"\n\n{}",
            standin_routes(&standins, "")
        ),
        "admin = \"127.0.0.1:0\"",
    );
    let admin = proxy.running.address("admin");
    let output = python(
        "observe.py",
        &[
            "traffic",
            "--target",
            &proxy.target(),
            "--ca",
            proxy.ca().to_str().unwrap(),
            "--grpc-ok",
            "4",
            "--ws-url",
            &format!("wss://{}/ws", proxy.target()),
        ],
    );
    assert_traffic(&output, 4, 0);
    let samples = scrape_metrics(admin);
    assert_eq!(
        sample(
            &samples,
            "pachgate_requests_total{grpc_status=0,protocol=grpc,route=pachd-grpc,status=200}"
        ),
        4.0
    );
    // Request bodies are counted straight into the route's counter when nothing logs them.
    assert!(sample(&samples, "pachgate_received_bytes_total{route=pachd-grpc}") >= 400.0);
    assert!(sample(&samples, "pachgate_received_bytes_total{route=console}") >= 1000.0);
    assert!(
        proxy.running.stdout_lines_now().is_empty(),
        "access lines were written with the log off"
    );
}

/// observe.py's traffic went as meant: `ok` calls answered OK, `not_found` calls failed
/// NOT_FOUND (the stand-in's own error, passed through), the websocket echoed its message.
fn assert_traffic(output: &std::process::Output, ok: usize, not_found: usize) {
    let observed: Value =
        serde_json::from_slice(&output.stdout).expect("observe.py traffic prints JSON");
    assert_eq!(
        observed,
        serde_json::json!({
            "grpc_ok": vec!["OK"; ok],
            "grpc_not_found": vec!["NOT_FOUND"; not_found],
            "ws_echo": "y".repeat(1000),
        })
    );
}
