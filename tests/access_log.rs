//! The access log as a container runtime takes it: stdout into a pipe that pachgate does not
//! control. pachctl's `command` metadata and the endpoint used are on the line; a stop on
//! SIGTERM loses no line, even with the pipe stalled and lines queued; and no token — header,
//! cookie, `Authorization` or query — reaches stdout or stderr, even at debug level.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// pachgate with its stdout on a pipe this test reads, optionally only once told to.
struct Gate {
    child: Child,
    dir: tempfile::TempDir,
    https: SocketAddr,
    admin: SocketAddr,
    /// Access lines read from stdout so far (while the pipe is read).
    lines: mpsc::Receiver<String>,
    /// Lets a stalled stdout reader go on.
    resume: Option<mpsc::Sender<()>>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_lines: mpsc::Receiver<String>,
    stderr_reader: Option<JoinHandle<()>>,
    stderr_seen: Vec<String>,
}

/// gRPC (auth = pachyderm) and `/api/` (auth = pachyderm) to the stand-ins, the rest to the
/// console stand-in; JSON access log.
fn gated_config(standins: &Running) -> String {
    let gated = "auth = \"pachyderm\"";
    TestConfig::new()
        .listen("admin = \"127.0.0.1:0\"")
        .section("[log]\naccess = \"json\"")
        .upstream("pachd", standins.address("standin-pachd"), "h2c")
        .upstream("console", standins.address("standin-console"), "http1")
        .section("[auth.pachyderm]\nupstream = \"pachd\"")
        .route_with("pachd-grpc", "grpc = true", "pachd", gated)
        .route_with(
            "pachd-http-api",
            "path_prefix = \"/api/\"",
            "console",
            gated,
        )
        .route("console", "path_prefix = \"/\"", "console")
        .file("127.0.0.1:0")
}

/// What the test does with pachgate's stdout after the listener lines.
#[derive(Clone, Copy, PartialEq)]
enum Stdout {
    Read,
    /// Not read until [`Gate::stop`]: the pipe fills and access lines queue inside pachgate.
    Stalled,
    /// The pipe's reader goes away, as a container's log shim that died: writes fail (EPIPE).
    Closed,
}

