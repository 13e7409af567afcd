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
    python(
        "ws_checks.py",
        &["--url", &url, "--ca", ca.to_str().unwrap(), "--idle", "3"],
    );
}
