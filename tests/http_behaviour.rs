//! HTTP-side behaviour through pachgate with curl and raw TLS sockets: upstream failures
//! and missing routes answered in the caller's protocol, header hygiene, the plaintext
//! redirect, and malformed framing refused.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// Runs curl; returns (status code, body).
fn curl(proxy: &Proxy, url: &str, extra: &[&str]) -> (u16, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "20", "--cacert"])
        .arg(proxy.ca())
        .args(extra)
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl must be installed");
    assert!(
        output.status.success(),
        "curl {url} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

fn down_upstreams() -> String {
    // Ports that were free a moment ago: nothing listens there.
    pachgate_standins::routes_toml(
        &format!("127.0.0.1:{}", free_port()),
        &format!("127.0.0.1:{}", free_port()),
        "connect_timeout = \"2s\"",
    )
}

#[test]
fn upstream_down_is_unavailable_for_grpc_and_503_for_http() {
    let proxy = pachgate(&down_upstreams(), "");
    grpc_check(&proxy, "unavailable");
    let url = format!("https://{}/lineage", proxy.target());
    for version in ["--http1.1", "--http2"] {
        let (status, body) = curl(&proxy, &url, &[version]);
        assert_eq!(status, 503, "{version}: body {body:?}");
        assert!(
            body.contains("upstream connect error"),
            "{version}: {body:?}"
        );
        assert!(!body.contains("<html"), "{version}: {body:?}");
    }
}

#[test]
fn no_route_is_unimplemented_for_grpc_and_404_for_http() {
    let standins = standins();
    let body = format!(
        r#"
[upstreams.console]
endpoints = ["{}"]
protocol = "http1"

[[routes]]
name = "console-only"
match = {{ path_prefix = "/console", grpc = false }}
upstream = "console"
"#,
        standins.address("standin-console")
    );
    let proxy = pachgate(&body, "");
    grpc_check(&proxy, "unrouted");
    let (status, _) = curl(&proxy, &format!("https://{}/other", proxy.target()), &[]);
    assert_eq!(status, 404);
    // Segment-aware prefix: /consolex is not under /console.
    let (status, _) = curl(&proxy, &format!("https://{}/consolex", proxy.target()), &[]);
    assert_eq!(status, 404);
    let (status, page) = curl(
        &proxy,
        &format!("https://{}/console/x", proxy.target()),
        &[],
    );
    assert_eq!(status, 200);
    assert!(page.contains("Stand-in console"), "{page}");
}

#[test]
fn hop_by_hop_headers_stripped_and_forwarded_headers_set() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let url = format!("https://{}/headers", proxy.target());
    let (status, mirror) = curl(
        &proxy,
        &url,
        &[
            "--http1.1",
            "-H",
            "Connection: keep-alive, X-Hop-Secret",
            "-H",
            "X-Hop-Secret: must-not-pass",
            "-H",
            "Keep-Alive: timeout=5",
            "-H",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "-H",
            "X-Forwarded-For: 198.51.100.7",
            "-H",
            "Forwarded: for=198.51.100.8",
            "-H",
            "X-Real-IP: 198.51.100.9",
            "-H",
            "X-End-To-End: kept",
        ],
    );
    assert_eq!(status, 200, "{mirror}");
    let lower = mirror.to_ascii_lowercase();
    assert!(!lower.contains("x-hop-secret"), "{mirror}");
    assert!(!lower.contains("keep-alive"), "{mirror}");
    assert!(!lower.contains("proxy-authorization"), "{mirror}");
    assert!(lower.contains("x-end-to-end: kept"), "{mirror}");
    // curl is no trusted proxy: its claim is dropped, its address alone goes on.
    assert!(lower.contains("x-forwarded-for: 127.0.0.1\n"), "{mirror}");
    assert!(!lower.contains("198.51.100.7"), "{mirror}");
    // Nor do its other claims of where it connects from reach the upstream.
    assert!(!lower.contains("198.51.100.8"), "{mirror}");
    assert!(!lower.contains("198.51.100.9"), "{mirror}");
    assert!(lower.contains("x-forwarded-proto: https"), "{mirror}");
    assert!(lower.contains("x-forwarded-host: localhost"), "{mirror}");

    // Over h2 the client sends :authority; the HTTP/1.1 upstream still gets a Host.
    let (status, mirror) = curl(&proxy, &url, &["--http2"]);
    assert_eq!(status, 200);
    let lower = mirror.to_ascii_lowercase();
    assert!(
        lower.contains(&format!("host: {}", proxy.target())),
        "{mirror}"
    );
}

