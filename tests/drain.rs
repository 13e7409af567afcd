//! Graceful drain on SIGTERM, with a server stream, a websocket and a client loop in flight:
//! /readyz fails at once, the listener closes, the stream finishes whole, the loop's accepted
//! calls all succeed, the websocket gets a close frame 1001 at the deadline, and the process
//! exits 0. Also the process's edges: a SIGTERM right after the listener is bound drains, and
//! a closed stdout does not stop it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const DRAIN_TIMEOUT_SECS: u64 = 6;

#[test]
fn sigterm_drains_streams_and_loops_then_closes_websockets_with_1001() {
    let standins = standins();
    let mut proxy = pachgate_with_limits(
        &standins,
        &format!("drain_timeout = \"{DRAIN_TIMEOUT_SECS}s\""),
        "admin = \"127.0.0.1:0\"",
    );
    let admin = proxy.running.address("admin");
    let readyz = || http_code(&[], &format!("http://{admin}/readyz"));
    assert_eq!(readyz(), "200");

    let mut stream = Command::new("python3")
        .arg(repo_path("tests/clients/grpc_checks.py"))
        .args(["--target", &proxy.target(), "--ca"])
        .arg(proxy.ca())
        .arg("stream-survives-drain")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stream_lines = BufReader::new(stream.stdout.take().unwrap()).lines();
    assert_eq!(stream_lines.next().unwrap().unwrap(), "streaming");

    let mut websocket = Command::new("python3")
        .arg(repo_path("tests/clients/ws_checks.py"))
        .args(["--url", &format!("wss://{}/ws", proxy.target()), "--ca"])
        .arg(proxy.ca())
        .arg("--until-going-away")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut websocket_lines = BufReader::new(websocket.stdout.take().unwrap()).lines();
    assert_eq!(websocket_lines.next().unwrap().unwrap(), "open");

    let client_loop = start_call_loop(&proxy.target(), &proxy.ca(), 30, &["--drain"]);
    std::thread::sleep(Duration::from_millis(800));

    proxy.running.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(readyz(), "503", "readyz still passes while draining");
    let refused = std::net::TcpStream::connect_timeout(&proxy.https(), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "the listener still accepts while draining"
    );

    let status = stream.wait().unwrap();
    let stream_rest: Vec<String> = stream_lines.map_while(Result::ok).collect();
    assert!(
        status.success(),
        "the stream client could not run: {stream_rest:?}"
    );
    grpc_checks::verify_output("stream-survives-drain", &stream_rest.join("\n"));
    let summary = finish_call_loop(client_loop, "an accepted call failed during the drain");
    assert_eq!(summary["refused"], true, "{summary}");

    let status = websocket.wait().unwrap();
    let closed_line = websocket_lines
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(
        status.success(),
        "the websocket client could not run: {closed_line}"
    );
    let session: serde_json::Value =
        serde_json::from_str(&closed_line).expect("ws_checks.py prints JSON");
    assert_eq!(session["first_echo"], "before the drain", "{session}");
    assert_eq!(session["wrong_echoes"], 0, "{session}");
    assert_eq!(
        session["close_received"]["code"], 1001,
        "the websocket did not get a 1001 (going away) close: {session}"
    );
    let exit = proxy
        .running
        .wait_exit(Duration::from_secs(10))
        .expect("pachgate did not exit after draining");
    assert!(exit.success(), "exit status {exit:?}");
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("drain_timeout reached"), "{log}");
}

/// With `drain_delay`, a SIGTERM first only takes pachgate out of rotation: `/readyz` fails
/// at once, while new connections are still accepted and served for the delay (a load
/// balancer, or Kubernetes' endpoints, still sends them for a moment). Then the drain.
#[test]
fn drain_delay_serves_new_connections_while_readyz_fails() {
    let standins = standins();
    let mut proxy = pachgate_with_limits(
        &standins,
        "drain_delay = \"3s\"\ndrain_timeout = \"5s\"",
        "admin = \"127.0.0.1:0\"",
    );
    let admin = proxy.running.address("admin");
    let readyz = || http_code(&[], &format!("http://{admin}/readyz"));
    let console = |proxy: &Proxy| {
        let url = format!("https://localhost:{}/headers", proxy.https().port());
        http_code(&["--cacert", &proxy.ca().to_string_lossy()], &url)
    };
    assert_eq!(readyz(), "200");

    let signalled = std::time::Instant::now();
    proxy.running.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(readyz(), "503", "readyz passes after SIGTERM");
    assert_eq!(
        console(&proxy),
        "200",
        "a new connection refused during the delay"
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(2),
        "the checks took too long to prove anything about the delay"
    );

    // After the delay: the listener is closed, and the idle process exits.
    let exit = proxy
        .running
        .wait_exit(Duration::from_secs(15))
        .expect("pachgate did not exit after the delay and the drain");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(3),
        "exited {:?} after SIGTERM, before the delay ended",
        signalled.elapsed()
    );
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("serving on for 3s before the drain"), "{log}");
}

