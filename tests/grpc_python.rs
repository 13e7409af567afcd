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

/// Starts a server stream through pachgate (tests/clients/grpc_checks.py `upstream-dies`),
/// lets `fail` do something to the stand-in once messages flow, and requires the client's
/// stream to end with an error well before its deadline (`grpc_checks::verify` says which
/// codes count).
fn stream_ends_with_an_error_when(upstream_extra: &str, fail: impl FnOnce(&mut Running)) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut standins = standins();
    let proxy = pachgate(&standin_routes(&standins, upstream_extra), "");
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
    fail(&mut standins);
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = client.wait().unwrap();
    assert!(
        status.success(),
        "the client could not run; it printed {rest:?}"
    );
    let observed = grpc_checks::verify_output("upstream-dies", &rest.join("\n"));
    eprintln!("{observed}");
}

#[test]
fn upstream_dying_mid_stream_ends_the_client_stream_with_an_error() {
    stream_ends_with_an_error_when("", |standins| standins.kill());
}

#[test]
fn upstream_gone_silent_is_found_by_keepalive_and_its_streams_fail() {
    // SIGSTOP: the socket stays open and the kernel still acknowledges bytes, but no PING is
    // answered. Without the keepalive timeout the stream would wait for its 60 s deadline.
    // 5 s is the shortest interval allowed (pachd refuses pings more often).
    stream_ends_with_an_error_when(
        "h2_keepalive_interval = \"5s\"\nh2_keepalive_timeout = \"1s\"",
        |standins| standins.signal("STOP"),
    );
}

#[test]
fn deadline_expiring_mid_stream_is_deadline_exceeded() {
    run_check("deadline", "");
}

/// limits.idle_timeout closes a client connection that carries no call (with GOAWAY, so
/// grpcio reconnects for its next call) and never a call in flight, however quiet.
#[test]
fn idle_connections_close_and_quiet_streams_do_not() {
    use std::io::{BufRead, BufReader};

    let standins = standins();
    let proxy = pachgate_with_limits(
        &standins,
        "idle_timeout = \"2s\"",
        "admin = \"127.0.0.1:0\"",
    );
    let admin = proxy.running.address("admin");
    // curl, not the metrics parser: this is read while the stream still runs.
    let idle_closes = || {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "1", &format!("http://{admin}/metrics")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix("pachgate_idle_connections_closed_total "))
            .unwrap_or_else(|| panic!("no idle close counter in {text}"))
            .trim()
            .to_string()
    };
    let mut client = std::process::Command::new("python3")
        .arg(repo_path("tests/clients/grpc_checks.py"))
        .args(["--target", &proxy.target(), "--ca"])
        .arg(proxy.ca())
        .arg("idle-timeout")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "first message");
    // 2.5 s into the stream, past the idle timeout: the quiet stream holds its connection.
    assert_eq!(idle_closes(), "0");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        client.wait().unwrap().success(),
        "the client could not run: {rest:?}"
    );
    grpc_checks::verify_output("idle-timeout", &rest.join("\n"));
    // Then the one connection, closed once, while the channel sat without a call.
    assert_eq!(idle_closes(), "1");
}

