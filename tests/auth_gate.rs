//! The Pachyderm auth gate end to end: grpcio and curl through pachgate to the stand-in pachd,
//! whose WhoAmI behaves like pachd's (valid `demo-token`, unknown tokens, auth not activated)
//! and counts its calls.

mod common;

use std::fmt::Display;
use std::process::Command;

use common::*;

/// The gate on a route.
const GATED: &str = "auth = \"pachyderm\"";

/// Stand-in routes with `auth = "pachyderm"` on gRPC and on HTTP API paths, WhoAmI asked of
/// `pachd` (`auth_extra`: more `[auth.pachyderm]` keys).
fn gated(pachd: impl Display, console: impl Display, auth_extra: &str) -> TestConfig {
    TestConfig::new()
        .upstream_with("pachd", pachd, "h2c", "connect_timeout = \"2s\"")
        .upstream("console", console, "http1")
        .section(&format!(
            "[auth.pachyderm]\nupstream = \"pachd\"\ncache_ttl = \"60s\"\n{auth_extra}"
        ))
        .route_with("pachd-grpc", "grpc = true", "pachd", GATED)
        .route_with(
            "pachd-http-api",
            "path_prefix = \"/api/\"",
            "console",
            GATED,
        )
        .route_with("pachd-files", "path_prefix = \"/pfs\"", "console", GATED)
        .route("console", "path_prefix = \"/\"", "console")
}

/// `gated` in front of the stand-ins.
fn gated_standins(standins: &Running, auth_extra: &str) -> TestConfig {
    gated(
        standins.address("standin-pachd"),
        standins.address("standin-console"),
        auth_extra,
    )
}

fn proxy_for(standins: &Running, auth_extra: &str) -> Proxy {
    gated_standins(standins, auth_extra).start()
}

fn curl_status(proxy: &Proxy, path: &str, extra: &[&str]) -> u16 {
    let output = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(proxy.ca())
        .args(extra)
        .arg(format!("https://{}{path}", proxy.target()))
        .output()
        .unwrap();
    String::from_utf8(output.stdout).unwrap().parse().unwrap()
}

#[test]
fn grpc_calls_need_a_token_pachd_accepts_and_answers_are_cached() {
    let standins = standins();
    let proxy = proxy_for(&standins, "");
    grpc_check(&proxy, "auth-gate");
    // The audit log names the reason, never the token.
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("request denied"), "{log}");
    assert!(log.contains("invalid_token"), "{log}");
    assert!(
        !log.contains("demo-token"),
        "a token reached the log:\n{log}"
    );
    assert!(!log.contains("wrong"), "a token reached the log:\n{log}");
}

#[test]
fn path_and_header_tricks_are_denied() {
    let standins = standins();
    let proxy = proxy_for(&standins, "");
    grpc_check(&proxy, "auth-bypass");
    // HTTP: a token named in Connection is hop-by-hop, so it never counts; dot segments and
    // doubled slashes cannot move a request from a gated route to an open one or back.
    assert_eq!(
        curl_status(
            &proxy,
            "/api/x",
            &[
                "--http1.1",
                "-H",
                "Connection: authn-token",
                "-H",
                "authn-token: demo-token"
            ]
        ),
        401
    );
    for sneaky in [
        "/lineage/../api/x",
        "//api/x",
        "/%2e%2e/api/x",
        "/lineage/%2E%2E/api/x",
    ] {
        assert_eq!(
            curl_status(&proxy, sneaky, &["--path-as-is"]),
            401,
            "{sneaky} escaped the gate"
        );
    }
}

#[test]
fn expired_tokens_are_refused_within_the_cache_ttl() {
    let standins = standins();
    let proxy = proxy_for(&standins, "");
    grpc_check(&proxy, "auth-expiry");
}

/// curl's status, `Content-Type` and body.
fn curl_answer(proxy: &Proxy, path: &str, extra: &[&str]) -> (u16, String, String) {
    let output = Command::new("curl")
        .args(["-sS", "-w", "\n%{http_code} %{content_type}", "--cacert"])
        .arg(proxy.ca())
        .args(extra)
        .arg(format!("https://{}{path}", proxy.target()))
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (status, content_type) = tail.split_once(' ').unwrap();
    (
        status.parse().unwrap(),
        content_type.to_string(),
        body.to_string(),
    )
}

