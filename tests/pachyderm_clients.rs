//! Pachyderm's real clients through the shipped 2.x preset (config/pachyderm.toml), against
//! stand-ins that answer as pachd, its HTTP server, dex and the OIDC callback do
//! (crates/standins). Each case replays what a client does and asserts both what the client
//! saw and what pachd saw (the stand-ins' record, `GET /_standin/seen`). The rule under test:
//! the gate answers exactly what pachd would have answered and never blocks a flow that
//! works against pachd directly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use common::*;
use serde_json::Value;

/// Stand-ins with pachd's own enforcement, its HTTP server, dex and the OIDC callback.
fn pachyderm_standins(extra: &[&str]) -> Running {
    let mut args = vec!["--enforce-auth", "--pachyderm-http"];
    args.extend_from_slice(extra);
    standins_with(&args)
}

fn preset(standins: &Running) -> Proxy {
    pachgate_with_preset(standins, |preset| preset)
}

/// What the client saw: status, Content-Type and body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// curl through pachgate to `path`, with extra curl arguments.
fn fetch(proxy: &Proxy, path: &str, extra: &[&str]) -> Answer {
    let output = Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "-w",
            "\n%{http_code} %{content_type}",
        ])
        .arg("--cacert")
        .arg(proxy.ca())
        .args(extra)
        .arg(format!("https://localhost:{}{path}", proxy.https().port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (status, content_type) = tail.split_once(' ').unwrap_or((tail, ""));
    Answer {
        status: status.parse().unwrap_or(0),
        content_type: content_type.to_string(),
        body: body.to_string(),
    }
}

/// A grpc-gateway call as the console's fetch code makes it: POST, JSON body, an
/// `authn-token` header (empty before login).
fn api(proxy: &Proxy, method: &str, token: &str, body: &str) -> Answer {
    let header = if token.is_empty() {
        "authn-token;".to_string()
    } else {
        format!("authn-token: {token}")
    };
    fetch(
        proxy,
        &format!("/api/{method}"),
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-H",
            &header,
            "--data",
            body,
        ],
    )
}

/// The stand-ins' record of what pachd received: (via, method, token's owner or
/// none/invalid/expired, where the token came from).
fn pachd_seen(standins: &Running) -> Vec<(String, String, String, String)> {
    let output = Command::new("curl")
        .args(["-sS", "--fail"])
        .arg(format!(
            "http://{}/_standin/seen",
            standins.address("standin-pachd-http")
        ))
        .output()
        .unwrap();
    let seen: Value = serde_json::from_slice(&output.stdout).expect("the stand-in's record");
    seen.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let field = |name: &str| s[name].as_str().unwrap_or_default().to_string();
            (
                field("via"),
                field("method"),
                field("token"),
                field("source"),
            )
        })
        .collect()
}

fn saw(seen: &[(String, String, String, String)], method: &str, token: &str) -> bool {
    seen.iter().any(|(_, m, t, _)| m == method && t == token)
}

