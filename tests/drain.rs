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