impl Gate {
    /// Starts pachgate, its stdout treated as `stdout` says.
    fn start(config: &str, stdout_mode: Stdout, log_level: &str) -> Gate {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pachgate.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .env("PACHGATE_WORKER_THREADS", "2")
            .env("PACHGATE_LOG", log_level)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pachgate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();

        let (address_tx, address_rx) = mpsc::channel();
        let (line_tx, lines) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel::<()>();
        let stdout_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut found = 0;
            let mut line = String::new();
            while found < 2 {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                if let Some((head, addr)) = line.trim_end().split_once(" listening on ") {
                    let name = head.trim_start_matches("pachgate: ").to_string();
                    let _ = address_tx.send((name, addr.trim().to_string()));
                    found += 1;
                }
            }
            match stdout_mode {
                Stdout::Read => {}
                Stdout::Stalled => {
                    let _ = resume_rx.recv();
                }
                Stdout::Closed => return,
            }
            for line in reader.lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (stderr_tx, stderr_lines) = mpsc::channel();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = stderr_tx.send(line);
            }
        });

        let mut addresses = Vec::new();
        while addresses.len() < 2 {
            match address_rx.recv_timeout(Duration::from_secs(30)) {
                Ok(address) => addresses.push(address),
                Err(_) => {
                    let _ = child.kill();
                    panic!("pachgate did not report its listeners");
                }
            }
        }
        let address = |what: &str| -> SocketAddr {
            addresses
                .iter()
                .find(|(name, _)| name == what)
                .unwrap_or_else(|| panic!("no {what} listener in {addresses:?}"))
                .1
                .parse()
                .unwrap()
        };
        Gate {
            https: address("https"),
            admin: address("admin"),
            child,
            dir,
            lines,
            resume: Some(resume_tx),
            stdout_reader: Some(stdout_reader),
            stderr_lines,
            stderr_reader: Some(stderr_reader),
            stderr_seen: Vec::new(),
        }
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https.port())
    }

    /// curl over TLS with this pachgate's CA; returns its stdout (panics if curl failed).
    fn curl(&self, args: &[&str]) -> String {
        let output = self.curl_output(args);
        assert!(output.status.success(), "curl {args:?}: {output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// `count` GETs of `path` with `?n=1..count` appended, in parallel through curl (with
    /// `args` before the URL); how many were answered 200.
    fn parallel_gets(&self, path: &str, count: usize, args: &[&str]) -> usize {
        let url = self.url(&format!("{path}?n=[1-{count}]"));
        let mut all = vec!["--parallel", "-w", "\n%{http_code}\n"];
        all.extend_from_slice(args);
        all.push(&url);
        let codes = self.curl(&all);
        codes.lines().filter(|code| *code == "200").count()
    }

    fn curl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new("curl")
            .args(["-s", "--cacert"])
            .arg(self.ca())
            .args(args)
            .output()
            .expect("curl must be installed")
    }

    /// The access-log line with this request id (waits for it: the log is written by a
    /// thread of its own).
    fn line_with_id(&self, id: &str, seen: &mut Vec<Value>) -> Value {
        self.line_where(&format!("request id {id}"), |r| r["request_id"] == id, seen)
    }

    /// The first access-log line `wanted` accepts (waits for it), described as `what`.
    fn line_where(
        &self,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
        seen: &mut Vec<Value>,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(found) = seen.iter().find(|r| wanted(r)) {
                return found.clone();
            }
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no access line for {what}; saw {seen:#?}"));
            if let Ok(line) = self.lines.recv_timeout(left) {
                seen.push(serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("access line is not JSON ({e}): {line}");
                }));
            }
        }
    }

    fn wait_stderr(&mut self, needle: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr_seen.iter().any(|l| l.contains(needle)) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("no stderr line with {needle:?}"));
            if let Ok(line) = self.stderr_lines.recv_timeout(left) {
                self.stderr_seen.push(line);
            }
        }
    }

    /// SIGTERM; once pachgate says it drained, the stdout pipe is read again. Returns every
    /// stdout line after the listeners and all of stderr, after a clean exit.
    fn stop(mut self) -> (Vec<String>, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // The proxy is done; whatever is not on the pipe yet is in pachgate's queue.
        self.wait_stderr("drained; exiting", Duration::from_secs(30));
        drop(self.resume.take());
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "pachgate did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "pachgate exited with {status}");
        self.stdout_reader.take().unwrap().join().unwrap();
        self.stderr_reader.take().unwrap().join().unwrap();
        let stdout: Vec<String> = self.lines.try_iter().collect();
        let mut stderr = self.stderr_seen.join("\n");
        for line in self.stderr_lines.try_iter() {
            stderr.push('\n');
            stderr.push_str(&line);
        }
        (stdout, stderr)
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's `--data-binary` argument for a gRPC message frame holding an empty message.
fn empty_grpc_frame(dir: &std::path::Path) -> String {
    let path = dir.join("empty.grpc");
    std::fs::write(&path, [0u8; 5]).unwrap();
    format!("@{}", path.display())
}

fn grpc_args<'a>(frame: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--http2",
        "-o",
        "/dev/null",
        "-H",
        "content-type: application/grpc",
        "-H",
        "te: trailers",
        "--data-binary",
    ];
    args.push(frame);
    args.extend_from_slice(extra);
    args
}

