//! Client address policy end to end: listener-wide allow-lists (IPv4 and IPv6 loopback,
//! connection closed before TLS), per-route allow-lists, and per-address rate limits for
//! failed authentications and for all requests. curl picks its source address with
//! --interface (127.0.0.1 vs 127.0.0.2), so "other addresses are unaffected" is real.

mod common;

use std::process::Command;

use common::*;

/// pachd's gRPC and console's `/api/` behind the Pachyderm gate, then `extra` (a route to
/// console: name, path prefix, allow-list), then console for everything else; `top` keys
/// go before `[listen]`.
fn config(standins: &Running, top: &str, extra: Option<(&str, &str, &str)>) -> TestConfig {
    let config = TestConfig::new()
        .top(top)
        .tls_hosts(&["localhost", "127.0.0.1", "::1"])
        .upstream("pachd", standins.address("standin-pachd"), "h2c")
        .upstream("console", standins.address("standin-console"), "http1")
        .section("[auth.pachyderm]\nupstream = \"pachd\"")
        .route_with("pachd-grpc", "grpc = true", "pachd", "auth = \"pachyderm\"")
        .route_with(
            "api",
            "path_prefix = \"/api/\"",
            "console",
            "auth = \"pachyderm\"",
        );
    let config = match extra {
        Some((name, prefix, allow)) => config.route_with(
            name,
            &format!("path_prefix = \"{prefix}\""),
            "console",
            &format!("allow_cidrs = {allow}"),
        ),
        None => config,
    };
    config.route("console", "path_prefix = \"/\"", "console")
}

/// curl from `source`; returns (exit code, HTTP status or 0, headers).
fn curl(proxy: &Proxy, url: &str, source: &str, extra: &[&str]) -> (i32, u16, String) {
    let output = Command::new("curl")
        .args([
            "-sS",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-w",
            "\n%{http_code}",
            "--max-time",
            "10",
        ])
        .args(["--interface", source, "--cacert"])
        .arg(proxy.ca())
        .args(extra)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (headers, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        output.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        headers.to_ascii_lowercase(),
    )
}

