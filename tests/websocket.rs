//! Websockets through pachgate: the Python `websockets` client over wss:// to the stand-in
//! console's echo, with timeouts set far below the idle period the session must survive.

mod common;

use common::*;

#[test]
fn websocket_echo_survives_idle_and_keeps_frames_intact() {
    let standins = standins();
    let proxy = pachgate(
        &format!(
            "[limits]\nh1_header_read_timeout = \"1s\"\nh2_keepalive_interval = \"1s\"\nh2_keepalive_timeout = \"1s\"\nidle_timeout = \"1s\"\n{}",
            standin_routes(&standins, "response_timeout = \"1s\"")
        ),
        "",
    );
    let url = format!("wss://{}/ws", proxy.target());
    let ca = proxy.ca();
    let output = python(
        "ws_checks.py",
        &["--url", &url, "--ca", ca.to_str().unwrap(), "--idle", "3"],
    );
    let observed: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("ws_checks.py prints JSON");
    assert_eq!(
        observed,
        serde_json::json!({
            "text_echo": "hello, console",
            "binary_echo": {"bytes": 1024, "first_difference": null},
            "big_echo": {"bytes": 16 * 1024 * 1024, "first_difference": null},
            "pong_within_10s": true,
            "echo_after_idle": "still here",
            "close_received": {"code": 4001, "reason": "done testing"},
        })
    );
}
