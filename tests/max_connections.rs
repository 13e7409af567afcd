//! `limits.max_connections` over real sockets: with a cap of 3, three client connections held
//! open (TLS and plaintext, idle keep-alive between requests) are served; the next one is
//! closed without an HTTP answer (TLS: the handshake fails; curl gets nothing), counted in
//! /metrics and shown on the status page, and logged once rather than per connection; once
//! one of the three closes, a new connection is served; the held ones keep working
//! throughout. A websocket tunnel's socket stays counted after the HTTP upgrade. A reload
//! that lowers the cap keeps the connections already open.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

const LISTENERS: &str = "admin = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\nhttp_mode = \"serve\"";

fn tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tcp
}

/// A TLS connection to the proxy (ALPN http/1.1), or the handshake's error.
fn tls(proxy: &Proxy) -> std::io::Result<Tls> {
    let config = client_tls(&proxy.ca(), b"http/1.1");
    let server = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, server).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp(proxy.https()));
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// One keep-alive HTTP/1.1 request on a held connection: the status, after reading the
/// whole answer (the stand-in console sends a Content-Length).
fn get<S: Read + Write + ?Sized>(stream: &mut S) -> std::io::Result<u16> {
    stream.write_all(b"GET /headers HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
    stream.flush()?;
    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    if reader.read_line(&mut status_line)? == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line == "\r\n" || line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(status_line.split(' ').nth(1).unwrap().parse().unwrap())
}

/// A plaintext connection past the cap: the request gets no answer at all (EOF or reset).
fn assert_plain_refused(addr: SocketAddr) {
    let mut stream = tcp(addr);
    // The write may already fail if the close came first.
    let _ = stream.write_all(b"GET /headers HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "a connection past the cap was answered: {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// A TLS connection past the cap: closed before any handshake byte.
fn assert_tls_refused(proxy: &Proxy) {
    match tls(proxy) {
        Ok(_) => panic!("a TLS handshake past the cap succeeded"),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            ),
            "unexpected handshake error: {e}"
        ),
    }
}

fn metric(admin: SocketAddr, key: &str) -> f64 {
    let samples = scrape_metrics(admin);
    samples[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {samples:#}"))
}

/// Waits until the proxy counts `open` client connections (after a client closed one).
fn wait_for_open(admin: SocketAddr, open: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = metric(admin, "pachgate_active_connections{}");
        if now == open {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{now} connections open, not {open}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_page(admin: SocketAddr) -> String {
    let output = std::process::Command::new("curl")
        .args(["-s", &format!("http://{admin}/")])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr_until(running: &Running, needle: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = String::new();
    while Instant::now() < deadline {
        seen.push_str(&running.stderr_so_far());
        if seen.contains(needle) {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no stderr line with {needle:?}; saw:\n{seen}");
}

#[test]
fn connections_past_the_cap_are_closed_counted_and_served_again_once_one_closes() {
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "max_connections = 3", LISTENERS);
    let admin = proxy.running.address("admin");
    let plain = proxy.running.address("http");
    let curl_https = || {
        http_code(
            &["--cacert", proxy.ca().to_str().unwrap()],
            &format!("https://{}/headers", proxy.target()),
        )
    };

    // Three held connections across both listeners, each answered once.
    let mut first = tls(&proxy).unwrap();
    let mut second = tls(&proxy).unwrap();
    let mut third = tcp(plain);
    for stream in [&mut first as &mut dyn ReadWrite, &mut second, &mut third] {
        assert_eq!(get(stream).unwrap(), 200);
    }
    assert_eq!(metric(admin, "pachgate_active_connections{}"), 3.0);
    assert_eq!(metric(admin, "pachgate_max_connections{}"), 3.0);

    // Past the cap, on either listener and with a real client: no answer.
    assert_tls_refused(&proxy);
    assert_plain_refused(plain);
    assert_eq!(curl_https(), "000", "curl was answered past the cap");
    assert_eq!(
        http_code(&[], &format!("http://{plain}/headers")),
        "000",
        "curl was answered past the cap"
    );
    let refused = "pachgate_connections_refused_total{reason=max_connections}";
    assert_eq!(metric(admin, refused), 4.0);
    // The held connections were not touched, and the admin listener is not capped.
    for stream in [&mut first as &mut dyn ReadWrite, &mut second, &mut third] {
        assert_eq!(get(stream).unwrap(), 200);
    }
    let page = status_page(admin);
    assert!(
        page.contains("<td>3 (of 3, limits.max_connections)</td>")
            && page.contains("refused at max_connections</th><td>4</td>"),
        "{page}"
    );

    // A burst of refusals is one warning with the count, not one line each.
    for _ in 0..20 {
        assert_plain_refused(plain);
    }
    let log = stderr_until(
        &proxy.running,
        "limits.max_connections reached",
        Duration::from_secs(5),
    );
    std::thread::sleep(Duration::from_millis(300));
    let log = log + &proxy.running.stderr_so_far();
    let warnings = log.matches("limits.max_connections reached").count();
    assert!(
        (1..=3).contains(&warnings),
        "{warnings} warnings for 24 refusals:\n{log}"
    );
    assert_eq!(metric(admin, refused), 24.0);

    // One closes (with a TLS close_notify, as a client leaving would): a new one is served.
    first.conn.send_close_notify();
    first.conn.complete_io(&mut first.sock).unwrap();
    drop(first);
    wait_for_open(admin, 2.0);
    assert_eq!(curl_https(), "200");
    let mut fourth = tls(&proxy).unwrap();
    assert_eq!(get(&mut fourth).unwrap(), 200);
    assert_tls_refused(&proxy);
    for stream in [&mut second as &mut dyn ReadWrite, &mut third, &mut fourth] {
        assert_eq!(get(stream).unwrap(), 200);
    }
    assert_eq!(metric(admin, refused), 25.0);
}

#[test]
fn a_reload_that_lowers_the_cap_keeps_open_connections() {
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "max_connections = 3", LISTENERS);
    let admin = proxy.running.address("admin");
    let plain = proxy.running.address("http");
    let mut held: Vec<TcpStream> = (0..3).map(|_| tcp(plain)).collect();
    for stream in &mut held {
        assert_eq!(get(stream).unwrap(), 200);
    }

    let path = proxy.dir.path().join("pachgate.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("max_connections = 3"));
    std::fs::write(
        &path,
        text.replace("max_connections = 3", "max_connections = 1"),
    )
    .unwrap();
    proxy.running.signal("HUP");
    stderr_until(
        &proxy.running,
        "limits.max_connections changed",
        Duration::from_secs(10),
    );
    assert_eq!(metric(admin, "pachgate_max_connections{}"), 1.0);

    // Three open above a cap of one: all kept and served; nothing new gets in.
    for stream in &mut held {
        assert_eq!(get(stream).unwrap(), 200);
    }
    assert_plain_refused(plain);
    assert_eq!(metric(admin, "pachgate_active_connections{}"), 3.0);
    // Two leave: still at the cap.
    held.truncate(1);
    wait_for_open(admin, 1.0);
    assert_plain_refused(plain);
    assert_eq!(get(&mut held[0]).unwrap(), 200);
    // The last leaves: one new connection fits again, and only one.
    held.clear();
    wait_for_open(admin, 0.0);
    let mut next = tcp(plain);
    assert_eq!(get(&mut next).unwrap(), 200);
    assert_tls_refused(&proxy);
    assert_eq!(
        metric(
            admin,
            "pachgate_connections_refused_total{reason=max_connections}"
        ),
        3.0
    );
}

/// An HTTP/1.1 websocket upgrade hands the socket from HTTP to a tunnel: it stays counted
/// until the tunnel closes it.
#[test]
fn a_websocket_tunnel_keeps_its_connection_counted() {
    use tokio_tungstenite::tungstenite::{client, Message};
    let standins = standins();
    let proxy = pachgate_with_limits(&standins, "max_connections = 1", LISTENERS);
    let admin = proxy.running.address("admin");
    let plain = proxy.running.address("http");
    let (mut socket, response) = client(format!("ws://{plain}/ws"), tcp(plain)).unwrap();
    assert_eq!(response.status(), 101);
    let mut echo = |text: &str| {
        socket.send(Message::text(text)).unwrap();
        let answer = socket.read().unwrap().into_text().unwrap();
        assert_eq!(answer.as_str(), text);
    };
    echo("before");
    assert_eq!(metric(admin, "pachgate_active_websocket_tunnels{}"), 1.0);
    assert_eq!(metric(admin, "pachgate_active_connections{}"), 1.0);
    assert_plain_refused(plain);
    assert_tls_refused(&proxy);
    echo("after the refusals");
    socket.close(None).unwrap();
    while socket.read().is_ok() {}
    drop(socket);
    wait_for_open(admin, 0.0);
    assert_eq!(get(&mut tcp(plain)).unwrap(), 200);
    assert_eq!(
        metric(
            admin,
            "pachgate_connections_refused_total{reason=max_connections}"
        ),
        2.0
    );
}

/// The other refusals at accept are counted under their own reason, and give their place
/// back at once.
#[test]
fn connections_outside_allow_cidrs_are_counted_as_refused() {
    let standins = standins();
    let config = format!(
        "allow_cidrs = [\"10.0.0.0/8\"]\n\n[listen]\nhttp = \"127.0.0.1:0\"\nhttp_mode = \"serve\"\n\
         admin = \"127.0.0.1:0\"\n\n[limits]\nmax_connections = 1\n\n{}",
        standin_routes(&standins, "")
    );
    let proxy = pachgate_config(&config, 2);
    let admin = proxy.running.address("admin");
    let plain = proxy.running.address("http");
    for _ in 0..3 {
        assert_plain_refused(plain);
    }
    let samples = scrape_metrics(admin);
    assert_eq!(
        samples["pachgate_connections_refused_total{reason=address_not_allowed}"], 3.0,
        "{samples:#}"
    );
    assert_eq!(
        samples["pachgate_connections_refused_total{reason=max_connections}"], 0.0,
        "{samples:#}"
    );
    wait_for_open(admin, 0.0);
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
