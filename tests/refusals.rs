//! Clean refusals toward clients, over real sockets: a 431 for an over-long HTTP/1.1 head
//! reaches a client that is still sending (lingering close, TLS and plain); an over-long
//! HTTP/2 header list gets a 431 on its stream and nothing that invites a retry, with the
//! connection's other stream served; a bad h2 preface gets GOAWAY PROTOCOL_ERROR and a TLS
//! close_notify; header names with underscores are refused when configured; a HEAD request
//! gets a refusal's head without its body. A bystander request after each shows the proxy
//! unaffected.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use rustls::pki_types::ServerName;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS connection to the proxy with one ALPN protocol, handshake done.
fn tls(proxy: &Proxy, alpn: &[u8]) -> Tls {
    let config = common::client_tls(&proxy.ca(), alpn);
    let server = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, server).unwrap();
    let tcp = TcpStream::connect(proxy.https()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    assert_eq!(stream.conn.alpn_protocol(), Some(alpn));
    stream
}

/// A client uploading a request head that never ends, as a slow client would: 70,000 bytes
/// at once (past the 64 KiB limit), then three more 16,000-byte pieces 300 ms apart, each
/// sent whole before it reads. Returns the first write error, and what it read until EOF.
fn send_endless_head(stream: &mut impl ReadWrite) -> (Option<std::io::Error>, String) {
    let mut head = b"GET /headers HTTP/1.1\r\nHost: localhost\r\nX-Big: ".to_vec();
    head.resize(70_000, b'a');
    let mut failed = stream.write_all(&head).and_then(|()| stream.flush()).err();
    for _ in 0..3 {
        if failed.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        failed = stream
            .write_all(&[b'a'; 16_000])
            .and_then(|()| stream.flush())
            .err();
    }
    let mut answer = Vec::new();
    // EOF, close_notify or a reset: what arrived before it is what counts.
    let _ = stream.read_to_end(&mut answer);
    (failed, String::from_utf8_lossy(&answer).into_owned())
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The bystander: an ordinary request on a new connection, both protocols.
fn assert_bystander_served(proxy: &Proxy) {
    let url = format!("https://{}/headers", proxy.target());
    for version in ["--http1.1", "--http2"] {
        let ca = proxy.ca();
        let code = http_code(&["--cacert", ca.to_str().unwrap(), version], &url);
        assert_eq!(code, "200", "bystander over {version}");
    }
}

fn proxy_with_plain(standins: &Running, limits: &str) -> Proxy {
    pachgate_with_limits(
        standins,
        limits,
        "http = \"127.0.0.1:0\"\nhttp_mode = \"serve\"",
    )
}

#[test]
fn http1_431_reaches_a_client_still_sending_its_head() {
    let standins = standins();
    let proxy = proxy_with_plain(&standins, "");
    for transport in ["tls", "plain"] {
        let (failed, answer) = match transport {
            "tls" => send_endless_head(&mut tls(&proxy, b"http/1.1")),
            _ => {
                let mut tcp = TcpStream::connect(proxy.running.address("http")).unwrap();
                tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                send_endless_head(&mut tcp)
            }
        };
        // Today's failure: the connection is closed under the client, whose next write
        // meets a reset (and curl, like most clients, never reads the 431).
        assert!(
            failed.is_none(),
            "{transport}: the client's upload was cut: {failed:?} (answer {answer:?})"
        );
        assert!(
            answer.starts_with("HTTP/1.1 431"),
            "{transport}: {answer:?}"
        );
        assert_bystander_served(&proxy);
    }
}

#[test]
fn curl_gets_431_for_a_long_head_on_both_protocols_in_one_request() {
    // nghttp2 (curl's h2) will not send a header block over 64 KiB at all, so the limit is
    // lowered to show the answer curl gets for a header past it.
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "max_header_list_size = 16384", "");
    let big = format!("X-Big: {}", "a".repeat(40_000));
    let url = format!("https://{}/headers", proxy.target());
    for version in ["--http1.1", "--http2"] {
        let output = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{num_connects}",
            ])
            .arg("--cacert")
            .arg(proxy.ca())
            .args([version, "-H", &big, &url])
            .output()
            .unwrap();
        let seen = String::from_utf8(output.stdout).unwrap();
        assert_eq!(seen, "431 1", "{version}: status and connections");
    }
    assert_bystander_served(&proxy);
}