/// On loopback without `public_https_port`, redirects go to the https listener itself.
#[test]
fn plaintext_listener_redirects_to_https() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "http = \"127.0.0.1:0\"");
    let http = proxy.running.address("http");
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg(format!(
            "http://localhost:{}/lineage/default?view=dag",
            http.port()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(
        text,
        format!(
            "308 https://localhost:{}/lineage/default?view=dag",
            proxy.https().port()
        )
    );
}

/// The redirect listener's own 400 (no host to redirect to) follows HEAD's rule over h2c
/// too: hyper's HTTP/2 server sends whatever body an answer has, so a HEAD answer must come
/// without one (curl reports the DATA as a protocol error). A GET on the same connection
/// shows the text is there to drop.
#[test]
fn redirect_listeners_400_to_a_head_without_host_has_no_body_over_h2c() {
    use bytes::BytesMut;
    use pachgate_h2_wire::{self as wire, hpack_decode::Decoder};
    use std::io::{Read, Write};

    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "http = \"127.0.0.1:0\"");
    let mut socket = std::net::TcpStream::connect(proxy.running.address("http")).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut out = BytesMut::new();
    out.extend_from_slice(wire::PREFACE);
    wire::put_frame_header(&mut out, 0, wire::SETTINGS, 0, 0);
    // Neither :authority nor Host: `:method` by name index 2 (HEAD is not in the static
    // table), `:scheme: http` (6), `:path: /` (4); then a GET (2) the same way.
    let mut head_block = vec![0x02];
    wire::put_string(&mut head_block, b"HEAD");
    head_block.extend_from_slice(&[0x86, 0x84]);
    for (stream, block) in [(1, head_block), (3, vec![0x82, 0x86, 0x84])] {
        let flags = wire::END_HEADERS | wire::END_STREAM;
        wire::put_frame_header(&mut out, block.len(), wire::HEADERS, flags, stream);
        out.extend_from_slice(&block);
    }
    socket.write_all(&out).unwrap();

    // Per stream: the status, the body's bytes, whether it ended.
    let mut answers = [(String::new(), 0usize, false), (String::new(), 0, false)];
    let mut decoder = Decoder::new(4096);
    while !(answers[0].2 && answers[1].2) {
        let mut header = [0u8; wire::FRAME_HEADER];
        socket.read_exact(&mut header).expect("both answers end");
        let mut payload = vec![0u8; wire::frame_length(&header)];
        socket.read_exact(&mut payload).unwrap();
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]);
        let Some(answer) = answers.get_mut((stream as usize).wrapping_sub(1) / 2) else {
            continue;
        };
        match header[3] {
            wire::HEADERS => decoder
                .decode(&payload, |field| {
                    if field.name == b":status" {
                        answer.0 = String::from_utf8_lossy(field.value).into_owned();
                    }
                })
                .unwrap(),
            wire::DATA => answer.1 += payload.len(),
            wire::RST_STREAM => panic!("stream {stream} reset"),
            _ => continue,
        }
        answer.2 |= header[4] & wire::END_STREAM != 0;
    }
    assert_eq!(answers[1].0, "400");
    assert!(answers[1].1 > 0, "the GET's 400 has its text");
    assert_eq!(answers[0].0, "400");
    assert_eq!(answers[0].1, 0, "the HEAD's 400 came with a body");
}

/// `curl -D -` against `url` (HTTP/1.1, then HTTP/2 over TLS): the status line and headers,
/// lower-cased.
fn response_heads(proxy: &Proxy, url: &str) -> Vec<String> {
    ["--http1.1", "--http2"]
        .iter()
        .map(|version| {
            let output = Command::new("curl")
                .args(["-sS", "-D", "-", "-o", "/dev/null", version, "--cacert"])
                .arg(proxy.ca())
                .arg(url)
                .output()
                .unwrap();
            assert!(output.status.success(), "{version} {url}");
            String::from_utf8_lossy(&output.stdout).to_ascii_lowercase()
        })
        .collect()
}

#[test]
fn redirects_name_the_public_https_port_and_hsts_has_the_presets_max_age() {
    let standins = standins();
    // As the 2.x preset sets them (with the Service's port a NodePort here, so it shows).
    let proxy = pachgate(
        &standin_routes(&standins, ""),
        "http = \"127.0.0.1:0\"\npublic_https_port = 30443\nhsts = true\nhsts_max_age = \"7d\"",
    );
    let http = proxy.running.address("http");
    let redirect = format!("http://localhost:{}/pfs/a?authn-token=x", http.port());
    for head in response_heads(&proxy, &redirect) {
        assert!(head.starts_with("http/1.1 308"), "{head}");
        assert!(
            head.contains("\r\nlocation: https://localhost:30443/pfs/a?authn-token=x\r\n"),
            "{head}"
        );
        // HSTS only means something over TLS; the plaintext redirect does not carry it.
        assert!(!head.contains("strict-transport-security"), "{head}");
    }
    let tls = format!("https://{}/headers", proxy.target());
    for head in response_heads(&proxy, &tls) {
        assert!(
            head.contains("\r\nstrict-transport-security: max-age=604800\r\n"),
            "{head}"
        );
    }
    drop(proxy);

    // Port 443 is left out of the Location.
    let proxy = pachgate(
        &standin_routes(&standins, ""),
        "http = \"127.0.0.1:0\"\npublic_https_port = 443",
    );
    let http = proxy.running.address("http");
    let head = &response_heads(&proxy, &format!("http://localhost:{}/x", http.port()))[0];
    assert!(
        head.contains("\r\nlocation: https://localhost/x\r\n"),
        "{head}"
    );
}

