//! pachgate (the built binary) in front of a malicious h2c upstream scripted here in Rust: a
//! loopback TcpListener answering every request with one attack, frame by frame (h2-wire's
//! encoder). Each case runs a well-behaved bystander (curl over HTTP/2 through another route
//! to the console stand-in) alongside the attacker and asserts: the attacker gets the
//! documented 502 / grpc-status 14, the bystander sees no failure, pachgate stays up, and its
//! RSS (/proc/PID/status VmRSS) grows by less than RSS_BOUND.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pachgate_h2_wire::{self as wire, FRAME_HEADER};

/// How much pachgate's RSS may grow over a case's attacks (before the fix one HPACK bomb
/// alone cost about 170 MiB).
const RSS_BOUND_KIB: u64 = 48 * 1024;
/// Attacks per case.
const ATTACKS: usize = 12;

#[derive(Clone, Copy, Debug)]
enum Attack {
    /// 40,000 distinct header names (http::HeaderMap panics past 32,768).
    HeaderCount,
    /// A 20 KB block that decodes to 64 MB.
    HpackBomb,
    /// A SETTINGS initial window that pushes the open stream's window past 2^31-1.
    SettingsWindowOverflow,
    /// A WINDOW_UPDATE that pushes the connection window past 2^31-1.
    WindowUpdateOverflow,
    /// HEADERS, then CONTINUATION frames without END_HEADERS, forever.
    EndlessContinuation,
    /// PINGs (or SETTINGS) without end, acknowledgements never read.
    PingFlood,
    SettingsFlood,
}

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    wire::put_frame_header(out, payload.len(), kind, flags, stream);
    out.extend_from_slice(payload);
}

fn literal(block: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    block.push(0x00);
    wire::put_string(block, name);
    wire::put_string(block, value);
}

/// Error codes pachgate sent the hostile upstream: (frame type, code).
type Seen = Arc<Mutex<Vec<(u8, u32)>>>;

fn read_frame(socket: &mut TcpStream, seen: &Seen) -> std::io::Result<(u8, u8, u32)> {
    let mut header = [0u8; FRAME_HEADER];
    socket.read_exact(&mut header)?;
    let mut payload = vec![0u8; wire::frame_length(&header)];
    socket.read_exact(&mut payload)?;
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    let at = match header[3] {
        wire::GOAWAY => Some(4),
        wire::RST_STREAM => Some(0),
        _ => None,
    };
    if let Some(code) = at.and_then(|at| payload.get(at..at + 4)) {
        let code = u32::from_be_bytes(code.try_into().unwrap());
        seen.lock().unwrap().push((header[3], code));
    }
    Ok((header[3], header[4], stream))
}

/// One connection from pachgate: handshake, then the attack on every request.
fn serve(mut socket: TcpStream, attack: Attack, seen: Seen) -> std::io::Result<()> {
    socket.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut preface = [0u8; 24];
    socket.read_exact(&mut preface)?;
    let mut out = BytesMut::new();
    frame(&mut out, wire::SETTINGS, 0, 0, &[]);
    socket.write_all(&out)?;
    loop {
        let (kind, flags, stream) = read_frame(&mut socket, &seen)?;
        if kind == wire::SETTINGS && flags & wire::ACK == 0 {
            let mut ack = BytesMut::new();
            frame(&mut ack, wire::SETTINGS, wire::ACK, 0, &[]);
            socket.write_all(&ack)?;
        }
        if kind != wire::HEADERS {
            continue;
        }
        let mut out = BytesMut::new();
        let mut status = Vec::new();
        literal(&mut status, b":status", b"200");
        match attack {
            Attack::HeaderCount => {
                let mut block = status;
                let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
                for i in 0..40_000usize {
                    let name = [
                        alphabet[i % 36],
                        alphabet[(i / 36) % 36],
                        alphabet[(i / 1296) % 36],
                    ];
                    literal(&mut block, &name, b"");
                }
                wire::put_header_block(&mut out, 16_384, stream, &block, true);
            }
            Attack::HpackBomb => {
                let mut block = status;
                block.push(0x40);
                wire::put_string(&mut block, b"x-bomb");
                wire::put_string(&mut block, &[b'b'; 4000]);
                block.resize(block.len() + 16_000, 0x80 | 62);
                wire::put_header_block(&mut out, 16_384, stream, &block, true);
            }
            Attack::SettingsWindowOverflow => {
                let increment = 0x7fff_ffffu32 - 65_535;
                frame(
                    &mut out,
                    wire::WINDOW_UPDATE,
                    0,
                    stream,
                    &increment.to_be_bytes(),
                );
                let mut setting = wire::SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes().to_vec();
                setting.extend_from_slice(&65_536u32.to_be_bytes());
                frame(&mut out, wire::SETTINGS, 0, 0, &setting);
            }
            Attack::WindowUpdateOverflow => {
                frame(
                    &mut out,
                    wire::WINDOW_UPDATE,
                    0,
                    0,
                    &0x7fff_ffffu32.to_be_bytes(),
                );
            }
            Attack::EndlessContinuation => {
                frame(&mut out, wire::HEADERS, 0, stream, &status);
                socket.write_all(&out)?;
                // pachgate's GOAWAY is read on the side while the frames keep coming.
                let (mut reader, seen) = (socket.try_clone()?, seen.clone());
                std::thread::spawn(move || while read_frame(&mut reader, &seen).is_ok() {});
                let mut more = BytesMut::new();
                for _ in 0..100 {
                    frame(&mut more, wire::CONTINUATION, 0, stream, &[]);
                }
                loop {
                    socket.write_all(&more)?;
                }
            }
            Attack::PingFlood | Attack::SettingsFlood => {
                let mut batch = BytesMut::new();
                for i in 0..1_000u64 {
                    if matches!(attack, Attack::PingFlood) {
                        frame(&mut batch, wire::PING, 0, 0, &i.to_be_bytes());
                    } else {
                        frame(&mut batch, wire::SETTINGS, 0, 0, &[]);
                    }
                }
                // Never reads again: pachgate's acks pile up behind a full socket.
                loop {
                    socket.write_all(&batch)?;
                }
            }
        }
        socket.write_all(&out)?;
    }
}

