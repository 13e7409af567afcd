//! `pachgate local` in front of a stand-in pachd on pachctl port-forward's default port.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

#[test]
fn local_prints_the_pachctl_lines_and_proxies_to_the_default_pachd_port() {
    let mut standins = Command::new(BIN);
    standins.args(["standins", "--pachd", "127.0.0.1:30650"]);
    let standins = start(standins, 2);
    let dir = tempfile::tempdir().unwrap();
    let closed = format!("127.0.0.1:{}", free_port());
    let mut local = Command::new(BIN);
    local
        .args([
            "local",
            "--listen",
            "127.0.0.1:0",
            "--console",
            &closed,
            "--cert-dir",
        ])
        .arg(dir.path());
    let local = start(local, 1);
    let port = local.address("https").port();
    let printed = local
        .stdout_until("Press Ctrl-C", Duration::from_secs(10))
        .join("\n");
    let ca = dir.path().join("ca.crt");
    assert!(
        printed.contains(&format!("pachctl connect grpcs://localhost:{port}")),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "pachctl config update context --server-cas \"$(base64 -w0 < {})\"",
            ca.display()
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!("https://localhost:{port}/")),
        "{printed}"
    );

    // The console port-forward is not running: said plainly, with the command to start it.
    std::thread::sleep(Duration::from_millis(200));
    let stderr = local.stderr_so_far();
    assert!(
        stderr.contains(&format!("nothing answers on {closed} (console)"))
            && stderr.contains("pachctl port-forward"),
        "{stderr}"
    );

    // And gRPC goes through to the stand-in pachd on 30650, trusting the printed CA.
    grpc_check_at(&format!("localhost:{port}"), &ca, "pachd-methods");
    drop(standins);
}