/// A client that sends a 100 KB header over h2 (over the 64 KiB limit, under the 256 KiB
/// advertised) gets a 431 that ends its stream, no reset, and its other stream is served.
/// (h2's own refusal answered the same to such a client; curl cannot send one at all, its
/// nghttp2 caps outgoing header blocks at 64 KiB and retries on REFUSED_STREAM.)
#[test]
fn http2_over_long_header_list_is_a_431_on_its_stream_not_a_reset() {
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "", "");
    let port = proxy.https().port().to_string();
    let ca = proxy.ca();
    let output = python(
        "h2_big_header.py",
        &[
            "--port",
            &port,
            "--ca",
            ca.to_str().unwrap(),
            "--path",
            "/headers",
            "--size",
            "100000",
        ],
    );
    let events: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let events = events.as_array().unwrap();
    let of = |stream: u64| -> Vec<&serde_json::Value> {
        events.iter().filter(|e| e["stream"] == stream).collect()
    };
    let kinds = |stream| {
        of(stream)
            .iter()
            .map(|e| e["kind"].clone())
            .collect::<Vec<_>>()
    };
    // A response that ends, and no reset after it (today: RST_STREAM PROTOCOL_ERROR).
    assert_eq!(kinds(1), ["headers", "end"], "stream 1: {events:?}");
    assert_eq!(of(1)[0]["status"], "431", "{events:?}");
    assert_eq!(kinds(3), ["headers", "end"], "stream 3: {events:?}");
    assert_eq!(of(3)[0]["status"], "200", "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| e["kind"] == "goaway" || e["kind"] == "closed"),
        "the connection must go on: {events:?}"
    );
    assert_bystander_served(&proxy);
}

#[test]
fn bad_h2_preface_gets_goaway_protocol_error_and_close_notify() {
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "", "");
    let mut stream = tls(&proxy, b"h2");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    // Ok only when the TLS stream ended with close_notify (rustls reports a bare TCP close
    // as UnexpectedEof).
    let ended = stream.read_to_end(&mut answer);
    assert!(ended.is_ok(), "no close_notify: {ended:?}, read {answer:?}");
    let mut frames = Vec::new();
    let mut rest = &answer[..];
    while rest.len() >= 9 {
        let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
        assert!(rest.len() >= 9 + length, "a cut frame in {answer:?}");
        frames.push((rest[3], rest[9..9 + length].to_vec()));
        rest = &rest[9 + length..];
    }
    assert!(rest.is_empty(), "not h2 frames: {answer:?}");
    let goaway = frames
        .iter()
        .find(|(kind, _)| *kind == 0x7)
        .unwrap_or_else(|| panic!("no GOAWAY in {frames:?}"));
    assert_eq!(
        u32::from_be_bytes(goaway.1[4..8].try_into().unwrap()),
        1,
        "GOAWAY error code must be PROTOCOL_ERROR"
    );
    assert_bystander_served(&proxy);
}

#[test]
fn underscore_header_names_are_refused_when_configured() {
    let standins = standins();
    let strict = pachgate_with_limits(&standins, "reject_underscore_headers = true", "");
    let lenient = pachgate_with_limits(&standins, "", "");
    for (proxy, want) in [(&strict, "400"), (&lenient, "200")] {
        let url = format!("https://{}/headers", proxy.target());
        let ca = proxy.ca();
        for version in ["--http1.1", "--http2"] {
            let code = http_code(
                &[
                    "--cacert",
                    ca.to_str().unwrap(),
                    version,
                    "-H",
                    "X_Custom: 1",
                ],
                &url,
            );
            assert_eq!(code, want, "{version}");
            // Hyphens are fine either way.
            let code = http_code(
                &[
                    "--cacert",
                    ca.to_str().unwrap(),
                    version,
                    "-H",
                    "X-Custom: 1",
                ],
                &url,
            );
            assert_eq!(code, "200", "{version}");
        }
    }
}

/// A HEAD request that pachgate answers itself gets the head a GET would get, its
/// `Content-Length` included, and no body: over HTTP/2 a body on a HEAD answer is a
/// protocol error to curl (nghttp2), which then reports no answer at all.
#[test]
fn head_requests_get_pachgates_own_answers_without_a_body() {
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "reject_underscore_headers = true", "");
    let url = format!("https://{}/headers", proxy.target());
    let ca = proxy.ca();
    let curl = |args: &[&str]| {
        std::process::Command::new("curl")
            .args(["-sS", "--cacert", ca.to_str().unwrap(), "-H", "X_Custom: 1"])
            .args(args)
            .arg(&url)
            .output()
            .unwrap()
    };
    for version in ["--http1.1", "--http2"] {
        let get = curl(&[
            version,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ]);
        let get = String::from_utf8(get.stdout).unwrap();
        let (status, length) = get.split_once(' ').unwrap();
        assert_eq!(status, "400", "{version}");
        assert_ne!(length, "0", "{version}: the refusal has a text");
        let head = curl(&[version, "-I"]);
        assert!(
            head.status.success(),
            "{version}: {}",
            String::from_utf8_lossy(&head.stderr)
        );
        let head = String::from_utf8(head.stdout).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/"), "{version}: {head}");
        assert!(
            head.lines().next().unwrap().contains(" 400"),
            "{version}: {head}"
        );
        assert!(
            head.contains(&format!("content-length: {length}\r\n")),
            "{version}: {head}"
        );
    }
    assert_bystander_served(&proxy);
}