#[test]
fn console_login_through_oidc_then_authenticate_without_a_token() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    let port = proxy.https().port();

    // Before login the console asks who it is and which version runs, with an empty token.
    let who = api(&proxy, "auth_v2.API/WhoAmI", "", "{}");
    assert_eq!(who.status, 401, "{}", who.body);
    assert_eq!(who.content_type, "application/json");
    assert_eq!(who.json()["code"], 16, "pachd's own answer: {}", who.body);
    let version = api(&proxy, "versionpb_v2.API/GetVersion", "", "{}");
    assert_eq!(version.status, 200, "{}", version.body);
    assert_eq!(version.json()["major"], 2);

    // The OIDC redirects, followed by curl: dex sends the browser to the callback, both
    // through pachgate.
    let state = "login-state-1";
    let callback = format!("https://localhost:{port}/authorization-code/callback");
    let login = fetch(
        &proxy,
        &format!("/dex/auth?client_id=pachd&response_type=code&scope=openid&state={state}&redirect_uri={callback}"),
        &["-L", "--max-redirs", "3"],
    );
    assert_eq!(login.status, 200, "{}", login.body);
    assert!(
        login.body.contains("You are now logged in"),
        "{}",
        login.body
    );

    // Authenticate exchanges the OIDC state for a token; the console sends no token here.
    let authenticate = api(
        &proxy,
        "auth_v2.API/Authenticate",
        "",
        &format!("{{\"oidcState\": \"{state}\"}}"),
    );
    assert_eq!(authenticate.status, 200, "{}", authenticate.body);
    let token = authenticate.json()["pachToken"]
        .as_str()
        .expect("a pach token")
        .to_string();

    // Signed in: WhoAmI and the console's first load.
    let who = api(&proxy, "auth_v2.API/WhoAmI", &token, "{}");
    assert_eq!(who.status, 200, "{}", who.body);
    assert_eq!(who.json()["username"], "user:standin@example.com");
    for method in [
        "pfs_v2.API/ReposSummary",
        "pps_v2.API/PipelinesSummary",
        "auth_v2.API/Authorize",
    ] {
        let answer = api(&proxy, method, &token, "{}");
        assert_eq!(answer.status, 200, "{method}: {}", answer.body);
    }

    let seen = pachd_seen(&standins);
    assert!(
        saw(&seen, "/auth_v2.API/Authenticate", "empty"),
        "Authenticate reached pachd with the console's empty token: {seen:?}"
    );
    assert!(
        saw(&seen, "/auth_v2.API/WhoAmI", "user:standin@example.com"),
        "{seen:?}"
    );
    assert!(
        saw(
            &seen,
            "/pfs_v2.API/ReposSummary",
            "user:standin@example.com"
        ),
        "{seen:?}"
    );
}

#[test]
fn server_streaming_json_lines_reach_the_browser_as_they_come() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    let mut curl = Command::new("curl")
        .args(["-sS", "-N", "--cacert"])
        .arg(proxy.ca())
        .args([
            "-X",
            "POST",
            "-H",
            "authn-token: demo-token",
            "--data",
            "{}",
        ])
        .arg(format!(
            "https://localhost:{}/api/pps_v2.API/ListJob",
            proxy.https().port()
        ))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut arrivals = Vec::new();
    for line in BufReader::new(curl.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        arrivals.push((started.elapsed(), line));
    }
    curl.wait().unwrap();
    assert!(arrivals.len() >= 3, "{arrivals:?}");
    for (_, line) in &arrivals {
        let message: Value = serde_json::from_str(line).unwrap();
        assert!(message.get("result").is_some(), "{line}");
    }
    // Lines arrive one by one, not as one buffered answer: the first is read well before
    // the last is written (the stand-in pauses between lines).
    let first = arrivals.first().unwrap().0;
    let last = arrivals.last().unwrap().0;
    assert!(
        last - first >= std::time::Duration::from_millis(50),
        "all lines arrived together: {arrivals:?}"
    );
}

#[test]
fn file_preview_and_download_with_the_query_token() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    // The console server fetches files back through the ingress with ?authn-token=.
    let preview = fetch(
        &proxy,
        "/pfs/default/images/master/liberty.png?authn-token=demo-token",
        &[],
    );
    assert_eq!(preview.status, 200, "{}", preview.body);
    let download = fetch(
        &proxy,
        "/archive/ASi1L.zip?authn-token=demo-token",
        &["-o", "/dev/null"],
    );
    assert_eq!(download.status, 200);
    // pachd takes the query first: a good header does not save a bad query token, and the
    // gate refuses what pachd would refuse.
    let wrong = fetch(
        &proxy,
        "/pfs/default/images/master/liberty.png?authn-token=wrong",
        &["-H", "authn-token: demo-token"],
    );
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.content_type, "text/plain");
    let seen = pachd_seen(&standins);
    assert!(
        seen.iter().any(|(_, m, t, source)| m.starts_with("/pfs/")
            && t == "robot:demo"
            && source == "query"),
        "{seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(_, m, t, _)| m.starts_with("/pfs/") && t == "invalid"),
        "a bad token reached pachd's file server: {seen:?}"
    );
    // The schemas are public on pachd, and through the preset.
    let schema = fetch(
        &proxy,
        "/jsonschema/pps_v2/CreatePipelineRequest.schema.json",
        &[],
    );
    assert_eq!(schema.status, 200, "{}", schema.body);
    // Neither the query token nor the header reaches the logs.
    let log = proxy.running.stderr_so_far();
    assert!(!log.contains("demo-token"), "{log}");
}

