//! Unit tests of the loader: durations, valid files, and located errors.

use super::*;

#[test]
fn durations_past_a_century_are_refused() {
    assert_eq!(
        parse_duration("36500d"),
        Some(Duration::from_secs(36_500 * 86_400))
    );
    assert_eq!(parse_duration("36501d"), None);
    assert_eq!(parse_duration("18446744073709551615s"), None);
    assert_eq!(parse_duration("18446744073709551615ms"), None);
}

fn errors(text: &str) -> Vec<String> {
    match parse(Path::new("t.toml"), text, Path::new(".")) {
        Ok(_) => vec![],
        Err(errors) => errors.iter().map(|e| e.to_string()).collect(),
    }
}

const VALID: &str = r#"
[listen]
http = "127.0.0.1:8080"
http_mode = "serve"

[upstreams.pachd]
endpoints = ["127.0.0.1:1650"]
protocol = "h2c"

[[routes]]
name = "grpc"
match = { grpc = true }
upstream = "pachd"
"#;

#[test]
fn valid_config_parses() {
    let config = parse(Path::new("t.toml"), VALID, Path::new(".")).unwrap();
    assert_eq!(config.route_count, 1);
    assert_eq!(config.upstream_count, 1);
}

#[test]
fn s3_route_keys_parse() {
    let text = VALID.replace(
        "match = { grpc = true }\nupstream = \"pachd\"\n",
        "match = { query = [\"X-Amz-Signature\"] }\nupstream = \"pachd\"\nauth = \"none\"\nforward_path = \"as-sent\"\n",
    );
    assert!(text.contains("as-sent"));
    let config = parse(Path::new("t.toml"), &text, Path::new(".")).unwrap();
    assert_eq!(config.route_count, 1);
    let normalized = VALID.replace(
        "upstream = \"pachd\"\n",
        "upstream = \"pachd\"\nauth = \"token\"\nforward_path = \"normalized\"\n",
    );
    // Only the missing [auth.token] section is wrong there.
    let found = errors(&normalized);
    assert!(
        found.len() == 1 && found[0].contains("[auth.token]"),
        "{found:#?}"
    );
}