/// A malformed request's answer; pachgate must close the connection after it.
fn raw_exchange(proxy: &Proxy, request: &[u8]) -> String {
    exchange_until_closed(proxy, "http/1.1", request).0
}

#[test]
fn ambiguous_request_framing_is_refused_and_the_connection_closed() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let cases: [(&str, &[u8]); 3] = [
        (
            "conflicting Content-Length",
            b"POST /headers HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "Content-Length then Transfer-Encoding",
            b"POST /headers HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /headers HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
        (
            "Transfer-Encoding then Content-Length",
            b"POST /headers HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\nGET /headers HTTP/1.1\r\nHost: localhost\r\n\r\n",
        ),
    ];
    for (name, request) in cases {
        let response = raw_exchange(&proxy, request);
        assert!(
            response.starts_with("HTTP/1.1 400"),
            "{name}: response {response:?}"
        );
        // The smuggled second request must not have been answered.
        assert_eq!(
            response.matches("HTTP/1.1").count(),
            1,
            "{name}: response {response:?}"
        );
    }
    // The proxy still serves well-formed requests afterwards.
    let ok = raw_exchange(
        &proxy,
        b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
}

#[test]
fn plaintext_listener_in_serve_mode_speaks_http1_and_h2c() {
    let standins = standins();
    let proxy = pachgate(
        &standin_routes(&standins, ""),
        "http = \"127.0.0.1:0\"\nhttp_mode = \"serve\"",
    );
    let http = proxy.running.address("http");
    for flag in ["--http1.1", "--http2-prior-knowledge"] {
        let output = Command::new("curl")
            .args([
                "-sS",
                flag,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg(format!("http://127.0.0.1:{}/headers", http.port()))
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let want = if flag == "--http1.1" {
            "200 1.1"
        } else {
            "200 2"
        };
        assert_eq!(text, want, "{flag}");
    }
    // gRPC over h2c on the plaintext port reaches pachd too.
    let output = Command::new("python3")
        .arg(repo_path("tests/clients/grpc_checks.py"))
        .args([
            "--target",
            &format!("127.0.0.1:{}", http.port()),
            "--plaintext",
            "--ca",
            "-",
        ])
        .arg("pachd-methods")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the client could not run: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    grpc_checks::verify_output("pachd-methods", &String::from_utf8_lossy(&output.stdout));
}

/// Sends `request` over TLS with ALPN `alpn` (tests/clients/raw_https.py) and reads until
/// pachgate closes the connection, which must happen within 20 s: what came back, and how
/// long after the request the close came.
fn exchange_until_closed(proxy: &Proxy, alpn: &str, request: &[u8]) -> (String, Duration) {
    use std::io::Write;
    let started = std::time::Instant::now();
    let mut child = Command::new("python3")
        .arg(repo_path("tests/clients/raw_https.py"))
        .args(["--port", &proxy.https().port().to_string(), "--ca"])
        .arg(proxy.ca())
        .args(["--alpn", alpn, "--wait", "20"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(request).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("NOT CLOSED") && !stderr.contains("NO TLS"),
        "{alpn}: pachgate kept the connection open ({stderr})"
    );
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        started.elapsed(),
    )
}

#[test]
fn connections_without_a_request_are_closed_after_the_idle_timeout() {
    let standins = standins();
    let proxy = pachgate_with_limits(
        &standins,
        "idle_timeout = \"2s\"",
        "admin = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"",
    );
    // TLS done, h2 chosen, and then not even the preface: hyper would wait for it forever.
    let (_, after) = exchange_until_closed(&proxy, "h2", b"");
    assert!(
        after >= Duration::from_millis(1500),
        "h2 without a preface: closed after {after:?}, before the idle timeout"
    );
    // HTTP/1.1 keep-alive after one answered request (hyper's own head timeout is 30 s).
    let (answer, after) = exchange_until_closed(
        &proxy,
        "http/1.1",
        b"GET /headers HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        after >= Duration::from_millis(1500),
        "HTTP/1.1 keep-alive: closed after {after:?}, before the idle timeout"
    );
    // The plaintext listener (redirecting to https): a client that never sends a byte, so
    // HTTP/1's head timeout never starts.
    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(proxy.running.address("http")).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let read = std::io::Read::read(&mut silent, &mut [0u8; 1]);
    assert!(
        matches!(read, Ok(0)),
        "the silent plaintext connection was not closed within 20 s: {read:?}"
    );
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1500),
        "silent plaintext connection: closed after {after:?}, before the idle timeout"
    );
    let samples = scrape_metrics(proxy.running.address("admin"));
    assert_eq!(
        samples["pachgate_idle_connections_closed_total{}"], 3.0,
        "{samples:#}"
    );
}
