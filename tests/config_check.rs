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