#[test]
fn bad_configs_are_located() {
    // (config text, expected "line:column", a phrase from the message)
    let cases: &[(&str, &str, &str)] = &[
        (
            "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\nbogus = 1\n",
            "t.toml:4:1",
            "unknown field `bogus`",
        ),
        (
            "[listen]\nhttp = \"localhost\"\nhttp_mode = \"serve\"\n",
            "t.toml:2:8",
            "not a socket address",
        ),
        (
            &VALID.replace("upstream = \"pachd\"", "upstream = \"nope\""),
            "t.toml:13:12",
            "upstream \"nope\" is not defined",
        ),
        (
            &format!(
                "{VALID}\n[[routes]]\nname = \"grpc\"\nmatch = {{}}\nupstream = \"pachd\"\n"
            ),
            "t.toml:16:8",
            "used twice",
        ),
        (
            &VALID.replace("\"h2c\"", "\"spdy\""),
            "t.toml:8:12",
            "protocol \"spdy\" is not known",
        ),
        (
            &VALID.replace("[\"127.0.0.1:1650\"]", "[\"pachd\"]"),
            "t.toml:7:14",
            "not host:port",
        ),
        (
            &VALID.replace("{ grpc = true }", "{ path_prefix = \"dex\" }"),
            "t.toml:12:9",
            "must start with `/`",
        ),
        (
            "[listen]\nhttps = \"127.0.0.1:8443\"\n",
            "t.toml:2:9",
            "needs a [tls] section",
        ),
        (
            "[listen]\nhttps = \"127.0.0.1:8443\"\n[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
            "t.toml:4:8",
            "does not exist",
        ),
        (
            "[listen]\nhttp = \"0.0.0.0:8080\"\nhttp_mode = \"serve\"\n",
            "t.toml:2:8",
            "non-loopback",
        ),
        (
            &VALID.replace("protocol = \"h2c\"", "protocol = \"h2c\"\nresponse_timeout = \"soon\""),
            "t.toml:9:20",
            "not a duration",
        ),
        (
            &VALID.replace(
                "upstream = \"pachd\"\n",
                "upstream = \"pachd\"\nauth = \"token\"\nforward_path = \"as-sent\"\n",
            ),
            "t.toml:15:16",
            "forward_path = \"as-sent\" needs auth = \"none\"",
        ),
        (
            &VALID.replace(
                "match = { grpc = true }\nupstream = \"pachd\"\n",
                "match = { path_prefix = \"/public\" }\nupstream = \"pachd\"\nforward_path = \"as-sent\"\n",
            ),
            "t.toml:14:16",
            "cannot go with path_prefix",
        ),
        (
            &VALID.replace(
                "upstream = \"pachd\"\n",
                "upstream = \"pachd\"\nforward_path = \"raw\"\n",
            ),
            "t.toml:14:16",
            "forward_path \"raw\" is not known",
        ),
        (
            &VALID.replace("{ grpc = true }", "{ query = [\"X-Amz-Signature=\"] }"),
            "t.toml:12:9",
            "query parameter name \"X-Amz-Signature=\" is not valid",
        ),
        (
            "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\npublic_https_port = 70000\n",
            "t.toml:4:21",
            "expected a port from 1 to 65535",
        ),
        (
            "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"serve\"\nhsts_max_age = \"7d\"\n",
            "t.toml:4:16",
            "add hsts = true",
        ),
        (
            &VALID.replace("upstream = \"pachd\"\n", "upstream = \"pachd\"\nidle_timeout = \"0s\"\n"),
            "t.toml:14:16",
            "must be longer than zero",
        ),
        (
            &format!("{VALID}timeout = \"soon\"\n"),
            "t.toml:14:11",
            "timeout = \"soon\" is not a duration",
        ),
        ("[listen\n", "t.toml:1:8", "expected"),
        (
            &format!("{VALID}[limits]\nmax_connections = -1\n"),
            "t.toml:15:19",
            "limits.max_connections = -1: expected a number of connections, or 0 for no cap",
        ),
        (
            &format!("{VALID}[limits]\nmax_connections = \"10k\"\n"),
            "t.toml:15:19",
            "invalid type: string \"10k\"",
        ),
        // Checked here, with a location, before Snapshot::build (whose errors have none).
        (
            &format!("{VALID}[auth.pachyderm]\nupstream = \"pachd\"\nwho_am_i_method = \"/auth.API/Who Am I\"\n"),
            "t.toml:16:19",
            "who_am_i_method must be a gRPC method path",
        ),
        // Keyword keys: an unknown word is refused at the value, naming the accepted ones.
        (
            "[listen]\nhttp = \"127.0.0.1:8080\"\nhttp_mode = \"both\"\n",
            "t.toml:3:13",
            "http_mode \"both\" is not known: expected \"redirect\" or \"serve\"",
        ),
        (
            &VALID.replace("upstream = \"pachd\"\n", "upstream = \"pachd\"\nauth = \"basic\"\n"),
            "t.toml:14:8",
            "auth \"basic\" is not known: expected \"none\", \"pachyderm\" or \"token\"",
        ),
        (
            &format!("{VALID}[auth.pachyderm]\nupstream = \"pachd\"\nversion = \"3\"\n"),
            "t.toml:16:11",
            "auth.pachyderm.version \"3\" is not known: expected \"2\" (Pachyderm 2.x) or \"1\" (1.x)",
        ),
    ];
    for (text, location, phrase) in cases {
        let found = errors(text);
        assert!(
            found
                .iter()
                .any(|e| e.starts_with(location) && e.contains(phrase)),
            "want {location} … {phrase}; got {found:#?}\nconfig:\n{text}"
        );
    }
}

#[test]
fn max_connections_defaults_to_what_the_open_files_limit_allows() {
    let limit = |text: &str| {
        parse(Path::new("t.toml"), text, Path::new("."))
            .unwrap()
            .limits
            .max_connections
    };
    assert_eq!(limit(VALID), pachgate_proxy_core::default_max_connections());
    assert_eq!(limit(&format!("{VALID}[limits]\nmax_connections = 3\n")), 3);
    assert_eq!(limit(&format!("{VALID}[limits]\nmax_connections = 0\n")), 0);
}