/// A whole HTTP answer as curl saw it: status, the headers named, and the body's bytes.
fn answer_with_headers(url: &str, ca: Option<&std::path::Path>, extra: &[&str]) -> RawAnswer {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "-i", "--path-as-is"]);
    if let Some(ca) = ca {
        curl.arg("--cacert").arg(ca);
    }
    let output = curl.args(extra).arg(url).output().unwrap();
    let text = &output.stdout;
    let split = text
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            let why = String::from_utf8_lossy(&output.stderr);
            panic!("{url}: no head: {why}")
        });
    let head = String::from_utf8_lossy(&text[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let header = |name: &str| {
        head.lines()
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_string())
    };
    RawAnswer {
        status,
        content_type: header("content-type"),
        vary: header("vary"),
        cache_control: header("cache-control"),
        location: header("location"),
        www_authenticate: header("www-authenticate"),
        body: text[split + 4..].to_vec(),
    }
}

#[derive(Debug, PartialEq)]
struct RawAnswer {
    status: u16,
    content_type: Option<String>,
    vary: Option<String>,
    cache_control: Option<String>,
    location: Option<String>,
    www_authenticate: Option<String>,
    body: Vec<u8>,
}

#[test]
fn file_handlers_refuse_tokens_in_pachds_own_words() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    let pachd = standins.address("standin-pachd-http");
    let ca = proxy.ca();
    let browser = "accept: text/html,application/xhtml+xml,*/*;q=0.8";
    let file = "/pfs/default/images/master/liberty.png";
    // (method, target, extra headers, pachd answers it from its own ZIP)
    let cases: [(&str, String, &[&str], bool); 13] = [
        (
            "GET",
            format!("{file}?authn-token=expired-token"),
            &[],
            false,
        ),
        ("GET", format!("{file}?authn-token=wrong"), &[], false),
        ("GET", file.to_string(), &[], false),
        (
            "HEAD",
            format!("{file}?authn-token=expired-token"),
            &[],
            false,
        ),
        (
            "GET",
            format!("{file}?authn-token=wrong"),
            &[browser],
            false,
        ),
        // The page's Error ID is the request's id, which pachd would have received.
        (
            "GET",
            format!("{file}?authn-token=wrong"),
            &[browser, "x-request-id: console-preview-7"],
            false,
        ),
        // pachd splits the decoded path: an encoded slash makes a file's path too.
        (
            "GET",
            "/pfs/default/images/master%2Fliberty.png?authn-token=wrong".to_string(),
            &[],
            false,
        ),
        // pachd answers these before it uses a token: 405, and 301 to the path and a slash.
        ("POST", format!("{file}?authn-token=wrong"), &[], false),
        ("GET", "/pfs/default/images/master".to_string(), &[], false),
        // /archive reports a refused token inside its 200 ZIP.
        (
            "GET",
            "/archive/ASi1L.zip?authn-token=expired-token".to_string(),
            &[],
            true,
        ),
        (
            "GET",
            "/archive/ASi1L.zip?authn-token=wrong".to_string(),
            &[],
            true,
        ),
        ("GET", "/archive/ASi1L.zip".to_string(), &[], true),
        ("POST", "/archive/ASi1L.zip".to_string(), &[], false),
    ];
    let curl_args = |method: &'static str, headers: &[&'static str]| {
        let mut extra = match method {
            "HEAD" => vec!["-I"],
            _ => vec!["-X", method],
        };
        extra.extend(headers.iter().flat_map(|header| ["-H", *header]));
        extra
    };
    // pachd's own answers first; then its record starts again for the answers through
    // the preset.
    let direct: Vec<RawAnswer> = cases
        .iter()
        .map(|(method, target, header, _)| {
            let url = format!("http://{pachd}{target}");
            answer_with_headers(&url, None, &curl_args(method, header))
        })
        .collect();
    let cleared = Command::new("curl")
        .args(["-sS", "--fail", "-X", "DELETE"])
        .arg(format!("http://{pachd}/_standin/seen"))
        .status()
        .unwrap();
    assert!(cleared.success());
    for ((method, target, header, zip), direct) in cases.iter().zip(direct) {
        let through = answer_with_headers(
            &format!("https://localhost:{}{target}", proxy.https().port()),
            Some(&ca),
            &curl_args(method, header),
        );
        let what = format!("{method} {target} {header:?}");
        if *zip {
            // A ZIP holding only @error.txt (its name carries the time): compared as such.
            let error = b"@error.txt";
            let holds = |body: &[u8]| body.windows(error.len()).any(|w| w == error);
            for answer in [&direct, &through] {
                assert_eq!(answer.status, 200, "{what}: {answer:?}");
                assert_eq!(answer.content_type.as_deref(), Some("application/zip"));
                assert!(holds(&answer.body), "{what}: {answer:?}");
            }
            continue;
        }
        assert_ne!(direct.status, 200, "{what}: pachd served it: {direct:?}");
        let html = |answer: &RawAnswer| answer.content_type.as_deref() == Some("text/html");
        if html(&direct) {
            // Each writes its own page around pachd's words.
            assert!(html(&through), "{what}: {through:?}");
            let words = "rpc error: code = Unauthenticated desc = provided auth token";
            let error_id = |answer: &RawAnswer| {
                let page = String::from_utf8_lossy(&answer.body).into_owned();
                assert!(page.contains(words), "{what}: {page}");
                let (_, id) = page.split_once("<p>Error ID: ").expect("an Error ID line");
                id.split_once("</p>").unwrap().0.to_string()
            };
            let (direct_id, through_id) = (error_id(&direct), error_id(&through));
            if header.contains(&"x-request-id: console-preview-7") {
                assert_eq!(
                    (&*direct_id, &*through_id),
                    ("console-preview-7", "console-preview-7")
                );
            } else {
                assert!(!through_id.is_empty(), "{what}");
            }
            assert_eq!(
                (direct.status, &direct.vary, &direct.cache_control),
                (through.status, &through.vary, &through.cache_control),
                "{what}"
            );
            continue;
        }
        assert_eq!(through, direct, "{what}");
    }
    // The gate refused the file server's bad tokens itself; the archive's went to pachd.
    let seen = pachd_seen(&standins);
    let reached = |path: &str, token: &str| {
        seen.iter()
            .any(|(_, m, t, _)| m.starts_with(path) && t == token)
    };
    assert!(!reached("/pfs/", "expired"), "{seen:?}");
    assert!(!reached("/pfs/", "invalid"), "{seen:?}");
    assert!(reached("/archive/", "expired"), "{seen:?}");
    assert!(reached("/archive/", "invalid"), "{seen:?}");
}