#[test]
fn lines_carry_pachctl_command_and_the_endpoint_used() {
    let standins = standins();
    let gate = Gate::start(&gated_config(&standins), Stdout::Read, "info");
    let frame = empty_grpc_frame(gate.dir.path());
    let frame = frame.as_str();
    let echo = gate.url("/pachgate.standin.Echo/Unary");
    let mut seen = Vec::new();

    // pachctl's metadata: a command line, with a tab that must not reach the line.
    gate.curl(&grpc_args(
        frame,
        &[
            "-H",
            "authn-token: demo-token",
            "-H",
            "command: pachctl list repo\t--raw",
            "-H",
            "x-request-id: with-command",
            &echo,
        ],
    ));
    let line = gate.line_with_id("with-command", &mut seen);
    assert_eq!(line["kind"], "grpc", "{line}");
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert_eq!(line["pachctl_command"], "pachctl list repo--raw", "{line}");
    assert_eq!(
        line["upstream"],
        standins.address("standin-pachd").to_string()
    );

    // A long command line is cut at 256 bytes (on a character boundary), marked with "…".
    let long = format!("command: pachctl {}", "ü".repeat(200));
    gate.curl(&grpc_args(
        frame,
        &[
            "-H",
            "authn-token: demo-token",
            "-H",
            &long,
            "-H",
            "x-request-id: long-command",
            &echo,
        ],
    ));
    let line = gate.line_with_id("long-command", &mut seen);
    let logged = line["pachctl_command"].as_str().unwrap();
    assert!(logged.starts_with("pachctl üü"), "{line}");
    assert!(logged.ends_with('…'), "{line}");
    assert!(logged.len() <= 256 + '…'.len_utf8(), "{}", logged.len());

    // Without the metadata there is no field at all (not an empty one).
    gate.curl(&grpc_args(
        frame,
        &[
            "-H",
            "authn-token: demo-token",
            "-H",
            "x-request-id: no-command",
            &echo,
        ],
    ));
    let line = gate.line_with_id("no-command", &mut seen);
    assert_eq!(line["grpc_status"], 0, "{line}");
    assert!(line.get("pachctl_command").is_none(), "{line}");

    // HTTP and a websocket tunnel name the console endpoint they used.
    let console = standins.address("standin-console").to_string();
    gate.curl(&[
        "-o",
        "/dev/null",
        "-H",
        "x-request-id: plain-http",
        &gate.url("/headers"),
    ]);
    let line = gate.line_with_id("plain-http", &mut seen);
    assert_eq!(line["kind"], "http", "{line}");
    assert_eq!(line["upstream"], console, "{line}");

    // curl makes the websocket handshake, gets 101, then leaves: the tunnel's line follows.
    let output = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--http1.1", "--max-time", "2"])
        .arg("--cacert")
        .arg(gate.ca())
        .args([
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "-H",
            "x-request-id: websocket",
            "-w",
            "%{http_code}",
        ])
        .arg(gate.url("/ws"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "101");
    let line = gate.line_with_id("websocket", &mut seen);
    assert_eq!(line["kind"], "websocket", "{line}");
    assert_eq!(line["status"], 101, "{line}");
    assert_eq!(line["upstream"], console, "{line}");
}

/// A request without an `x-request-id` gets one made by pachgate: the upstream receives it
/// (the h2 upstream as a field pachgate encodes into the head itself, HTTP/1.1 and websocket
/// upstreams in the forwarded headers) and the access line reports the same one.
#[test]
fn a_made_request_id_reaches_the_upstream_as_logged() {
    let standins = standins();
    let gate = Gate::start(&gated_config(&standins), Stdout::Read, "info");
    let frame = empty_grpc_frame(gate.dir.path());
    let mut seen = Vec::new();
    let made_id_of = |agent: &str, seen: &mut Vec<Value>| -> String {
        let line = gate.line_where(agent, |r| r["user_agent"] == agent, seen);
        let id = line["request_id"].as_str().unwrap_or_default().to_string();
        assert_eq!(id.len(), 32, "{line}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        id
    };
    let echoed = |headers: &str| -> Vec<String> {
        headers
            .lines()
            .filter_map(|line| line.strip_prefix("x-standin-request-id: "))
            .map(|id| id.trim_end().to_string())
            .collect()
    };

    // gRPC to pachd over h2c: asked to, the stand-in repeats the id it received as response
    // metadata.
    let echo = gate.url("/pachgate.standin.Echo/Unary");
    let echo_call = |agent: &str, extra: &[&str]| {
        let mut args = vec![
            "-D",
            "-",
            "-A",
            agent,
            "-H",
            "x-standin-echo-request-id: 1",
            "-H",
            "authn-token: demo-token",
        ];
        args.extend_from_slice(extra);
        args.push(&echo);
        gate.curl(&grpc_args(&frame, &args))
    };
    let headers = echo_call("made-id-grpc", &[]);
    let logged = made_id_of("made-id-grpc", &mut seen);
    assert_eq!(echoed(&headers), std::slice::from_ref(&logged), "{headers}");

    // A client's invalid id (a space in it) is replaced, not forwarded beside the made one.
    let headers = echo_call("made-id-grpc-replaced", &["-H", "x-request-id: not valid"]);
    let replaced = made_id_of("made-id-grpc-replaced", &mut seen);
    assert_ne!(replaced, logged);
    assert_eq!(echoed(&headers), [replaced], "{headers}");

    // HTTP/1.1 upstream: the console stand-in's header mirror.
    let mirrored = gate.curl(&["-A", "made-id-http", &gate.url("/headers")]);
    let logged = made_id_of("made-id-http", &mut seen);
    let forwarded: Vec<&str> = mirrored
        .lines()
        .filter_map(|line| line.strip_prefix("x-request-id: "))
        .collect();
    assert_eq!(forwarded, [logged.as_str()], "{mirrored}");

    // A websocket tunnel: the console stand-in repeats it in its 101.
    let output = Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--http1.1",
            "--max-time",
            "2",
        ])
        .arg("--cacert")
        .arg(gate.ca())
        .args([
            "-A",
            "made-id-websocket",
            "-H",
            "x-standin-echo-request-id: 1",
            "-H",
            "Connection: Upgrade",
            "-H",
            "Upgrade: websocket",
            "-H",
            "Sec-WebSocket-Version: 13",
            "-H",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ])
        .arg(gate.url("/ws"))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&output.stdout);
    assert!(headers.starts_with("HTTP/1.1 101"), "{headers}");
    let logged = made_id_of("made-id-websocket", &mut seen);
    assert_eq!(echoed(&headers), [logged], "{headers}");
}

