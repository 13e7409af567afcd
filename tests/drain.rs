//! Graceful drain on SIGTERM: /readyz fails at once, the listener closes, a stream in flight
//! finishes whole, and the process exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

#[test]
fn sigterm_drains_in_flight_streams_then_exits_zero() {
    let standins = standins();
    let mut proxy = pachgate(
        &format!(
            "[limits]\ndrain_timeout = \"20s\"\n{}",
            standin_routes(&standins, "")
        ),
        "admin = \"127.0.0.1:0\"",
    );
    let admin = proxy.running.address("admin");
    let readyz = || {
        let output = Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{admin}/readyz"))
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(readyz(), "200");

    let mut client = Command::new("python3")
        .arg(repo_path("tests/clients/grpc_checks.py"))
        .args(["--target", &proxy.target(), "--ca"])
        .arg(proxy.ca())
        .arg("stream-survives-drain")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "streaming");

    proxy.running.signal("TERM");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(readyz(), "503", "readyz still passes while draining");
    let refused = std::net::TcpStream::connect_timeout(&proxy.https(), Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "the listener still accepts while draining"
    );

    let status = client.wait().unwrap();
    assert!(
        status.success(),
        "the in-flight stream was cut by the drain"
    );
    let exit = proxy
        .running
        .wait_exit(Duration::from_secs(15))
        .expect("pachgate did not exit after draining");
    assert!(exit.success(), "exit status {exit:?}");
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("drained"), "{log}");
}