#[test]
fn an_expired_session_is_told_to_log_in_again() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    // pachd's answer, which the console reads as "log out": 13 with its message. A unary
    // method's error is grpc-gateway's status object ...
    let answer = api(&proxy, "pfs_v2.API/ReposSummary", "expired-token", "{}");
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert_eq!(answer.content_type, "application/json");
    let error = answer.json();
    assert_eq!(error["code"], 13, "{}", answer.body);
    assert_eq!(error["message"], "token expiration is in the past");
    // ... a server-streaming one's is wrapped as {"error": …}, as grpc-gateway's stream
    // forwarder writes it (the console's first load streams ListProject and ListJob).
    let streamed = api(&proxy, "pfs_v2.API/ListProject", "expired-token", "{}");
    assert_eq!(streamed.status, 500, "{}", streamed.body);
    assert_eq!(streamed.content_type, "application/json");
    assert_eq!(streamed.json()["error"]["code"], 13, "{}", streamed.body);
    assert_eq!(
        streamed.json()["error"]["message"],
        "token expiration is in the past"
    );
    // Answered from the cache now, before the POST body has arrived: the answer still
    // reaches the client whole (HTTP/2 and HTTP/1.1).
    for protocol in ["--http2", "--http1.1"] {
        let again = fetch(
            &proxy,
            "/api/pfs_v2.API/ReposSummary",
            &[
                protocol,
                "-X",
                "POST",
                "-H",
                "authn-token: expired-token",
                "--data",
                "{}",
            ],
        );
        assert_eq!(
            (again.status, again.json()["code"].clone()),
            (500, 13.into())
        );
    }
    // A bad token is 16, as pachd says it.
    let bad = api(&proxy, "pfs_v2.API/ReposSummary", "not-a-token", "{}");
    assert_eq!((bad.status, bad.json()["code"].clone()), (401, 16.into()));
    let seen = pachd_seen(&standins);
    for method in ["/pfs_v2.API/ListProject", "/pfs_v2.API/ReposSummary"] {
        assert!(
            !saw(&seen, method, "expired"),
            "the gate let an expired token through: {seen:?}"
        );
    }
    // The same shape as pachd itself gives (the stand-in, asked directly, after the record
    // above was read).
    let direct = Command::new("curl")
        .args([
            "-sS",
            "-X",
            "POST",
            "-H",
            "authn-token: expired-token",
            "--data",
            "{}",
        ])
        .arg(format!(
            "http://{}/api/pfs_v2.API/ListProject",
            standins.address("standin-pachd-http")
        ))
        .output()
        .unwrap();
    let direct: Value = serde_json::from_slice(&direct.stdout).unwrap();
    assert_eq!(direct, streamed.json());
}