#[test]
fn http_routes_take_the_token_where_pachd_does() {
    let standins = standins();
    let proxy = proxy_for(&standins, "");
    // pachd's REST gateway reads the authn-token header and nothing else: a bearer token or
    // a cookie is no token to pachd, so none to the gate.
    for ignored in [
        "Authorization: Bearer demo-token",
        "Cookie: authn-token=demo-token",
    ] {
        assert_eq!(
            curl_status(&proxy, "/api/pfs_v2.API/ListRepo", &["-H", ignored]),
            401,
            "{ignored}"
        );
    }
    assert_eq!(
        curl_status(
            &proxy,
            "/api/pfs_v2.API/ListRepo",
            &["-H", "authn-token: demo-token"]
        ),
        200
    );
    // A denial on /api/ is grpc-gateway's JSON, which the console parses (the Content-Type
    // compared as a whole string).
    let (status, content_type, body) = curl_answer(&proxy, "/api/pfs_v2.API/CreateRepo", &[]);
    assert_eq!((status, content_type.as_str()), (401, "application/json"));
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["code"], 16, "{body}");
    assert_eq!(error["message"], "no authentication token (try logging in)");
    assert_eq!(error["details"], serde_json::json!([]));
    // Public methods pass without a token through the gateway too; an empty header (the
    // console sends one before login) is no token, not a bad one.
    for public in [
        "/api/auth_v2.API/Authenticate",
        "/api/versionpb_v2.API/GetVersion",
        "/api/auth_v2.API/WhoAmI",
    ] {
        assert_eq!(
            curl_status(&proxy, public, &["-H", "authn-token;"]),
            200,
            "{public}"
        );
    }
    // File downloads: the query parameter first (the console's previews use it), then the
    // header; the one checked is the one pachd uses.
    let file = "/pfs/default/images/master/a.png";
    for (query, header, want) in [
        ("?authn-token=demo-token", None, 200),
        ("?x=1&authn-token=demo%2Dtoken", None, 200),
        ("?authn-token=wrong", Some("authn-token: demo-token"), 401),
        ("?authn-token=demo-token", Some("authn-token: wrong"), 200),
        ("?authn-token=", Some("authn-token: demo-token"), 200),
        ("", Some("authn-token: demo-token"), 200),
        ("", None, 401),
    ] {
        let mut extra = vec![];
        if let Some(header) = header {
            extra = vec!["-H", header];
        }
        assert_eq!(
            curl_status(&proxy, &format!("{file}{query}"), &extra),
            want,
            "{query} {header:?}"
        );
    }
    // Outside /api/ a denial is text, with Content-Type exactly text/plain.
    let (status, content_type, _) = curl_answer(&proxy, file, &[]);
    assert_eq!((status, content_type.as_str()), (401, "text/plain"));
    // Routes without auth are untouched.
    assert_eq!(curl_status(&proxy, "/lineage", &[]), 200);
    // The query token never reaches the log.
    let log = proxy.running.stderr_so_far();
    assert!(
        !log.contains("demo-token"),
        "a token reached the log:\n{log}"
    );
}

#[test]
fn a_cluster_without_auth_is_denied_unless_allowed() {
    let standins = standins_with(&["--auth-inactive"]);
    let deny = proxy_for(&standins, "");
    grpc_check(&deny, "auth-not-active");
    let allow = proxy_for(&standins, "when_auth_disabled = \"allow\"");
    grpc_check(&allow, "auth-allow-when-disabled");
}

#[test]
fn pachd_unreachable_means_unavailable_never_allow() {
    let down = format!("127.0.0.1:{}", free_port());
    let proxy = gated(&down, &down, "").start();
    grpc_check(&proxy, "auth-unavailable");
    assert_eq!(
        curl_status(&proxy, "/api/x", &["-H", "authn-token: demo-token"]),
        503
    );
}

fn sha256_hex(token: &str) -> String {
    let output = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(token.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    String::from_utf8(output.stdout).unwrap()[..64].to_string()
}

#[test]
fn static_bearer_tokens_from_a_reloaded_hash_file() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.sha256");
    std::fs::write(
        &file,
        format!("# robots\n{}  ci-robot\n", sha256_hex("first-secret")),
    )
    .unwrap();
    let proxy = TestConfig::new()
        .upstream("console", standins.address("standin-console"), "http1")
        .section(&format!(
            "[auth.token]\nhashes_file = \"{}\"",
            file.display()
        ))
        .route_with(
            "tools",
            "path_prefix = \"/\"",
            "console",
            "auth = \"token\"",
        )
        .start();
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    assert_eq!(curl_status(&proxy, "/x", &[]), 401);
    assert_eq!(curl_status(&proxy, "/x", &["-H", &bearer("nope")]), 401);
    assert_eq!(
        curl_status(&proxy, "/x", &["-H", &bearer("first-secret")]),
        200
    );

    // Rotate: the new token works and the old one stops, without a restart.
    let next = dir.path().join("next");
    std::fs::write(&next, format!("{}\n", sha256_hex("second-secret"))).unwrap();
    std::fs::rename(&next, &file).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        curl_status(&proxy, "/x", &["-H", &bearer("second-secret")]),
        200
    );
    assert_eq!(
        curl_status(&proxy, "/x", &["-H", &bearer("first-secret")]),
        401
    );

    // A broken file is refused; the tokens in force stay in force.
    std::fs::write(&file, "this is not a hash\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert_eq!(
        curl_status(&proxy, "/x", &["-H", &bearer("second-secret")]),
        200
    );
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("token file refused"), "{log}");
    assert!(!log.contains("second-secret"), "a token reached the log");
}

#[test]
fn auth_decisions_and_upstream_failures_are_counted_in_metrics() {
    let mut standins = standins();
    let proxy = gated_standins(&standins, "")
        .listen("admin = \"127.0.0.1:0\"")
        .start();
    for _ in 0..2 {
        assert_eq!(curl_status(&proxy, "/api/x", &[]), 401);
    }
    assert_eq!(
        curl_status(&proxy, "/api/x", &["-H", "authn-token: wrong"]),
        401
    );
    for _ in 0..3 {
        assert_eq!(
            curl_status(&proxy, "/api/x", &["-H", "authn-token: demo-token"]),
            200
        );
    }
    // The backends gone: a request to the open console route fails to connect.
    standins.kill();
    assert_eq!(curl_status(&proxy, "/lineage", &[]), 503);

    let admin = proxy.running.address("admin");
    let samples = scrape_metrics(admin);
    let decisions = |decision: &str, reason: &str| {
        samples[format!(
            "pachgate_auth_decisions_total{{decision={decision},reason={reason},route=pachd-http-api}}"
        )]
        .as_f64()
        .unwrap_or(0.0)
    };
    assert_eq!(decisions("deny", "missing_token"), 2.0, "{samples:#}");
    assert_eq!(decisions("deny", "invalid_token"), 1.0, "{samples:#}");
    assert_eq!(decisions("allow", "valid_token"), 3.0, "{samples:#}");
    assert_eq!(
        samples["pachgate_upstream_connect_failures_total{upstream=console}"], 1.0,
        "{samples:#}"
    );
}