/// An unlabelled metric as /metrics says it now.
/// The writer thread writes on a timer, not per line: on an idle proxy a line still shows
/// within a second. And two requests on one connection (curl's `--next` reuses it) with a
/// different user agent and authority each get their own, although the line reuses what it
/// can of the connection's earlier one.
#[test]
fn an_idle_proxy_shows_a_line_within_a_second_with_each_requests_own_fields() {
    let standins = standins();
    let gate = Gate::start(&gated_config(&standins), Stdout::Read, "info");
    let ca = gate.ca();
    let ca = ca.to_str().unwrap();
    let url = gate.url("/headers");
    let other_host = format!("127.0.0.1:{}", gate.https.port());
    std::thread::sleep(Duration::from_millis(500));
    let sent = Instant::now();
    gate.curl(&[
        "-A",
        "first-agent",
        "-H",
        "x-request-id: conn-first",
        &url,
        "--next",
        "-s",
        "--cacert",
        ca,
        "-A",
        "second\"agent",
        "-H",
        &format!("host: {other_host}"),
        "-H",
        "x-request-id: conn-second",
        &url,
    ]);
    let mut seen = Vec::new();
    let first = gate.line_with_id("conn-first", &mut seen);
    let second = gate.line_with_id("conn-second", &mut seen);
    let waited = sent.elapsed();
    assert!(
        waited < Duration::from_secs(1),
        "the lines took {waited:?} to show"
    );
    assert_eq!(
        first["client"], second["client"],
        "one connection: {seen:#?}"
    );
    assert_eq!(first["user_agent"], "first-agent", "{first}");
    assert_eq!(
        first["authority"],
        format!("localhost:{}", gate.https.port())
    );
    assert_eq!(second["user_agent"], "second\"agent", "{second}");
    assert_eq!(second["authority"], other_host, "{second}");
    assert_eq!(second["route"], "console", "{second}");
}