#[test]
fn a_cluster_without_auth_serves_calls_without_a_token_when_allowed() {
    let standins = pachyderm_standins(&["--auth-inactive"]);
    let proxy = pachgate_with_preset(&standins, |preset| {
        preset.replace(
            "when_auth_disabled = \"deny\"",
            "when_auth_disabled = \"allow\"",
        )
    });
    let projects = api(&proxy, "pfs_v2.API/ListProject", "", "{}");
    assert_eq!(projects.status, 200, "{}", projects.body);
    let file = fetch(&proxy, "/pfs/default/images/master/liberty.png", &[]);
    assert_eq!(file.status, 200, "{}", file.body);
    let sdk = pachyderm_session(&proxy, "sdk");
    // Past the gate: pachd answers (the stand-in has no PFS service, so UNIMPLEMENTED).
    assert_eq!(
        sdk["list_repo_without_token"]["code"], "UNIMPLEMENTED",
        "{sdk:#}"
    );
    let seen = pachd_seen(&standins);
    assert!(saw(&seen, "/pfs_v2.API/ListProject", "empty"), "{seen:?}");
    assert!(saw(&seen, "/pfs_v2.API/ListRepo", "empty"), "{seen:?}");
}

#[test]
fn unreachable_backends_get_the_words_the_console_looks_for() {
    let mut standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    standins.kill();
    for path in ["/lineage", "/api/pfs_v2.API/ListProject"] {
        let answer = fetch(&proxy, path, &["-H", "authn-token: demo-token"]);
        assert!(
            matches!(answer.status, 502 | 503),
            "{path}: {} {}",
            answer.status,
            answer.body
        );
        assert_eq!(answer.content_type, "text/plain", "{path}");
        assert!(
            answer.body.contains("upstream connect error")
                || answer.body.contains("no healthy upstream"),
            "{path}: {}",
            answer.body
        );
    }
}

