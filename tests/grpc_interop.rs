//! The official gRPC interop suite through pachgate: Debian's ruby-grpc ships the interop
//! server and client (src/ruby/pb/test). The server runs h2c behind pachgate; the client
//! speaks TLS to pachgate and trusts pachgate's generated CA.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;

const CASES: [&str; 13] = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
];

/// Where ruby-grpc put its interop programs (the gem directory's version varies).
fn interop_dir() -> PathBuf {
    let output = Command::new("ruby")
        .args([
            "-e",
            "print Gem::Specification.find_by_name('grpc').gem_dir",
        ])
        .output()
        .expect("ruby must be installed (the README's test command installs ruby-grpc)");
    assert!(
        output.status.success(),
        "the grpc gem is missing: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let dir = PathBuf::from(String::from_utf8(output.stdout).unwrap()).join("src/ruby/pb/test");
    assert!(
        dir.join("client.rb").is_file(),
        "no interop client in {}",
        dir.display()
    );
    dir
}

/// Starts the interop server (h2c, or TLS with its own test certificates) on loopback.
fn interop_server(dir: &std::path::Path, tls: bool) -> (KillOnDrop, u16) {
    use std::io::{BufRead, BufReader};

    let mut server = Command::new("ruby");
    server
        .arg("-r")
        .arg(repo_path("tests/interop/loopback.rb"))
        .arg(dir.join("server.rb"))
        .args([
            "--port",
            "0",
            "--use_tls",
            if tls { "true" } else { "false" },
        ])
        .stdout(std::process::Stdio::piped());
    let mut child = server.spawn().expect("start the ruby interop server");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let server = KillOnDrop(child);
    // tests/interop/loopback.rb prints the port gRPC core bound.
    let port = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| {
            line.strip_prefix("interop server bound 127.0.0.1:")
                .map(|port| port.parse::<u16>().expect("a port number"))
        })
        .expect("the interop server exited before binding its port");
    // Whatever else the server prints is read and dropped, so it never writes to a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(30),
    );
    (server, port)
}

/// Runs every case with the interop client against pachgate over TLS; returns the failures.
fn run_cases(dir: &std::path::Path, proxy: &Proxy) -> Vec<&'static str> {
    let mut failed = Vec::new();
    for case in CASES {
        let output = Command::new("ruby")
            .arg(dir.join("client.rb"))
            .args([
                "--server_host",
                "localhost",
                "--server_port",
                &proxy.https().port().to_string(),
                "--use_tls",
                "true",
                "--use_test_ca",
                "false",
                "--test_case",
                case,
            ])
            // gRPC core's default roots: pachgate's generated CA instead of the system's.
            .env("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", proxy.ca())
            .output()
            .expect("run the ruby interop client");
        if output.status.success() {
            eprintln!("interop {case}: ok");
        } else {
            eprintln!(
                "interop {case}: FAILED\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            failed.push(case);
        }
    }
    failed
}

/// pachgate with every gRPC call routed to the interop server on `port`, spoken to in
/// `protocol` (`extra`: more keys for its upstream).
fn interop_proxy(port: u16, protocol: &str, extra: &str) -> Proxy {
    TestConfig::new()
        .upstream_with("interop", format!("127.0.0.1:{port}"), protocol, extra)
        .route("grpc", "grpc = true", "interop")
        .start()
}

/// The interop server's TLS as its upstream sees it: verified against `ca`, for the name
/// its certificate (spec/testdata/server1.pem) has, *.test.google.fr.
fn verified_against(ca: &std::path::Path) -> String {
    format!(
        "ca = \"{}\"\nserver_name = \"foo.test.google.fr\"",
        ca.display()
    )
}

#[test]
fn official_interop_cases_pass_through_pachgate_over_tls() {
    let dir = interop_dir();
    let (server, port) = interop_server(&dir, false);
    let proxy = interop_proxy(port, "h2c", "");
    let failed = run_cases(&dir, &proxy);
    drop(server);
    assert!(failed.is_empty(), "interop cases failed: {failed:?}");
}

/// pachd deployed with TLS: pachgate verifies the upstream against the configured CA.
#[test]
fn interop_cases_pass_to_a_tls_upstream_and_a_wrong_ca_is_unavailable() {
    let dir = interop_dir();
    let (server, port) = interop_server(&dir, true);
    let testdata = dir.join("../../spec/testdata");
    let proxy = interop_proxy(port, "h2", &verified_against(&testdata.join("ca.pem")));
    let failed = run_cases(&dir, &proxy);
    assert!(
        failed.is_empty(),
        "interop cases failed over upstream TLS: {failed:?}"
    );

    // Trusting the wrong CA (pachgate's own): the call fails as UNAVAILABLE, saying why.
    let mistrusting = interop_proxy(port, "h2", &verified_against(&proxy.ca()));
    grpc_check(&mistrusting, "tls-upstream-wrong-ca");
    drop(server);
}

/// `pachgate bench grpc` runs its own h2 client (crates/bench/src/h2_calls.rs); here it
/// drives gRPC core (the Ruby interop server over TLS), another h2 implementation than the
/// one pachgate serves with: HPACK tables, flow control on bodies larger than every window,
/// and a non-zero grpc-status counted as a failure.
#[test]
fn bench_client_drives_the_grpc_core_server() {
    let dir = interop_dir();
    let (server, port) = interop_server(&dir, true);
    let testdata = dir.join("../../spec/testdata");
    let target = format!("https://127.0.0.1:{port}");
    let ca = testdata.join("ca.pem");
    let run = |method: &str, size: &str, requests: &str| {
        let output = Command::new(BIN)
            .args(["bench", "grpc", "--target", &target, "--ca"])
            .arg(&ca)
            .args(["--server-name", "foo.test.google.fr", "--method", method])
            .args(["--size", size, "--requests", requests])
            .args(["--connections", "2", "--streams", "8", "--json", "--quiet"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("{e}: {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
        });
        (output.status.success(), report)
    };
    // EmptyCall ignores the request's payload field, so any size is a valid request.
    for (size, requests) in [("16", "2000"), ("1000000", "64")] {
        let (success, report) = run("/grpc.testing.TestService/EmptyCall", size, requests);
        assert!(success, "{report}");
        assert_eq!(
            report["ok"].as_u64(),
            Some(requests.parse().unwrap()),
            "{report}"
        );
        assert!(report["errors"].as_object().unwrap().is_empty(), "{report}");
    }
    let (success, report) = run("/grpc.testing.TestService/Missing", "16", "100");
    assert!(!success, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["errors"]["grpc-status 12"].as_u64(),
        Some(100),
        "{report}"
    );
    drop(server);
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