/// A SIGTERM that arrives once a listener is up, even before pachgate has said so, starts the
/// drain: the handlers are in place before the first socket is bound, so the default action
/// (the process killed, its connections cut without a TLS close or a close frame) never
/// applies to a process that may hold connections. The announcement is held back by giving
/// pachgate a full pipe as stdout: the signal lands while its announcement waits for room,
/// and the line still reaches stdout before the process exits.
#[tokio::test]
async fn a_sigterm_before_the_listener_is_announced_still_drains() {
    use std::io::Read;
    let (full, pending) = tokio::net::unix::pipe::pipe().unwrap();
    let filler = [b'.'; 4096];
    let mut filled = 0;
    full.writable().await.unwrap();
    loop {
        match full.try_write(&filler) {
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    assert!(filled > 0);
    let (_dir, port, mut child) = serve_on_a_plain_listener(full.into_blocking_fd().unwrap());
    let stderr = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut text);
        text
    });

    // Bound (the kernel takes connections into the backlog) but not yet announced: the
    // announcement waits for room in the pipe.
    wait_until_bound(port);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // Make room: the queued announcement is written; pachgate drains (it need not wait for
    // the line) and waits for it before it exits.
    let mut reader = std::fs::File::from(pending.into_blocking_fd().unwrap());
    let stdout = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        bytes
    });
    let mut status = None;
    for _ in 0..200 {
        status = child.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let status = status.unwrap_or_else(|| child.wait().unwrap());
    let stderr = stderr.join().unwrap();
    assert!(
        status.success(),
        "pachgate did not drain and exit 0 ({status:?}); stderr:\n{stderr}"
    );
    assert!(stderr.contains("draining"), "{stderr}");
    let stdout = String::from_utf8_lossy(&stdout.join().unwrap()[filled..]).into_owned();
    assert!(
        stdout.contains(&format!("listening on 127.0.0.1:{port}")),
        "{stdout}"
    );
}

/// stdout closed under pachgate (the log collector gone: writes fail with EPIPE) does not
/// stop it: its listener announcements are written best effort, not with a `println!` that
/// panics, and it goes on serving until told to stop.
#[tokio::test]
async fn a_closed_stdout_does_not_stop_pachgate() {
    let (stdout, reader) = tokio::net::unix::pipe::pipe().unwrap();
    drop(reader);
    let (_dir, port, mut child) = serve_on_a_plain_listener(stdout.into_blocking_fd().unwrap());
    wait_until_bound(port);
    // Past the announcement: still running, and serving.
    std::thread::sleep(Duration::from_millis(300));
    let early = child.try_wait().unwrap();
    let answer = http_code(&[], &format!("http://127.0.0.1:{port}/nothing-here"));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    use std::io::Read;
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    assert!(
        early.is_none(),
        "pachgate ended ({early:?}); stderr:\n{stderr}"
    );
    assert_eq!(answer, "404", "{stderr}");
    assert!(status.success(), "{status:?}; stderr:\n{stderr}");
}

/// `pachgate serve` with one plaintext listener on a free port and a gRPC route to an
/// address nobody serves (enough to watch its life cycle), its stdout `stdout`, its stderr
/// piped; the config's directory (kept while it runs), the port and the process.
fn serve_on_a_plain_listener(
    stdout: std::os::fd::OwnedFd,
) -> (tempfile::TempDir, u16, std::process::Child) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pachgate.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\nhttp = \"127.0.0.1:{port}\"\nhttp_mode = \"serve\"\n\n\
             [upstreams.pachd]\nendpoints = [\"127.0.0.1:1\"]\nprotocol = \"h2c\"\n\n\
             [[routes]]\nname = \"pachd\"\nmatch = {{ grpc = true }}\nupstream = \"pachd\"\n"
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("PACHGATE_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (dir, port, child)
}

/// Waits (up to 30 s) until 127.0.0.1:`port` takes connections: bound, whether or not
/// announced yet.
fn wait_until_bound(port: u16) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "pachgate never bound 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