#[test]
fn listener_allow_list_closes_refused_connections_before_tls() {
    let standins = standins();
    for (listen, source, allow, admitted) in [
        ("127.0.0.1:0", "127.0.0.1", r#"["127.0.0.0/8"]"#, true),
        (
            "127.0.0.1:0",
            "127.0.0.1",
            r#"["10.0.0.0/8", "::1/128"]"#,
            false,
        ),
        ("[::1]:0", "::1", r#"["::1/128"]"#, true),
        ("[::1]:0", "::1", r#"["127.0.0.0/8"]"#, false),
    ] {
        let config = config(&standins, &format!("allow_cidrs = {allow}"), None);
        let proxy = pachgate_config(&config.file(listen), 1);
        let port = proxy.https().port();
        let url = if listen.starts_with('[') {
            format!("https://[::1]:{port}/")
        } else {
            format!("https://localhost:{port}/")
        };
        let (exit, status, _) = curl(&proxy, &url, source, &["-g"]);
        if admitted {
            assert_eq!((exit, status), (0, 200), "{listen} allow {allow}");
        } else {
            // No TLS handshake at all: curl reports a connection/SSL error, no HTTP status.
            assert_ne!(exit, 0, "{listen} allow {allow}: connection was accepted");
            assert_eq!(status, 0, "{listen} allow {allow}");
        }
    }
}

#[test]
fn route_allow_list_is_403() {
    let standins = standins();
    let private = ("private", "/private", r#"["127.0.0.2/32"]"#);
    let config = config(&standins, "", Some(private));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let url = format!("https://localhost:{}/private/page", proxy.https().port());
    assert_eq!(curl(&proxy, &url, "127.0.0.1", &[]).1, 403);
    assert_eq!(curl(&proxy, &url, "127.0.0.2", &[]).1, 200);
}

#[test]
fn failed_authentications_are_rate_limited_per_address() {
    let standins = standins();
    let limits = "[rate_limits]\nfailed_auth_per_minute = 3\nfailed_auth_burst = 3";
    let config = config(&standins, "", None).section(limits);
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let url = format!("https://localhost:{}/api/repos", proxy.https().port());
    let bad = ["-H", "authn-token: guess"];
    let guess = |n: u32| ["-H".to_string(), format!("authn-token: guess-{n}")];
    let good = ["-H", "authn-token: demo-token"];
    let good_but_unknown = ["-H", "authn-token: demo-token-2"];
    // A user behind the same address (a NAT, an office proxy) whose token pachd has already
    // vouched for.
    assert_eq!(curl(&proxy, &url, "127.0.0.1", &good).1, 200);
    // One rejected token retried is one failed attempt (it guesses nothing new); three
    // different ones use up the budget.
    for attempt in 1..=3 {
        assert_eq!(
            curl(&proxy, &url, "127.0.0.1", &bad).1,
            401,
            "retry {attempt}"
        );
    }
    for attempt in 1..=2 {
        let guess = guess(attempt);
        let args: Vec<&str> = guess.iter().map(String::as_str).collect();
        assert_eq!(
            curl(&proxy, &url, "127.0.0.1", &args).1,
            401,
            "guess {attempt}"
        );
    }
    let guess = guess(3);
    let args: Vec<&str> = guess.iter().map(String::as_str).collect();
    let (_, status, headers) = curl(&proxy, &url, "127.0.0.1", &args);
    assert_eq!(status, 429);
    assert!(headers.contains("retry-after:"), "{headers}");
    // The address gets no more token checks: a token not yet known is refused unchecked,
    // valid or not; the token the gate already knows to be valid keeps working, so one
    // broken client cannot lock out everyone behind its address. Another address is free.
    assert_eq!(curl(&proxy, &url, "127.0.0.1", &good_but_unknown).1, 429);
    assert_eq!(curl(&proxy, &url, "127.0.0.1", &good).1, 200);
    // Public methods test no token, so they pass too (the console's login call).
    let login = format!(
        "https://localhost:{}/api/auth_v2.API/Authenticate",
        proxy.https().port()
    );
    assert_eq!(curl(&proxy, &login, "127.0.0.1", &bad).1, 200);
    assert_eq!(curl(&proxy, &url, "127.0.0.2", &bad).1, 401);
    assert_eq!(curl(&proxy, &url, "127.0.0.2", &good).1, 200);

    // gRPC callers get RESOURCE_EXHAUSTED.
    let grpc_proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    grpc_check(&grpc_proxy, "auth-rate-limit");
}

#[test]
fn request_rate_is_limited_per_address() {
    let standins = standins();
    let limits = "[rate_limits]\nrequests_per_second = 1\nrequest_burst = 2";
    let config = config(&standins, "", None).section(limits);
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let url = format!("https://localhost:{}/", proxy.https().port());
    let statuses: Vec<u16> = (0..4)
        .map(|_| curl(&proxy, &url, "127.0.0.1", &[]).1)
        .collect();
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    assert_eq!(curl(&proxy, &url, "127.0.0.2", &[]).1, 200);
}

#[test]
fn allow_insecure_lets_refused_configs_start() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        (
            "open-route.toml",
            "allow_insecure = true\n[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\n[upstreams.pachd]\nendpoints = [\"pachd:1650\"]\n[auth.pachyderm]\nupstream = \"pachd\"\n[[routes]]\nname = \"grpc\"\nmatch = { grpc = true }\nupstream = \"pachd\"\n",
        ),
        (
            "plaintext.toml",
            "allow_insecure = true\n[listen]\nhttp = \"0.0.0.0:8080\"\nhttp_mode = \"serve\"\n",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let output = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// Sends `GET /headers` over TLS, optionally after a PROXY header; returns (response, stderr).
fn raw_get(proxy: &Proxy, source: &str, proxy_header: Option<(&str, &str)>) -> (String, String) {
    raw_get_with(proxy, source, proxy_header, &[])
}

/// [`raw_get`] with more of raw_https.py's options (`--trickle`, `--tlv`).
fn raw_get_with(
    proxy: &Proxy,
    source: &str,
    proxy_header: Option<(&str, &str)>,
    options: &[&str],
) -> (String, String) {
    use std::io::Write;
    let mut command = Command::new("python3");
    command
        .arg(repo_path("tests/clients/raw_https.py"))
        .args([
            "--port",
            &proxy.https().port().to_string(),
            "--source",
            source,
            "--ca",
        ])
        .arg(proxy.ca());
    if let Some((version, claim)) = proxy_header {
        command.args(["--proxy", version, "--claim", claim]);
    }
    command.args(options);
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET /headers HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn proxy_protocol_v1_and_v2_from_trusted_balancers_only() {
    let standins = standins();
    let top = "trusted_proxies = [\"127.0.0.1/32\"]\nallow_cidrs = [\"203.0.113.0/24\", \"2001:db8::/32\", \"127.0.0.0/8\"]\n";
    let trusting = config(&standins, top, None).listen("proxy_protocol = true");
    let proxy = pachgate_config(&trusting.file("127.0.0.1:0"), 1);

    let (response, _) = raw_get(&proxy, "127.0.0.1", Some(("v1", "203.0.113.7:5555")));
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains("x-forwarded-for: 203.0.113.7\n"),
        "{response}"
    );

    let (response, _) = raw_get(&proxy, "127.0.0.1", Some(("v2", "[2001:db8::7]:5555")));
    assert!(
        response.contains("x-forwarded-for: 2001:db8::7\n"),
        "{response}"
    );

    // A balancer that sends its header in pieces, and one whose v2 header carries TLVs of
    // its own (600 bytes of them): both read whole, nothing of the TLS stream taken.
    let slow = ["--trickle", "0.2"];
    let (response, _) = raw_get_with(&proxy, "127.0.0.1", Some(("v1", "203.0.113.8:5555")), &slow);
    assert!(
        response.contains("x-forwarded-for: 203.0.113.8\n"),
        "{response}"
    );
    let tlvs = ["--trickle", "0.2", "--tlv", "600"];
    let (response, _) = raw_get_with(&proxy, "127.0.0.1", Some(("v2", "203.0.113.9:5555")), &tlvs);
    assert!(
        response.contains("x-forwarded-for: 203.0.113.9\n"),
        "{response}"
    );

    // The learned address is what the allow-list judges.
    let (response, stderr) = raw_get(&proxy, "127.0.0.1", Some(("v1", "198.51.100.1:1")));
    assert!(
        response.is_empty() && stderr.contains("NO TLS"),
        "{response}{stderr}"
    );

    // A forged header from a peer that is not a trusted proxy: closed, nothing served.
    let (response, stderr) = raw_get(&proxy, "127.0.0.2", Some(("v1", "203.0.113.7:5555")));
    assert!(
        response.is_empty() && stderr.contains("NO TLS"),
        "{response}{stderr}"
    );

    // No header at all on a listener that expects one: closed.
    let (response, stderr) = raw_get(&proxy, "127.0.0.1", None);
    assert!(
        response.is_empty() && stderr.contains("NO TLS"),
        "{response}{stderr}"
    );
    let warning = "trusted_proxies is empty";
    assert!(!proxy.running.stderr_so_far().contains(warning));

    // Without trusted_proxies any peer's header is believed: served, and warned about.
    let open = config(&standins, "", None).listen("proxy_protocol = true");
    let open = pachgate_config(&open.file("127.0.0.1:0"), 1);
    let (response, _) = raw_get(&open, "127.0.0.2", Some(("v1", "203.0.113.7:5555")));
    assert!(
        response.contains("x-forwarded-for: 203.0.113.7\n"),
        "{response}"
    );
    assert!(open.running.stderr_so_far().contains(warning));
}

#[test]
fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let standins = standins();
    let partners = ("partners", "/partners", r#"["198.51.100.0/24"]"#);
    let top = "trusted_proxies = [\"127.0.0.1/32\"]\n";
    let config = config(&standins, top, Some(partners));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let url = format!("https://localhost:{}/partners/x", proxy.https().port());
    let claim = ["-H", "X-Forwarded-For: 198.51.100.9"];
    assert_eq!(
        curl(&proxy, &url, "127.0.0.1", &claim).1,
        200,
        "trusted proxy"
    );
    assert_eq!(
        curl(&proxy, &url, "127.0.0.2", &claim).1,
        403,
        "untrusted peer's XFF believed"
    );
    assert_eq!(curl(&proxy, &url, "127.0.0.1", &[]).1, 403);
}