/// pachgate's idle GOAWAY still admits streams until the client answers its PING; a stream
/// opened in that window runs to its end, though it outlasts the idle and keepalive
/// timeouts that would otherwise close the connection (tests/clients/h2_goaway_race.py).
#[test]
fn a_stream_opened_as_the_idle_goaway_leaves_runs_to_its_end() {
    let standins = standins();
    let proxy = pachgate_with_limits(
        &standins,
        "idle_timeout = \"1s\"\nh2_keepalive_timeout = \"1s\"",
        "",
    );
    let port = proxy.https().port().to_string();
    let ca = proxy.ca();
    let output = python(
        "h2_goaway_race.py",
        &["--port", &port, "--ca", ca.to_str().unwrap()],
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let observed: serde_json::Value = serde_json::from_str(text.lines().last().unwrap_or(""))
        .expect("h2_goaway_race.py prints JSON last");
    assert_eq!(observed["alpn"], "h2", "{observed}");
    let goaways = observed["goaways"].as_array().unwrap();
    assert!(
        goaways.first().and_then(|v| v.as_u64()) >= Some(1),
        "the first GOAWAY must admit new streams: {observed}"
    );
    assert_eq!(observed["opened"], true, "{observed}");
    assert_eq!(observed["reset"], serde_json::Value::Null, "{observed}");
    assert_eq!(observed["closed_early"], false, "{observed}");
    assert_eq!(
        observed["messages"], 3,
        "every message of the late stream: {observed}"
    );
    assert_eq!(observed["grpc_status"], "0", "{observed}");
}

#[test]
fn thousands_of_concurrent_calls_each_get_their_own_answer() {
    // One worker: its upstream connection carries every call, so bursts fill the write
    // batches that streams hand to the upstream themselves.
    run_check("many-concurrent", "");
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

#[test]
fn rolling_upstream_restart_loses_no_call() {
    use std::process::Command;
    use std::time::Duration;

    let replica = |port: u16| {
        let mut command = Command::new("python3");
        command
            .arg(repo_path("tests/clients/grpc_backend.py"))
            .args(["--port", &port.to_string()]);
        start(command, 1)
    };
    let mut old = replica(0);
    let address = old.address("grpc-backend");
    let proxy = pachgate_before_grpc(address, "");
    // Calls on a kept connection and on a new one each round, before, during and after.
    let calls = start_call_loop(&proxy.target(), &proxy.ca(), 6, &[]);
    std::thread::sleep(Duration::from_millis(1500));
    // The new replica takes the same address; the old one leaves with a GOAWAY. pachgate's
    // connection to it ends, and the next call opens one to the new replica.
    let new = replica(address.port());
    std::thread::sleep(Duration::from_millis(300));
    // A slow call keeps pachgate's connection to the old replica open after its GOAWAY, so
    // the calls that follow find that connection still there, refused: each must go out on
    // a new connection (to the new replica) instead of failing.
    let slow = Command::new("python3")
        .args(["-c", SLOW_CALL, &proxy.target()])
        .arg(proxy.ca())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    old.signal("TERM");
    let old_served = served(old.stdout_until("served", Duration::from_secs(15)));
    assert!(old.wait_exit(Duration::from_secs(10)).is_some());

    let slow = slow.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&slow.stdout).trim(),
        "OK",
        "the slow call on the old replica"
    );
    // grpc-core's server (this Python replica) cancels a stream that reached it after its
    // shutdown began but before pachgate read its GOAWAY: accepted (no REFUSED_STREAM, an id
    // the GOAWAY covers), so no proxy may send it again — it may have run. pachd (grpc-go)
    // closes that window with its two-GOAWAY graceful stop; this stand-in does not, so one
    // such CANCELLED is tolerated here and nothing else (streams refused unprocessed, and
    // connections that closed before the replica spoke, are resent: see request_resend.rs
    // and upstream_pods.rs for the rolling restart done with readiness first).
    let summary = call_loop_summary(calls);
    let failed = summary["failed"].as_u64().unwrap();
    let only_the_race = summary["errors"].as_array().is_some_and(|errors| {
        errors
            .iter()
            .all(|e| e == "StatusCode.CANCELLED: CANCELLED")
    });
    assert!(
        failed == 0 || (failed == 1 && only_the_race),
        "calls failed across the restart: {summary}"
    );
    assert!(summary["ok"].as_u64() > Some(0), "{summary}");
    new.signal("TERM");
    let new_served = served(new.stdout_until("served", Duration::from_secs(15)));
    assert!(old_served > 0, "the old replica answered nothing");
    assert!(new_served > 0, "no call reached the new replica: {summary}");
    // Every successful call was answered by one of the replicas (a cancelled one may have
    // been counted by the old replica before its cancellation reached it).
    let ok = summary["ok"].as_u64().unwrap();
    assert!(
        (ok..=ok + failed).contains(&(old_served + new_served)),
        "replicas served {old_served} + {new_served}, calls ok {ok}: {summary}"
    );
}

/// One call to grpc_backend.py's slow method through pachgate: `python3 -c SLOW_CALL TARGET CA`
/// prints `OK`, or the status and details it failed with.
const SLOW_CALL: &str = "import sys, grpc\n\
ch = grpc.secure_channel(sys.argv[1], grpc.ssl_channel_credentials(open(sys.argv[2], 'rb').read()))\n\
try:\n    ch.unary_unary('/pachgate.test.Slow/Wait')(b'', timeout=20)\n    print('OK')\n\
except grpc.RpcError as e:\n    print(e.code().name, e.details())\n";