/// The hostile upstream: every connection gets the attack.
fn hostile_upstream(attack: Attack) -> (std::net::SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let seen = Seen::default();
    let record = seen.clone();
    std::thread::spawn(move || {
        for socket in listener.incoming().map_while(Result::ok) {
            let seen = record.clone();
            std::thread::spawn(move || serve(socket, attack, seen));
        }
    });
    (address, seen)
}

/// pachgate's resident set (KiB), found by its config path on its command line.
fn rss_kib(proxy: &common::Proxy) -> u64 {
    let config = proxy.dir.path().join("pachgate.toml");
    let config = config.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().map_while(Result::ok) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(config) {
            let status = std::fs::read_to_string(entry.path().join("status")).unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            return line.split_whitespace().nth(1).unwrap().parse().unwrap();
        }
    }
    panic!("pachgate's process not found");
}

/// curl over HTTP/2 through pachgate: (status, grpc-status header if any).
fn curl(proxy: &common::Proxy, path: &str, grpc: bool) -> (String, Option<String>) {
    let url = format!("https://{}{path}", proxy.target());
    let mut command = Command::new("curl");
    command
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--http2",
            "--max-time",
            "20",
        ])
        .arg("--cacert")
        .arg(proxy.ca())
        .args(["--resolve", &format!("{}:127.0.0.1", proxy.target())]);
    if grpc {
        command.args([
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
        ]);
        command.args(["--data-binary", "@-"]);
        command.stdin(std::process::Stdio::null());
    }
    let output = command.arg(&url).output().expect("curl is installed");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("000")
        .to_string();
    let grpc_status = text
        .lines()
        .find_map(|l| l.strip_prefix("grpc-status: "))
        .map(|s| s.trim().to_string());
    (status, grpc_status)
}

fn run(attack: Attack) {
    let standins = common::standins();
    let (hostile, seen) = hostile_upstream(attack);
    let proxy = common::TestConfig::new()
        .upstream_with(
            "hostile",
            hostile,
            "h2c",
            "connect_timeout = \"2s\"\nresponse_timeout = \"15s\"",
        )
        .route("hostile", "path_prefix = \"/hostile\"", "hostile")
        .section(&common::standin_routes(&standins, ""))
        .start();
    // Warm up: the bystander's path, and one attack, before the baseline.
    assert_eq!(curl(&proxy, "/", false).0, "200");
    let _ = curl(&proxy, "/hostile/warm", false);
    let before = rss_kib(&proxy);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let bystander = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let target = proxy.target();
        let ca = proxy.ca();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let output = Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--http2",
                        "--max-time",
                        "10",
                    ])
                    .arg("--cacert")
                    .arg(&ca)
                    .arg(format!("https://{target}/"))
                    .output()
                    .unwrap();
                if output.stdout == b"200" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    for i in 0..ATTACKS {
        let grpc = i % 2 == 1;
        let (status, grpc_status) = curl(&proxy, &format!("/hostile/{i}"), grpc);
        if grpc {
            assert_eq!(status, "200", "{attack:?}: gRPC attacker's HTTP status");
            assert_eq!(
                grpc_status.as_deref(),
                Some("14"),
                "{attack:?}: gRPC attacker"
            );
        } else {
            assert_eq!(status, "502", "{attack:?}: HTTP attacker");
        }
    }
    stop.store(true, Ordering::Relaxed);
    bystander.join().unwrap();
    let after = rss_kib(&proxy);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "{attack:?}: bystander failures"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 0,
        "{attack:?}: the bystander ran"
    );
    assert_eq!(
        curl(&proxy, "/", false).0,
        "200",
        "{attack:?}: pachgate is still up"
    );
    assert!(
        after.saturating_sub(before) < RSS_BOUND_KIB,
        "{attack:?}: RSS grew from {before} KiB to {after} KiB"
    );
    // What pachgate told the upstream (the floods leave nothing read to tell).
    let expected = match attack {
        Attack::HeaderCount | Attack::HpackBomb => Some((wire::RST_STREAM, 0xb)),
        Attack::SettingsWindowOverflow | Attack::WindowUpdateOverflow => Some((wire::GOAWAY, 0x3)),
        Attack::EndlessContinuation => Some((wire::GOAWAY, 0xb)),
        Attack::PingFlood | Attack::SettingsFlood => None,
    };
    if let Some(expected) = expected {
        let seen = seen.lock().unwrap();
        assert!(
            seen.contains(&expected),
            "{attack:?}: pachgate sent {seen:?}, not {expected:?}"
        );
    }
    eprintln!(
        "{attack:?}: RSS {before} -> {after} KiB, bystander {} ok",
        ok.load(Ordering::Relaxed)
    );
}

#[test]
fn header_count_bomb() {
    run(Attack::HeaderCount);
}

#[test]
fn hpack_bomb() {
    run(Attack::HpackBomb);
}

#[test]
fn settings_window_overflow() {
    run(Attack::SettingsWindowOverflow);
}

#[test]
fn window_update_overflow() {
    run(Attack::WindowUpdateOverflow);
}

#[test]
fn endless_continuation() {
    run(Attack::EndlessContinuation);
}

#[test]
fn ping_flood() {
    run(Attack::PingFlood);
}

#[test]
fn settings_flood() {
    run(Attack::SettingsFlood);
}