fn metric(admin: SocketAddr, name: &str) -> u64 {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/metrics")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

fn dropped_lines(admin: SocketAddr) -> u64 {
    metric(admin, "pachgate_access_log_dropped_total")
}

#[test]
fn a_graceful_stop_writes_every_queued_line_even_with_the_pipe_stalled() {
    const REQUESTS: usize = 1000;
    let standins = standins();
    // Nobody reads pachgate's stdout until it has drained: the pipe (64 KiB) fills with the
    // first lines and the rest wait in pachgate's buffer when SIGTERM comes.
    let gate = Gate::start(&gated_config(&standins), Stdout::Stalled, "info");
    let args = ["--parallel-max", "16", "-A", "access-log-count"];
    let ok = gate.parallel_gets("/headers", REQUESTS, &args);
    assert_eq!(ok, REQUESTS, "requests answered 200");
    assert_eq!(
        dropped_lines(gate.admin),
        0,
        "lines dropped below the buffer limit"
    );

    let (stdout, _) = gate.stop();
    let mut counted = 0;
    for line in &stdout {
        let record: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if record["user_agent"] == "access-log-count" {
            assert_eq!(record["status"], 200, "{record}");
            counted += 1;
        }
    }
    assert_eq!(counted, REQUESTS, "access lines after SIGTERM");
    assert!(
        stdout.iter().map(|l| l.len() + 1).sum::<usize>() > 128 * 1024,
        "the lines did not outgrow the pipe; the test proves nothing"
    );
}

#[test]
fn no_token_reaches_stdout_or_stderr() {
    const QUERY_SECRET: &str = "SECRET-QUERY-5b1c7e";
    const HEADER_SECRET: &str = "SECRET-HEADER-a93f02";
    const COOKIE_SECRET: &str = "SECRET-COOKIE-4d8e61";
    const BEARER_SECRET: &str = "SECRET-BEARER-0c27b9";
    const GRPC_SECRET: &str = "SECRET-GRPC-77e4a0";
    let standins = standins();
    // Debug level: every diagnostic pachgate and its libraries write goes to stderr too.
    let gate = Gate::start(&gated_config(&standins), Stdout::Read, "debug");
    let secrets = [
        "-H".to_string(),
        format!("authn-token: {HEADER_SECRET}"),
        "-H".to_string(),
        format!("Cookie: authn-token={COOKIE_SECRET}"),
        "-H".to_string(),
        format!("Authorization: Bearer {BEARER_SECRET}"),
    ];
    let with_secrets = |path: &str, id: &str, protocol: &str| {
        let mut args: Vec<&str> = vec![protocol, "-o", "/dev/null", "-H"];
        let id = format!("x-request-id: {id}");
        args.push(&id);
        args.extend(secrets.iter().map(String::as_str));
        let url = gate.url(&format!(
            "{path}?authn-token={QUERY_SECRET}&code={QUERY_SECRET}"
        ));
        args.push(&url);
        gate.curl(&args);
    };
    // Gated (refused: several different tokens, an audit line on stderr) and not gated
    // (forwarded with every header), over h2 and HTTP/1.1.
    with_secrets("/api/pfs_v2.API/ListRepo", "gated-h2", "--http2");
    with_secrets("/api/pfs_v2.API/ListRepo", "gated-h1", "--http1.1");
    with_secrets("/headers", "open-h2", "--http2");
    with_secrets("/headers", "open-h1", "--http1.1");
    // gRPC with a bad token: pachd's WhoAmI refuses it, the audit line says why.
    let frame = empty_grpc_frame(gate.dir.path());
    let url = gate.url(&format!(
        "/pachgate.standin.Echo/Unary?authn-token={QUERY_SECRET}"
    ));
    let token = format!("authn-token: {GRPC_SECRET}");
    // The refusal can come while curl still sends its message; the stream's reset after it
    // makes curl 7.88 exit with an error (92), so only the access line is the verdict here.
    gate.curl_output(&grpc_args(
        &frame,
        &["-H", &token, "-H", "x-request-id: grpc-bad-token", &url],
    ));

    let mut seen = Vec::new();
    for id in [
        "gated-h2",
        "gated-h1",
        "open-h2",
        "open-h1",
        "grpc-bad-token",
    ] {
        gate.line_with_id(id, &mut seen);
    }
    assert_eq!(
        seen.iter().find(|r| r["request_id"] == "gated-h2").unwrap()["status"],
        401
    );
    assert_eq!(
        seen.iter().find(|r| r["request_id"] == "open-h1").unwrap()["status"],
        200
    );
    assert_eq!(
        seen.iter()
            .find(|r| r["request_id"] == "grpc-bad-token")
            .unwrap()["grpc_status"],
        16
    );

    let (stdout, stderr) = gate.stop();
    let stdout = seen
        .iter()
        .map(Value::to_string)
        .chain(stdout)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        stderr.contains("pachgate::audit"),
        "no audit line on stderr; the test would prove nothing:\n{stderr}"
    );
    for secret in [
        QUERY_SECRET,
        HEADER_SECRET,
        COOKIE_SECRET,
        BEARER_SECRET,
        GRPC_SECRET,
    ] {
        assert!(!stdout.contains(secret), "{secret} on stdout:\n{stdout}");
        assert!(!stderr.contains(secret), "{secret} on stderr:\n{stderr}");
    }
}

