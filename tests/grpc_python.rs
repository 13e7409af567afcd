//! gRPC through pachgate over TLS with the official Python implementation (grpcio) as the
//! client and a tonic server (the stand-in pachd) behind it.

mod common;

use common::*;

fn run_check(check: &str, upstream_extra: &str) {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, upstream_extra), "");
    grpc_check(&proxy, check);
}

#[test]
fn pachd_methods_reach_the_stand_in() {
    run_check("pachd-methods", "");
}

#[test]
fn trailers_and_trailers_only_errors_are_intact() {
    run_check("trailers", "");
}

#[test]
fn client_streaming_reaches_the_upstream_whole() {
    run_check("client-stream", "");
}

#[test]
fn client_cancellation_reaches_the_upstream() {
    run_check("cancel", "");
}

#[test]
fn upstream_dying_mid_stream_ends_the_client_stream_with_an_error() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let mut client = Command::new("python3")
        .arg(repo_path("tests/clients/grpc_checks.py"))
        .args(["--target", &proxy.target(), "--ca"])
        .arg(proxy.ca())
        .arg("upstream-dies")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(first, "streaming");
    standins.kill();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = client.wait().unwrap();
    assert!(status.success(), "client check failed; it printed {rest:?}");
    eprintln!("{rest:?}");
}

#[test]
fn deadline_expiring_mid_stream_is_deadline_exceeded() {
    run_check("deadline", "");
}

#[test]
fn sixty_four_mib_each_way() {
    run_check("large", "");
}

#[test]
fn hundred_thousand_messages_on_one_bidi_stream() {
    run_check("bidi-100k", "");
}

#[test]
fn slow_upstream_gets_deadline_exceeded_from_pachgate() {
    // response_timeout bounds the wait for response headers only.
    run_check("upstream-timeout", "response_timeout = \"1s\"");
}