/// One session of a Pachyderm Python client (`sdk`: pachyderm-sdk; `python-pachyderm`, in
/// its own virtualenv because it pins protobuf < 4): step name → what the client saw.
fn pachyderm_session(proxy: &Proxy, which: &str) -> Value {
    let python = if which == "sdk" {
        "python3".to_string()
    } else {
        std::env::var("PYTHON_PACHYDERM_PYTHON").unwrap_or_else(|_| {
            repo_path("target/python-pachyderm/bin/python")
                .display()
                .to_string()
        })
    };
    let output = Command::new(python)
        .arg(repo_path("tests/clients/pachyderm_sessions.py"))
        .args([which, "localhost"])
        .arg(proxy.https().port().to_string())
        .arg(proxy.ca())
        .args(["demo-token", "expired-token"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{which}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut steps = serde_json::Map::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let step: Value = serde_json::from_str(line).unwrap();
        steps.insert(step["step"].as_str().unwrap().to_string(), step);
    }
    Value::Object(steps)
}

fn assert_session(standins: &Running, proxy: &Proxy, which: &str) {
    let session = pachyderm_session(proxy, which);
    let step = |name: &str| &session[name];
    assert_eq!(step("version")["value"], 2, "{which}: {session:#}");
    // WhoAmI is public: pachd itself answers the tokenless call.
    assert_eq!(step("who_am_i_without_token")["code"], "UNAUTHENTICATED");
    // Without a token pachyderm-sdk sends an empty one, python-pachyderm none (seen on the
    // public GetVersion, which pachd received). pachd looks an empty one up and calls it
    // bad; the gate's refusal of ListRepo says what pachd would have said.
    let sent_empty = saw(
        &pachd_seen(standins),
        "/versionpb_v2.API/GetVersion",
        "empty",
    );
    let refusal = match sent_empty {
        true => "provided auth token is corrupted or has expired (try logging in again)",
        false => "no authentication token (try logging in)",
    };
    assert_eq!(step("list_repo_without_token")["code"], "UNAUTHENTICATED");
    assert_eq!(
        step("list_repo_without_token")["details"],
        refusal,
        "{which}"
    );
    assert_eq!(step("who_am_i")["value"], "robot:demo", "{session:#}");
    // Allowed by the gate: whatever pachd answers, it is not an auth refusal.
    assert_ne!(step("list_repo")["code"], "UNAUTHENTICATED", "{session:#}");
    for expired in ["who_am_i_expired", "list_repo_expired"] {
        assert_eq!(
            step(expired)["code"],
            "INTERNAL",
            "{which} {expired}: {session:#}"
        );
        assert_eq!(step(expired)["details"], "token expiration is in the past");
    }
    assert_eq!(step("list_repo_bad_token")["code"], "UNAUTHENTICATED");
    let seen = pachd_seen(standins);
    assert!(
        saw(&seen, "/versionpb_v2.API/GetVersion", "empty")
            || saw(&seen, "/versionpb_v2.API/GetVersion", "none"),
        "{seen:?}"
    );
    assert!(saw(&seen, "/pfs_v2.API/ListRepo", "robot:demo"), "{seen:?}");
    for refused in ["none", "empty", "invalid", "expired"] {
        assert!(
            !saw(&seen, "/pfs_v2.API/ListRepo", refused),
            "the gate let a {refused} token through to ListRepo: {seen:?}"
        );
    }
}

#[test]
fn pachyderm_sdk_session() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    assert_session(&standins, &proxy, "sdk");
}

#[test]
fn python_pachyderm_session() {
    let standins = pachyderm_standins(&[]);
    let proxy = preset(&standins);
    assert_session(&standins, &proxy, "python-pachyderm");
}