#[test]
fn redirects_go_to_the_public_https_port() {
    let redirect_port = |listen: &str| {
        let text = format!("[listen]\n{listen}\nhttp = \"127.0.0.1:8080\"\n[tls]\nself_signed = true\nself_signed_dir = \"certs\"\n");
        let dir = tempfile::tempdir().unwrap();
        match parse(Path::new("t.toml"), &text, dir.path()).unwrap().http {
            Some((_, PlainMode::Redirect { https_port })) => https_port,
            other => panic!("{listen}: {other:?}"),
        }
    };
    // Non-loopback: what a Service exposes, 443, unless told otherwise.
    assert_eq!(redirect_port("https = \"0.0.0.0:8443\""), 443);
    assert_eq!(
        redirect_port("https = \"0.0.0.0:8443\"\npublic_https_port = 30443"),
        30443
    );
    // Loopback (pachgate local, tests): the listener itself.
    assert_eq!(redirect_port("https = \"127.0.0.1:8443\""), 8443);
    assert_eq!(
        redirect_port("https = \"127.0.0.1:8443\"\npublic_https_port = 443"),
        443
    );
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
    assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604_800)));
    assert_eq!(parse_duration("5"), None);
    assert_eq!(parse_duration("s"), None);
    assert_eq!(parse_duration("5 days"), None);
}

/// Listeners whose addresses would clash at bind are refused at validation; ones that
/// cannot clash pass.
#[test]
fn overlapping_listeners_are_refused() {
    let with = |http: &str, admin: &str| {
        let text = VALID.replace(
            "http = \"127.0.0.1:8080\"",
            &format!("http = \"{http}\"\nadmin = \"{admin}\""),
        );
        errors(&text)
            .iter()
            .any(|e| e.contains("overlaps listen.http"))
    };
    for (http, admin, clash) in [
        ("127.0.0.1:8080", "127.0.0.1:8080", true),
        ("0.0.0.0:8080", "127.0.0.1:8080", true),
        ("[::]:8080", "127.0.0.1:8080", true),
        ("127.0.0.1:8080", "[::]:8080", true),
        ("0.0.0.0:8080", "[::1]:8080", false),
        ("127.0.0.1:8080", "127.0.0.2:8080", false),
        ("127.0.0.1:8080", "127.0.0.1:9090", false),
        ("127.0.0.1:0", "127.0.0.1:0", false),
    ] {
        assert_eq!(with(http, admin), clash, "{http} and {admin}");
    }
}

/// A reload compares an upstream's TLS by what its files hold: the same files read again
/// keep the running upstream, a CA or client key rewritten in place makes a new one.
#[test]
fn a_reload_keeps_a_tls_upstream_only_while_its_files_hold_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let files = |name: &str| {
        let generated = dir.path().join(name);
        pachgate_tls::generate_into(&generated, &["localhost".to_string()]).unwrap()
    };
    let (first, second) = (files("first"), files("second"));
    let install = |from: &pachgate_tls::GeneratedPaths| {
        std::fs::copy(&from.ca_cert, dir.path().join("ca.crt")).unwrap();
        std::fs::copy(&from.cert, dir.path().join("client.crt")).unwrap();
        std::fs::copy(&from.key, dir.path().join("client.key")).unwrap();
    };
    let text = r#"
[listen]
http = "127.0.0.1:8080"
http_mode = "serve"

[upstreams.pachd]
endpoints = ["127.0.0.1:1650"]
protocol = "h2"
ca = "ca.crt"
client_cert = "client.crt"
client_key = "client.key"
server_name = "localhost"

[[routes]]
name = "grpc"
match = { grpc = true }
upstream = "pachd"
"#;
    let snapshot = || {
        parse(Path::new("t.toml"), text, dir.path())
            .unwrap()
            .snapshot
    };
    install(&first);
    let gateway = pachgate_proxy_core::Gateway::new(snapshot(), ServerLimits::default());
    assert_eq!(gateway.replace_snapshot(snapshot()).upstreams_kept, 1);
    // The client key alone rewritten (with its certificate: they must pair).
    std::fs::copy(&second.cert, dir.path().join("client.crt")).unwrap();
    std::fs::copy(&second.key, dir.path().join("client.key")).unwrap();
    assert_eq!(gateway.replace_snapshot(snapshot()).upstreams_new, 1);
    assert_eq!(gateway.replace_snapshot(snapshot()).upstreams_kept, 1);
    install(&second);
    assert_eq!(
        gateway.replace_snapshot(snapshot()).upstreams_new,
        1,
        "a new CA was not seen"
    );
}
