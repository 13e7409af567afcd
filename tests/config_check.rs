//! `pachgate check` over a table of broken config files (tests/bad-configs, each naming the
//! line:column and phrase it must produce in its first line), the shipped presets, and the
//! certificates `pachgate cert generate` writes.

mod common;

use std::process::Command;

use common::*;

#[test]
fn bad_configs_are_rejected_with_file_line_column() {
    let dir = repo_path("tests/bad-configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let expectation = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", path.display()));
        let (location, phrase) = expectation.split_once(' ').unwrap();
        let output = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{}: check passed a bad config",
            path.display()
        );
        let want = format!("{}:{location}: ", path.display());
        assert!(
            stderr
                .lines()
                .any(|line| line.contains(&want) && line.contains(phrase)),
            "{}: want `{want}` and `{phrase}` in:\n{stderr}",
            path.display()
        );
        // `serve` refuses the same file and starts nothing.
        let serve = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!serve.status.success(), "{}: serve started", path.display());
        assert!(String::from_utf8_lossy(&serve.stderr).contains(&want));
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} bad configs found");
}

/// A config made with the tests' builder passes `check`; adding a route that names an
/// upstream not defined is refused at that route's `upstream` value.
#[test]
fn built_configs_pass_check_and_an_unknown_upstream_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let check = |config: &TestConfig| {
        let path = dir.path().join("built.toml");
        let text = config.file("127.0.0.1:0");
        std::fs::write(&path, &text).unwrap();
        let output = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (path, text, output)
    };
    let good = TestConfig::new()
        .upstream("pachd", "127.0.0.1:1650", "h2c")
        .upstream("console", "127.0.0.1:4000", "http1")
        .route_with("grpc", "grpc = true", "pachd", "timeout = \"off\"")
        .route("rest", "path_prefix = \"/\"", "console");
    let (_, _, output) = check(&good);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(": ok (2 routes, 2 upstreams)"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let (path, text, output) = check(&good.route("typo", "", "consol"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let line = 1 + text
        .lines()
        .position(|l| l == "upstream = \"consol\"")
        .unwrap();
    let want = format!("{}:{line}:12: ", path.display());
    assert!(
        stderr
            .lines()
            .any(|l| l.contains(&want) && l.contains("upstream \"consol\" is not defined")),
        "want `{want}` in:\n{stderr}\n{text}"
    );
}

#[test]
fn presets_pass_check_with_generated_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let generate = Command::new(BIN)
        .args(["cert", "generate", "--out"])
        .arg(dir.path().join("tls"))
        .args(["--host", "pach.example.com", "--host", "127.0.0.1"])
        .output()
        .unwrap();
    assert!(
        generate.status.success(),
        "{}",
        String::from_utf8_lossy(&generate.stderr)
    );
    let printed = String::from_utf8_lossy(&generate.stdout);
    assert!(printed.contains("CA SHA-256:"), "{printed}");
    // The printed fingerprint is the one openssl computes for the CA certificate.
    let openssl = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(dir.path().join("tls/ca.crt"))
        .output()
        .expect("openssl must be installed");
    let expected = String::from_utf8_lossy(&openssl.stdout);
    let expected = expected.trim().rsplit('=').next().unwrap();
    assert_eq!(expected.len(), 95, "{expected}");
    assert!(
        printed
            .lines()
            .any(|line| line.starts_with("CA SHA-256:") && line.ends_with(expected)),
        "{printed} vs openssl {expected}"
    );

    for preset in ["pachyderm.toml", "pachyderm-1x.toml", "local.toml"] {
        let target = dir.path().join(preset);
        std::fs::copy(repo_path(&format!("config/{preset}")), &target).unwrap();
        let output = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&target)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{preset}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(stdout.contains(": ok ("), "{preset}: {stdout}");
    }
}

#[test]
fn generated_certificates_verify_with_openssl_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new(BIN)
        .args(["cert", "generate", "--out"])
        .arg(dir.path())
        .args(["--host", "pach.example.com", "--host", "10.0.0.1"])
        .status()
        .unwrap();
    assert!(status.success());
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(dir.path().join("ca.crt"))
        .arg(dir.path().join("tls.crt"))
        .output()
        .expect("openssl must be installed");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(dir.path().join("tls.crt"))
        .output()
        .unwrap();
    let sans = String::from_utf8_lossy(&text.stdout);
    assert!(sans.contains("DNS:pach.example.com"), "{sans}");
    assert!(sans.contains("IP Address:10.0.0.1"), "{sans}");
    #[cfg(unix)]
    for key in ["ca.key", "tls.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

/// PEM keys in all three encodings load, and the listener speaks TLS 1.2+ with ALPN
/// h2 / http/1.1 (checked with openssl s_client, a TLS implementation not our own).
#[test]
fn pkcs8_pkcs1_and_sec1_keys_load_and_tls_policy_holds() {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl must be installed");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    };
    // PKCS#1 RSA ("BEGIN RSA PRIVATE KEY"), SEC1 EC ("BEGIN EC PRIVATE KEY"), PKCS#8.
    openssl(&["genrsa", "-traditional", "-out", "pkcs1.key", "2048"]);
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "sec1.key",
    ]);
    openssl(&["genpkey", "-algorithm", "ed25519", "-out", "pkcs8.key"]);
    let markers = [
        ("pkcs1", "BEGIN RSA PRIVATE KEY"),
        ("sec1", "BEGIN EC PRIVATE KEY"),
        ("pkcs8", "BEGIN PRIVATE KEY"),
    ];
    for (name, marker) in markers {
        let key = format!("{name}.key");
        let text = std::fs::read_to_string(dir.path().join(&key)).unwrap();
        assert!(text.contains(marker), "{name}: {text}");
        openssl(&[
            "req",
            "-x509",
            "-key",
            &key,
            "-subj",
            "/CN=localhost",
            "-days",
            "2",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-out",
            &format!("{name}.crt"),
        ]);
        let config = dir.path().join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "[listen]\nhttps = \"127.0.0.1:0\"\n[tls]\ncert = \"{name}.crt\"\nkey = \"{name}.key\"\n"
            ),
        )
        .unwrap();
        let check = Command::new(BIN)
            .args(["check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }

    // Serve with the PKCS#1 RSA key and probe the TLS policy.
    let mut serve = Command::new(BIN);
    serve
        .args(["serve", "--config"])
        .arg(dir.path().join("pkcs1.toml"));
    let running = start(serve, 1);
    let connect = format!("127.0.0.1:{}", running.address("https").port());
    let probe = |extra: &[&str]| {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &connect, "-servername", "localhost"])
            .args(extra)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        child.stdout.extend_from_slice(&child.stderr);
        (
            child.status.success(),
            String::from_utf8_lossy(&child.stdout).into_owned(),
        )
    };
    let (ok, text) = probe(&["-tls1_2", "-alpn", "h2"]);
    assert!(ok && text.contains("ALPN protocol: h2"), "{text}");
    let (ok, text) = probe(&["-tls1_3", "-alpn", "http/1.1"]);
    assert!(ok && text.contains("ALPN protocol: http/1.1"), "{text}");
    // SECLEVEL=0 makes this openssl willing to offer TLS 1.1; pachgate must answer with an
    // alert rather than a session.
    let (ok, text) = probe(&["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"]);
    assert!(
        !ok && text.contains("alert"),
        "TLS 1.1 was not refused by the server: {text}"
    );
}