#[test]
fn a_stalled_stdout_drops_lines_and_counts_every_one() {
    // Lines of some 2.3 KB (a long user-agent): 12,000 of them are more than the 16 MiB
    // pachgate lets wait for stdout plus what its pipe absorbs.
    const REQUESTS: usize = 12_000;
    let agent = format!("access-log-drop-{}", "x".repeat(2000));
    let standins = standins();
    let gate = Gate::start(&gated_config(&standins), Stdout::Stalled, "info");
    let args = ["--parallel-max", "64", "-o", "/dev/null", "-A", &agent];
    let ok = gate.parallel_gets("/", REQUESTS, &args);
    assert_eq!(ok, REQUESTS, "requests must not wait for the log");
    // A client can have its last byte a moment before pachgate books the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(gate.admin, "pachgate_active_streams") > 0 {
        assert!(Instant::now() < deadline, "requests still in flight");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(200));
    let dropped = dropped_lines(gate.admin);
    assert!(dropped > 0, "no line dropped; the buffer never filled");

    let (stdout, _) = gate.stop();
    let written = stdout
        .iter()
        .filter(|line| line.contains(r#""user_agent":"access-log-drop-"#))
        .count();
    assert_eq!(
        written + dropped as usize,
        REQUESTS,
        "{written} lines written, {dropped} counted as dropped"
    );
}

/// A stdout that refuses the lines (its reader gone: EPIPE) costs no request; every line it
/// did not take is counted as dropped, and stderr says why, once.
#[test]
fn a_failing_stdout_counts_every_line_it_loses() {
    const REQUESTS: usize = 300;
    let standins = standins();
    let gate = Gate::start(&gated_config(&standins), Stdout::Closed, "info");
    let ok = gate.parallel_gets("/", REQUESTS, &["-o", "/dev/null"]);
    assert_eq!(ok, REQUESTS, "requests must not wait for the log");
    let deadline = Instant::now() + Duration::from_secs(10);
    while dropped_lines(gate.admin) < REQUESTS as u64 {
        assert!(
            Instant::now() < deadline,
            "{} of {REQUESTS} lost lines counted",
            dropped_lines(gate.admin)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(dropped_lines(gate.admin), REQUESTS as u64);

    let (_, stderr) = gate.stop();
    let reports = stderr
        .lines()
        .filter(|l| l.contains("cannot write the access log to stdout"))
        .count();
    assert_eq!(reports, 1, "{stderr}");
    // The count outlives /metrics: it is the last thing said on the way out.
    assert!(
        stderr.contains(&format!(
            "{REQUESTS} access-log lines were dropped in this run"
        )),
        "{stderr}"
    );
}

/// `[log] access = "text"` (the demo's terminal format) still gets a line per request, with
/// the same facts as the JSON line, and no token.
#[test]
fn the_text_format_writes_a_line_per_request() {
    let standins = standins();
    let config = gated_config(&standins).replace("access = \"json\"", "access = \"text\"");
    let gate = Gate::start(&config, Stdout::Read, "info");
    gate.curl(&[
        "-H",
        "x-request-id: text-format-line",
        "-H",
        "authn-token: demo-token",
        &gate.url("/api/repos?authn-token=query-secret"),
    ]);
    let (stdout, stderr) = gate.stop();
    let line = stdout
        .iter()
        .find(|line| line.contains("text-format-line"))
        .unwrap_or_else(|| panic!("no text line for the request in {stdout:#?}"));
    for fact in [
        "route=\"pachd-http-api\"",
        "status=200 ",
        "path=\"/api/repos\"",
    ] {
        assert!(line.contains(fact), "{fact} missing from {line}");
    }
    assert!(
        !line.starts_with('{'),
        "a JSON line where text was asked: {line}"
    );
    for secret in ["demo-token", "query-secret"] {
        assert!(
            !stdout.iter().any(|l| l.contains(secret)) && !stderr.contains(secret),
            "{secret} reached the output"
        );
    }
}
