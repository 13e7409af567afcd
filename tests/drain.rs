//! Graceful drain on SIGTERM, with a server stream, a websocket and a client loop in flight:
//! /readyz fails at once, the listener closes, the stream finishes whole, the loop's accepted
//! calls all succeed, the websocket gets a close frame 1001 at the deadline, and the process
//! exits 0.

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
    assert!(
        status.success(),
        "the in-flight stream was cut by the drain"
    );
    let summary = finish_call_loop(client_loop, "an accepted call failed during the drain");
    assert_eq!(summary["refused"], true, "{summary}");

    let status = websocket.wait().unwrap();
    let closed_line = websocket_lines
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    assert!(
        status.success() && closed_line.contains("closed with 1001"),
        "the websocket did not get a 1001 close: {closed_line}"
    );
    let exit = proxy
        .running
        .wait_exit(Duration::from_secs(10))
        .expect("pachgate did not exit after draining");
    assert!(exit.success(), "exit status {exit:?}");
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("drain_timeout reached"), "{log}");
}