/// "served N" from a grpc_backend.py's last lines.
fn served(lines: Vec<String>) -> u64 {
    let last = lines.last().expect("a line");
    last.trim_start_matches("served ")
        .trim()
        .parse()
        .expect("served N")
}

/// pachgate's own upstream h2 client against an upstream that keeps a stream limit of 2,
/// sends and takes 40 KB header blocks (CONTINUATION), and on some methods breaks the
/// protocol: calls queue under the limit instead of being refused, big headers arrive whole,
/// each violation fails only its own call (or its connection) with the right status, and the
/// calls after it are served (tests/clients/h2_upstream.py). The last violation floods PINGs
/// and stops reading: pachgate must end that connection (UNAVAILABLE) rather than queue
/// acknowledgements until the client's deadline.
#[test]
fn an_upstream_with_a_stream_limit_big_headers_and_bad_frames_is_handled() {
    use std::process::Command;

    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/clients/h2_upstream.py"))
        .arg("serve");
    let upstream = start(command, 1);
    let address = upstream.address("odd-upstream");
    let proxy = pachgate_before_grpc(address, "");
    let target = proxy.target();
    let ca = proxy.ca();
    let output = python(
        "h2_upstream.py",
        &["check", "--target", &target, "--ca", ca.to_str().unwrap()],
    );
    let observed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("h2_upstream.py check prints JSON");
    // Every round of Slow calls, before and after each violation, is served: each call its
    // own message back, none past the upstream's limit of 2 streams (they queue instead).
    let rounds = observed["rounds"].as_object().unwrap();
    assert_eq!(rounds.len(), 1 + 2 + 1 + 5, "{observed}");
    for (why, calls) in rounds {
        for (index, call) in calls.as_array().unwrap().iter().enumerate() {
            assert_eq!(call["code"], "OK", "{why}: call {index}: {call}");
            assert_eq!(call["reply"], format!("m{index}"), "{why}: {call}");
            assert_eq!(
                call["over_limit"], "0",
                "{why}: opened past the limit: {call}"
            );
            assert!(call["most_open"].as_u64().unwrap() <= 2, "{why}: {call}");
        }
    }
    assert_eq!(
        rounds["under the stream limit"].as_array().unwrap().len(),
        12
    );
    // 40 KB header blocks both ways (CONTINUATION), whole.
    let big = &observed["big_headers"];
    assert_eq!(big["response_header_length"], big["sent"], "{big}");
    assert_eq!(big["response_header_letters"], "b", "{big}");
    assert_eq!(
        big["request_header_length_seen"],
        big["sent"].to_string(),
        "{big}"
    );
    // Refused unprocessed: sent again, whole, and the client never knows.
    for name in ["Refuse", "GoAway"] {
        assert_eq!(
            observed["resent"][name],
            serde_json::json!({
                "code": "OK",
                "reply": format!("sent twice, answered once: {name}"),
                "arrivals": "2",
            }),
            "{name}"
        );
    }
    // Over the 64 KiB resend limit the body is not kept: that refusal fails.
    assert_eq!(
        observed["refused_100k"]["code"], "UNAVAILABLE",
        "{observed}"
    );
    // Each violation fails its own call (or connection) with its status.
    for (name, code) in [
        ("Uppercase", "UNAVAILABLE"),
        ("DataFirst", "UNAVAILABLE"),
        ("ResetMid", "INTERNAL"),
        ("Push", "UNAVAILABLE"),
        ("PingFlood", "UNAVAILABLE"),
    ] {
        assert_eq!(
            observed["violations"][name]["code"], code,
            "{name}: {observed}"
        );
    }
}

/// An h2c upstream address where something accepts TCP and never speaks (here: a listener
/// that never accepts; the kernel completes the handshake). Its calls fail UNAVAILABLE once
/// the upstream's SETTINGS are overdue (`connect_timeout`), well inside the client's 20 s
/// deadline, instead of waiting for keepalive (30 s + 20 s by default).
#[test]
fn an_upstream_that_accepts_and_says_nothing_is_unavailable() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    let proxy = pachgate_before_grpc(address, "connect_timeout = \"1s\"");
    grpc_check(&proxy, "unavailable");
    drop(silent);
}
