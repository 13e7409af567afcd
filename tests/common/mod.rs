//! Shared plumbing for the end-to-end tests: start the `pachgate` binary and the stand-ins as
//! real processes on loopback, learn their ports from their "listening on" lines, and run
//! the external clients (Python grpcio / websockets, Ruby's gRPC interop client, curl).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

mod config;
pub mod grpc_checks;

pub use config::TestConfig;

pub const BIN: &str = env!("CARGO_BIN_EXE_pachgate");

/// A child process that is killed when the test ends, pass or fail.
pub struct Running {
    child: Child,
    pub addresses: Vec<(String, SocketAddr)>,
    stderr_lines: mpsc::Receiver<String>,
    stdout_lines: mpsc::Receiver<String>,
}

impl Running {
    pub fn address(&self, what: &str) -> SocketAddr {
        self.addresses
            .iter()
            .find(|(name, _)| name == what)
            .map(|(_, addr)| *addr)
            .unwrap_or_else(|| panic!("no {what} listener in {:?}", self.addresses))
    }

    /// Stdout lines after the listeners, until one contains `needle` (panics after `within`).
    pub fn stdout_until(&self, needle: &str, within: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no stdout line with {needle:?}; saw {seen:#?}");
    }

    /// Sends a signal (`TERM`, `INT`) to the process.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `within` for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Kills the process now (for tests of a peer dying mid-stream).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The stdout lines (after the listeners) written so far, without waiting.
    pub fn stdout_lines_now(&self) -> Vec<String> {
        self.stdout_lines.try_iter().collect()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_so_far(&self) -> String {
        let mut text = String::new();
        while let Ok(line) = self.stderr_lines.try_recv() {
            text.push_str(&line);
            text.push('\n');
        }
        text
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` and waits until it printed `expected` "… listening on ADDR" lines.
pub fn start(mut command: Command, expected: usize) -> Running {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (err_tx, err_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[child] {line}");
            let _ = err_tx.send(line);
        }
    });
    let mut addresses = Vec::new();
    while addresses.len() < expected {
        let line = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let mut text = String::new();
                while let Ok(l) = err_rx.try_recv() {
                    text.push_str(&l);
                    text.push('\n');
                }
                panic!("process did not report its listeners; stderr:\n{text}");
            }
        };
        // "pachgate: https listening on 127.0.0.1:1234"
        if let Some((head, addr)) = line.split_once(" listening on ") {
            let name = head.trim_start_matches("pachgate: ").to_string();
            addresses.push((name, addr.trim().parse().expect("address")));
        }
    }
    Running {
        child,
        addresses,
        stderr_lines: err_rx,
        stdout_lines: rx,
    }
}

/// The stand-in pachd (h2c gRPC) and console (HTTP/1.1 + websocket).
pub fn standins() -> Running {
    standins_with(&[])
}

/// The stand-ins with extra flags (`--auth-inactive`, `--enforce-auth`, `--pachyderm-http`).
/// `--pachyderm-http` adds three listeners: standin-pachd-http, standin-dex, standin-oidc.
pub fn standins_with(args: &[&str]) -> Running {
    let mut command = Command::new(BIN);
    command.arg("standins").args(args);
    let mut listeners = 2;
    if args.contains(&"--pachyderm-http") {
        listeners += 3;
    }
    start(command, listeners)
}

pub struct Proxy {
    pub running: Running,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    pub fn https(&self) -> SocketAddr {
        self.running.address("https")
    }
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }
    /// `localhost:PORT`, the name the generated certificate carries.
    pub fn target(&self) -> String {
        format!("localhost:{}", self.https().port())
    }
}

/// Starts pachgate with a self-signed certificate and the given upstreams/routes TOML
/// appended to a TLS listener section. `extra_listen` adds keys to `[listen]`.
pub fn pachgate(body: &str, extra_listen: &str) -> Proxy {
    let config = format!(
        "[listen]\nhttps = \"127.0.0.1:0\"\n{extra_listen}\n\n[tls]\nself_signed = true\nself_signed_dir = \"certs\"\nhosts = [\"localhost\", \"127.0.0.1\"]\n\n{body}"
    );
    pachgate_file(&config, extra_listen)
}

/// Starts pachgate with one worker on a whole config file's text, whose `[listen]` has the
/// keys `extra_listen` (each `127.0.0.1:0` in them is one more listener to wait for).
pub(crate) fn pachgate_file(config: &str, extra_listen: &str) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pachgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(BIN);
    command.args(["serve", "--config"]).arg(&path);
    // One worker here, two in `pachgate_config` (both accepting on the same sockets), so
    // both shapes are exercised.
    command.env("PACHGATE_WORKER_THREADS", "1");
    if let Ok(level) = std::env::var("PACHGATE_TEST_LOG") {
        command.env("PACHGATE_LOG", level);
    }
    let expected = 1 + extra_listen.matches("127.0.0.1:0").count();
    let running = start(command, expected);
    Proxy { running, dir }
}

/// Starts pachgate with a whole config file's text; `certs/` in its directory is where a
/// self-signed config should keep its CA.
pub fn pachgate_config(config: &str, listeners: usize) -> Proxy {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pachgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = Command::new(BIN);
    command.args(["serve", "--config"]).arg(&path);
    command.env("PACHGATE_WORKER_THREADS", "2");
    let running = start(command, listeners);
    Proxy { running, dir }
}

/// pachgate in front of the stand-ins (`standin_routes`) with these `[limits]` lines.
pub fn pachgate_with_limits(standins: &Running, limits: &str, extra_listen: &str) -> Proxy {
    pachgate(
        &format!("[limits]\n{limits}\n\n{}", standin_routes(standins, "")),
        extra_listen,
    )
}

/// Upstreams and routes for the stand-ins: gRPC to pachd, everything else to console.
pub fn standin_routes(standins: &Running, upstream_extra: &str) -> String {
    pachgate_standins::routes_toml(
        &standins.address("standin-pachd").to_string(),
        &standins.address("standin-console").to_string(),
        upstream_extra,
    )
}

/// pachgate in front of one h2c gRPC upstream at `address` (named pachd; `upstream_extra`
/// adds lines to its section), every gRPC call routed to it.
pub fn pachgate_before_grpc(address: std::net::SocketAddr, upstream_extra: &str) -> Proxy {
    TestConfig::new()
        .upstream_with("pachd", address, "h2c", upstream_extra)
        .route("grpc", "grpc = true", "pachd")
        .start()
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs a Python client script from tests/clients; returns its output, panicking with both
/// streams if it failed.
pub fn python(script: &str, args: &[&str]) -> Output {
    let output = Command::new("python3")
        .arg(repo_path(&format!("tests/clients/{script}")))
        .args(args)
        .output()
        .expect("python3 must be installed (the README's test command installs it)");
    assert!(
        output.status.success(),
        "{script} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Runs one check of tests/clients/grpc_checks.py (grpcio) against pachgate over TLS and
/// asserts what it observed (`grpc_checks::verify`); returns the observations.
pub fn grpc_check(proxy: &Proxy, check: &str) -> serde_json::Value {
    grpc_check_at(&proxy.target(), &proxy.ca(), check)
}

/// The same against any target, trusting `ca`.
pub fn grpc_check_at(target: &str, ca: &Path, check: &str) -> serde_json::Value {
    let output = python(
        "grpc_checks.py",
        &["--target", target, "--ca", ca.to_str().unwrap(), check],
    );
    grpc_checks::verify_output(check, &String::from_utf8_lossy(&output.stdout))
}

/// A loopback port that was free a moment ago, for peers that cannot report their own.
/// Starts a steady loop of gRPC calls (tests/clients/grpc_rotation.py) for `seconds`: a kept
/// connection and a new one each round. `extra` adds flags (`--drain`).
pub fn start_call_loop(target: &str, ca: &Path, seconds: u32, extra: &[&str]) -> Child {
    Command::new("python3")
        .arg(repo_path("tests/clients/grpc_rotation.py"))
        .args([
            "--target",
            target,
            "--seconds",
            &seconds.to_string(),
            "--ca",
        ])
        .arg(ca)
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs grpc_rotation.py")
}

/// Waits for a call loop to end and returns its summary, whatever the calls' outcome.
pub fn call_loop_summary(call_loop: Child) -> serde_json::Value {
    let output = call_loop.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the call loop could not run: {text}"
    );
    serde_json::from_str(text.trim()).expect("grpc_rotation.py prints JSON")
}

/// Waits for a call loop to end; panics with `what` and its summary if a call failed or
/// none was answered. Returns the summary (`ok`, `failed`, `new_connections`, `refused`,
/// `errors`).
pub fn finish_call_loop(call_loop: Child, what: &str) -> serde_json::Value {
    let summary = call_loop_summary(call_loop);
    assert_eq!(summary["failed"], 0, "{what}: {summary}");
    assert!(
        summary["ok"].as_u64() > Some(0),
        "{what}: no call answered: {summary}"
    );
    summary
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts TCP connections on `addr`.
pub fn wait_for_port(addr: SocketAddr, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on {addr}");
}

/// `/metrics` at an admin address, parsed by prometheus-client's own OpenMetrics parser
/// (tests/clients/observe.py): `"name{label=value,...}"` → value, labels sorted.
pub fn scrape_metrics(admin: SocketAddr) -> serde_json::Value {
    let output = python(
        "observe.py",
        &["metrics", "--url", &format!("http://{admin}/metrics")],
    );
    serde_json::from_slice(&output.stdout).expect("observe.py prints JSON")
}

/// The HTTP status curl got for `url` (`"000"`: no answer); `curl_args` go before the URL.
pub fn http_code(curl_args: &[&str], url: &str) -> String {
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(curl_args)
        .arg(url)
        .output()
        .expect("curl must be installed (the README's test command installs it)");
    String::from_utf8(output.stdout).unwrap()
}

/// pachgate with the 2.x preset as shipped (config/pachyderm.toml from `[auth.pachyderm]` on:
/// its gate, upstreams and routes, in order), each backend pointed at the stand-in playing it
/// (pachd gRPC, S3, OIDC callback, dex, pachd's HTTP server, console); a backend without a
/// stand-in in this run goes to the console. `edit` may change the preset's text first.
pub fn pachgate_with_preset(standins: &Running, edit: impl Fn(String) -> String) -> Proxy {
    let preset = std::fs::read_to_string(repo_path("config/pachyderm.toml")).unwrap();
    let from = preset
        .find("[auth.pachyderm]")
        .expect("the preset has a gate");
    let console = standins.address("standin-console");
    let playing = |name: &str| {
        standins
            .addresses
            .iter()
            .find(|(n, _)| n == name)
            .map_or(console, |(_, address)| *address)
            .to_string()
    };
    let mut body = edit(preset[from..].to_string());
    for (backend, standin) in [
        ("pachgate-pachd-backend:1650", "standin-pachd"),
        ("pachgate-pachd-backend:1600", "standin-s3"),
        ("pachgate-pachd-backend:1657", "standin-oidc"),
        ("pachgate-pachd-backend:1658", "standin-dex"),
        ("pachgate-pachd-backend:1659", "standin-pachd-http"),
        ("pachgate-console-backend:4000", "standin-console"),
    ] {
        body = body.replace(backend, &playing(standin));
    }
    assert!(
        !body.contains("pachgate-pachd-backend") && !body.contains("pachgate-console-backend"),
        "{body}"
    );
    pachgate(&body, "")
}

/// A TLS client configuration that trusts the CA at `ca` (pachgate's generated one) and
/// offers `alpn` (`b"h2"`, `b"http/1.1"`).
pub fn client_tls(ca: &Path, alpn: &[u8]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("the CA file reads") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a usable CA");
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    std::sync::Arc::new(tls)
}
