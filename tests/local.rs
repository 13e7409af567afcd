//! `pachgate local` in front of a stand-in pachd on pachctl port-forward's default port, and
//! in front of small stand-in listeners for the other forwards (S3, Dex, OIDC, console).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
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
        stderr.contains(&format!("nothing answers on {closed} (the console;"))
            && stderr.contains("pachctl port-forward"),
        "{stderr}"
    );

    // And gRPC goes through to the stand-in pachd on 30650, trusting the printed CA.
    grpc_check_at(&format!("localhost:{port}"), &ca, "pachd-methods");
    drop(standins);
}

/// A port-forward stand-in: answers every request with its own name, then closes.
fn named_listener(name: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                // Read the request head (pachgate local's start-up check sends nothing).
                let mut head = Vec::new();
                let mut buffer = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buffer[..n]),
                    }
                }
                let body = format!("this is {name}\n");
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    address
}

#[test]
fn local_routes_every_forward_and_names_each_missing_one() {
    let s3 = named_listener("s3");
    let dex = named_listener("dex");
    let console = named_listener("console");
    // pachd and the OIDC callback are not forwarded: ports held bound but not listening,
    // so connections are refused and no other test's listener can take them meanwhile.
    let held = || {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket
    };
    let (pachd_socket, oidc_socket) = (held(), held());
    let pachd = pachd_socket.local_addr().unwrap().to_string();
    let oidc = oidc_socket.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut local = Command::new(BIN);
    local
        .args(["local", "--listen", "127.0.0.1:0"])
        .args(["--pachd", &pachd, "--s3", &s3, "--dex", &dex])
        .args(["--oidc", &oidc, "--console", &console, "--cert-dir"])
        .arg(dir.path());
    let local = start(local, 1);
    let port = local.address("https").port();
    local.stdout_until("Press Ctrl-C", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));

    // One warning per missing forward, naming its address and what it is for; none for
    // the forwards that answer.
    let stderr = local.stderr_so_far();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("nothing answers on"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(
        warnings.iter().any(
            |w| w.contains(&format!("nothing answers on {pachd} (pachd gRPC"))
                && w.contains("port 30650")
        ),
        "{stderr}"
    );
    assert!(
        warnings.iter().any(|w| w.contains(&format!(
            "nothing answers on {oidc} (the OIDC login callback"
        )) && w.contains("port 30657")),
        "{stderr}"
    );

    let ca = dir.path().join("ca.crt");
    let get = |path: &str, headers: &[&str]| {
        let mut command = Command::new("curl");
        command
            .args(["-sS", "--max-time", "10", "--cacert"])
            .arg(&ca);
        for header in headers {
            command.args(["-H", header]);
        }
        let output = command
            .args(["-w", "\n%{http_code}"])
            .arg(format!("https://localhost:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    // S3 by its signature, as the 2.x preset routes it (SigV4 and V2).
    let sigv4 = "Authorization: AWS4-HMAC-SHA256 Credential=x/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00";
    assert_eq!(get("/master.repo/file", &[sigv4]), "this is s3\n\n200");
    assert_eq!(
        get("/", &["Authorization: AWS key:sig"]),
        "this is s3\n\n200"
    );
    assert_eq!(
        get("/dex/.well-known/openid-configuration", &[]),
        "this is dex\n\n200"
    );
    assert_eq!(get("/lineage", &[]), "this is console\n\n200");
    // The OIDC callback is routed to its (missing) forward, not to the console.
    let callback = get("/authorization-code/callback?code=x", &[]);
    assert!(callback.ends_with("\n503"), "{callback}");
    drop((pachd_socket, oidc_socket));
}

/// Without a home directory there is no default place for the CA: pachgate says to give
/// one, rather than keeping it in (or reusing one from) a directory every user can write.
#[test]
fn local_without_a_home_asks_for_a_cert_dir() {
    let output = Command::new(BIN)
        .args(["local", "--listen", "127.0.0.1:0"])
        .env_remove("HOME")
        .env_remove("XDG_CONFIG_HOME")
        .output()
        .unwrap();
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--cert-dir"), "{stderr}");
}
