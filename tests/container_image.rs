//! The container image, run for real, with no registry or Docker engine: tests/image/build.sh
//! builds the repository's Dockerfile with buildah from the release binary on a stand-in for
//! its distroless base (glibc and the libraries the binary links, libgcc_s, the CA bundle,
//! user 65532 "nonroot"), and podman runs it the way config/kubernetes/deployment.yaml asks a
//! kubelet to: read-only root, user 65532, no capabilities, no privilege escalation, the
//! Deployment's args, env and limits, the ConfigMap's pachgate.toml and a TLS secret mounted
//! as the kubelet mounts volumes (`..data` symlinks into a timestamped directory), host
//! networking. The ConfigMap's config is used as committed; only the upstreams' ports are
//! moved to the stand-ins, whose names resolve to loopback through the container's
//! /etc/hosts. Then the Deployment's probes, a gRPC call through the gate, a refused token,
//! an HTTP route and a redirect are checked as a kubelet and real clients (curl, grpcio)
//! would see them, and `podman stop` (SIGTERM) with a call in flight must take the pod out
//! of readiness, answer the call and end the process cleanly within the grace period.
//!
//! Podman in this kind of sandbox needs `--runtime runc --cgroup-manager cgroupfs` and a
//! containers.conf with `default_ulimits = []` (the default open-files limit cannot be set);
//! storage (vfs), state and events live in the test's temporary directory.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use common::*;
use serde_json::Value;

const IMAGE: &str = "localhost/pachgate:container-test";
/// The name the test certificate carries, as a real deployment's would.
const HOST: &str = "pach.example.com";
const ECHO_UNARY: &str = "/pachgate.standin.Echo/Unary";

/// The release binary (`cargo build --release --bin pachgate`; tests/run-all.sh builds it
/// before the tests), refused when missing or older than the sources.
fn release_binary() -> PathBuf {
    let binary = Path::new(BIN)
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lives in target/<profile>/")
        .join("release/pachgate");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: this test runs the release binary in a container; build it \
                 with `cargo build --release --bin pachgate` (tests/run-all.sh does)",
                binary.display()
            )
        });
    let mut newest = (SystemTime::UNIX_EPOCH, PathBuf::new());
    for root in ["Cargo.toml", "Cargo.lock", "src", "crates"] {
        newest_file(&repo_path(root), &mut newest);
    }
    assert!(
        newest.0 <= built,
        "{} is older than {}: rebuild it with `cargo build --release --bin pachgate`",
        binary.display(),
        newest.1.display()
    );
    binary
}

fn newest_file(path: &Path, newest: &mut (SystemTime, PathBuf)) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if path.file_name().is_some_and(|n| n == "target") {
            return;
        }
        for entry in std::fs::read_dir(path).unwrap() {
            newest_file(&entry.unwrap().path(), newest);
        }
    } else if let Ok(modified) = meta.modified() {
        if modified > newest.0 {
            *newest = (modified, path.to_path_buf());
        }
    }
}

/// Podman and buildah with everything in one temporary directory: storage (vfs), run state,
/// events, and the containers.conf this sandbox needs.
struct Engine {
    dir: tempfile::TempDir,
}

impl Engine {
    fn new() -> Engine {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        for sub in ["storage", "run", "libpod", "networks", "copy"] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                path("storage"),
                path("run")
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[containers]\n\
                 # The default open-files limit cannot be set here (EPERM from runc).\n\
                 default_ulimits = []\n\n\
                 [engine]\n\
                 tmp_dir = \"{}\"\n\
                 events_logger = \"file\"\n\
                 events_logfile_path = \"{}\"\n\
                 image_copy_tmp_dir = \"{}\"\n\n\
                 [network]\n\
                 network_config_dir = \"{}\"\n",
                path("libpod"),
                path("events.log"),
                path("copy"),
                path("networks"),
            ),
        )
        .unwrap();
        Engine { dir }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("CONTAINERS_CONF", self.dir.path().join("containers.conf"))
            .env(
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf"),
            );
        command
    }

    /// `podman --runtime runc --cgroup-manager cgroupfs ARGS` (crun cannot set rlimits or
    /// cgroups in this sandbox; there is no systemd to manage cgroups).
    fn podman(&self, args: &[&str]) -> Output {
        self.command("podman")
            .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(args)
            .output()
            .expect("podman must be installed (Debian podman; tests/run-all.sh installs it)")
    }

    fn podman_ok(&self, args: &[&str]) -> String {
        let output = self.podman(args);
        assert!(
            output.status.success(),
            "podman {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }
}

/// A running container, removed when the test ends, pass or fail.
struct Container<'a> {
    engine: &'a Engine,
    name: String,
}

impl Container<'_> {
    fn inspect(&self, format: &str) -> String {
        self.engine
            .podman_ok(&["inspect", "--format", format, &self.name])
            .trim()
            .to_string()
    }

    fn logs(&self) -> String {
        let output = self.engine.podman(&["logs", &self.name]);
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr)
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .engine
            .podman(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// A YAML file as JSON, read by PyYAML (what kubernetes-validate parses manifests with).
fn yaml(relative: &str) -> Value {
    let output = python_inline(
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        &[repo_path(relative).to_str().unwrap()],
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn python_inline(code: &str, args: &[&str]) -> Output {
    let output = Command::new("python3")
        .args(["-c", code])
        .args(args)
        .output()
        .expect("python3 must be installed");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Writes a volume as the kubelet's atomic writer lays out ConfigMap and Secret volumes: the
/// files in a timestamped directory, `..data` pointing at it, one symlink per key through
/// `..data`; files with the default mode 0644, owned by root.
fn kubelet_volume(dir: &Path, stamp: &str, files: &[(&str, Vec<u8>)]) {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let timestamped = format!("..{stamp}");
    std::fs::create_dir_all(dir.join(&timestamped)).unwrap();
    for (name, content) in files {
        let file = dir.join(&timestamped).join(name);
        std::fs::write(&file, content).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        symlink(format!("..data/{name}"), dir.join(name)).unwrap();
    }
    symlink(&timestamped, dir.join("..data")).unwrap();
    for d in [dir.to_path_buf(), dir.join(&timestamped)] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// The ConfigMap's pachgate.toml with each `pachgate-*-backend:PORT` upstream moved to the
/// stand-in playing it (the name stays; the container resolves it to loopback).
fn configmap_config(standins: &Running) -> String {
    let configmap = yaml("config/kubernetes/configmap.yaml");
    let committed = configmap["data"]["pachgate.toml"]
        .as_str()
        .expect("the ConfigMap carries pachgate.toml")
        .to_string();
    let pachd = standins.address("standin-pachd").port();
    let console = standins.address("standin-console").port();
    let mut config = committed.clone();
    for (from, to) in [
        (
            "pachgate-pachd-backend:1650",
            format!("pachgate-pachd-backend:{pachd}"),
        ),
        (
            "pachgate-pachd-backend:1600",
            format!("pachgate-pachd-backend:{console}"),
        ),
        (
            "pachgate-pachd-backend:1657",
            format!("pachgate-pachd-backend:{console}"),
        ),
        (
            "pachgate-pachd-backend:1658",
            format!("pachgate-pachd-backend:{console}"),
        ),
        (
            "pachgate-pachd-backend:1659",
            format!("pachgate-pachd-backend:{console}"),
        ),
        (
            "pachgate-console-backend:4000",
            format!("pachgate-console-backend:{console}"),
        ),
    ] {
        assert!(
            config.contains(from),
            "the ConfigMap no longer names {from}"
        );
        config = config.replace(from, &to);
    }
    // Nothing else moved: the same lines, only those endpoint ports differ.
    assert_eq!(config.lines().count(), committed.lines().count());
    for (ours, theirs) in config.lines().zip(committed.lines()) {
        if ours != theirs {
            assert!(theirs.contains("-backend:"), "{theirs:?} changed");
        }
    }
    config
}

/// A container port of the Deployment by name (`admin`) or number.
fn port_of(container: &Value, port: &Value) -> u16 {
    if let Some(number) = port.as_u64() {
        return number as u16;
    }
    let name = port.as_str().expect("a port name or number");
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name}")) as u16
}

/// An httpGet probe as the kubelet sends it (HTTP unless `scheme` says otherwise, its user
/// agent and Accept header, no keep-alive); the kubelet counts 200–399 as success.
fn probe(container: &Value, which: &str) -> (String, u16) {
    let get = &container[which]["httpGet"];
    let scheme = get["scheme"]
        .as_str()
        .unwrap_or("HTTP")
        .to_ascii_lowercase();
    let path = get["path"].as_str().expect("an httpGet path");
    let port = port_of(container, &get["port"]);
    let url = format!("{scheme}://127.0.0.1:{port}{path}");
    let code = http_code(
        &[
            "--max-time",
            "1",
            "-k",
            "-A",
            "kube-probe/1.31",
            "-H",
            "Accept: */*",
            "-H",
            "Connection: close",
        ],
        &url,
    );
    (url, code.parse().unwrap_or(0))
}

/// Protobuf: field 1 (bytes) and field 5 (varint) of the stand-in's EchoResponse.
fn echo_fields(message: &[u8]) -> (Vec<u8>, u64) {
    fn varint(data: &[u8], i: &mut usize) -> u64 {
        let (mut value, mut shift) = (0u64, 0);
        loop {
            let byte = data[*i];
            *i += 1;
            value |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                return value;
            }
        }
    }
    let (mut payload, mut unary_calls, mut i) = (Vec::new(), 0, 0);
    while i < message.len() {
        let key = varint(message, &mut i);
        match key & 7 {
            0 => {
                let value = varint(message, &mut i);
                if key >> 3 == 5 {
                    unary_calls = value;
                }
            }
            2 => {
                let len = varint(message, &mut i) as usize;
                if key >> 3 == 1 {
                    payload = message[i..i + len].to_vec();
                }
                i += len;
            }
            wire => panic!("unexpected wire type {wire}"),
        }
    }
    (payload, unary_calls)
}

struct GrpcAnswer {
    status: Option<String>,
    message: String,
    body: Vec<u8>,
}

/// One unary gRPC call with curl over HTTP/2 and TLS to `HOST` at 127.0.0.1:`port`,
/// trusting `ca`; `token` goes in `authn-token` as pachctl sends it.
fn grpc_call(
    dir: &Path,
    ca: &Path,
    port: u16,
    method: &str,
    token: &str,
    request: &[u8],
) -> GrpcAnswer {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(request.len() as u32).to_be_bytes());
    frame.extend_from_slice(request);
    let request_file = dir.join("request.grpc");
    let answer_file = dir.join("answer.grpc");
    std::fs::write(&request_file, frame).unwrap();
    let _ = std::fs::remove_file(&answer_file);
    let output = Command::new("curl")
        .args(["-sS", "--http2", "--max-time", "20", "-D", "-", "-o"])
        .arg(&answer_file)
        .arg("--cacert")
        .arg(ca)
        .args(["--resolve", &format!("{HOST}:{port}:127.0.0.1")])
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"])
        .args(["-H", &format!("authn-token: {token}")])
        .arg("--data-binary")
        .arg(format!("@{}", request_file.display()))
        .arg(format!("https://{HOST}:{port}{method}"))
        .output()
        .expect("curl must be installed");
    let headers = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(headers.starts_with("HTTP/2 200"), "{method}: {headers}");
    let field = |name: &str| {
        headers.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(": "))
                .map(|v| v.trim().to_string())
        })
    };
    let answer = std::fs::read(&answer_file).unwrap_or_default();
    let body = if answer.len() >= 5 {
        let len = u32::from_be_bytes(answer[1..5].try_into().unwrap()) as usize;
        answer[5..5 + len].to_vec()
    } else {
        Vec::new()
    };
    GrpcAnswer {
        status: field("grpc-status"),
        message: field("grpc-message").unwrap_or_else(|| {
            format!(
                "(no grpc-message; curl {}: {headers}{})",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            )
        }),
        body,
    }
}

#[test]
fn the_image_runs_as_the_deployment_describes() {
    let release = release_binary();
    let engine = Engine::new();

    // The image: the Dockerfile's runtime stage on the distroless stand-in.
    let build = engine
        .command("bash")
        .arg(repo_path("tests/image/build.sh"))
        .arg(&release)
        .arg(IMAGE)
        .output()
        .expect("bash runs tests/image/build.sh");
    assert!(
        build.status.success(),
        "tests/image/build.sh failed (buildah: Debian buildah, tests/run-all.sh installs it):\n{}{}",
        String::from_utf8_lossy(&build.stdout),
        String::from_utf8_lossy(&build.stderr)
    );
    let config: Value = serde_json::from_str(&engine.podman_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        IMAGE,
    ]))
    .unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Entrypoint"][0], "/usr/local/bin/pachgate",
        "{config}"
    );

    let deployment = yaml("config/kubernetes/deployment.yaml");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    let user = format!(
        "{}:{}",
        pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]
    );
    assert_eq!(user, "65532:65532");

    // Host networking: the pod's ports are this machine's, so they must be free.
    for port in container["ports"].as_array().unwrap() {
        let number = port["containerPort"].as_u64().unwrap() as u16;
        if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", number)) {
            panic!(
                "port {number} is taken on this machine ({e}); the container uses host networking"
            );
        }
    }

    // The volumes, as the kubelet writes them.
    let standins = standins();
    let volumes = tempfile::tempdir().unwrap();
    let mut mounts = Vec::new();
    for mount in container["volumeMounts"].as_array().unwrap() {
        let name = mount["name"].as_str().unwrap();
        let source = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap();
        let dir = volumes.path().join(name);
        if source["configMap"]["name"] == "pachgate" {
            let toml = configmap_config(&standins);
            kubelet_volume(
                &dir,
                "2026_12_06_10_00_00.000000001",
                &[("pachgate.toml", toml.into_bytes())],
            );
        } else if source["secret"]["secretName"] == "pachgate-tls" {
            let generated = volumes.path().join("generated");
            let out = Command::new(&release)
                .args(["cert", "generate", "--out"])
                .arg(&generated)
                .args(["--host", HOST, "--host", "localhost"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let read = |f: &str| std::fs::read(generated.join(f)).unwrap();
            kubelet_volume(
                &dir,
                "2026_12_06_10_00_00.000000002",
                &[("tls.crt", read("tls.crt")), ("tls.key", read("tls.key"))],
            );
        } else {
            panic!("a volume this test does not model: {source}");
        }
        let read_only = if mount["readOnly"] == true { ":ro" } else { "" };
        mounts.push(format!(
            "{}:{}{read_only}",
            dir.display(),
            mount["mountPath"].as_str().unwrap()
        ));
    }
    assert_eq!(mounts.len(), 2, "{mounts:?}");
    let ca = volumes.path().join("generated/ca.crt");

    // The pod: what the Deployment asks of the container runtime.
    let name = format!("pachgate-test-{}", std::process::id());
    let limits = &container["resources"]["limits"];
    let memory = limits["memory"].as_str().unwrap().replace("Mi", "m");
    let cpus = limits["cpu"].as_str().unwrap().to_string();
    let mut run: Vec<String> = [
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--read-only",
        "--read-only-tmpfs=false",
        "--user",
        &user,
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--memory",
        &memory,
        "--cpus",
        &cpus,
        "--add-host",
        "pachgate-pachd-backend:127.0.0.1",
        "--add-host",
        "pachgate-console-backend:127.0.0.1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for env in container["env"].as_array().unwrap() {
        run.push("--env".into());
        run.push(format!(
            "{}={}",
            env["name"].as_str().unwrap(),
            env["value"].as_str().unwrap()
        ));
    }
    for mount in &mounts {
        run.push("--volume".into());
        run.push(mount.clone());
    }
    run.push(IMAGE.into());
    for arg in container["args"].as_array().unwrap() {
        run.push(arg.as_str().unwrap().into());
    }
    let run: Vec<&str> = run.iter().map(String::as_str).collect();
    engine.podman_ok(&run);
    let running = Container {
        engine: &engine,
        name: name.clone(),
    };

    // Readiness as the kubelet polls it, then liveness.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (url, code) = probe(container, "readinessProbe");
        if (200..400).contains(&code) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the readiness probe {url} never passed (last: {code}); logs:\n{}",
            running.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (url, code) = probe(container, "livenessProbe");
    assert!((200..400).contains(&code), "liveness {url}: {code}");

    // The process: uid/gid 65532, the release binary, a read-only root, no capabilities.
    let pid = running.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    for (field, want) in [("Uid:", "65532"), ("Gid:", "65532")] {
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        assert!(
            line.split_whitespace().skip(1).all(|id| id == want),
            "{line}"
        );
    }
    let line = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    assert!(line.ends_with("0000000000000000"), "{line}");
    let line = status
        .lines()
        .find(|l| l.starts_with("NoNewPrivs:"))
        .unwrap();
    assert!(line.ends_with('1'), "{line}");
    assert!(
        std::fs::read(format!("/proc/{pid}/exe")).unwrap() == std::fs::read(&release).unwrap(),
        "the container does not run {}",
        release.display()
    );
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap();
    let options = root.split_whitespace().nth(5).unwrap();
    assert!(options.split(',').any(|o| o == "ro"), "root mount: {root}");
    assert_eq!(running.inspect("{{.HostConfig.ReadonlyRootfs}}"), "true");

    // gRPC through the gate to the stand-in pachd, by the name the ConfigMap gives it.
    let https = port_of(container, &Value::from("https"));
    let calls = volumes.path();
    let echo = grpc_call(
        calls,
        &ca,
        https,
        ECHO_UNARY,
        "demo-token",
        b"\x0a\x05hello",
    );
    assert_eq!(echo.status.as_deref(), Some("0"), "{}", echo.message);
    assert_eq!(echo_fields(&echo.body).0, b"hello");

    // A wrong token: refused by the gate with pachd's words, and never reaches pachd.
    let stats = |calls: &Path| {
        let answer = grpc_call(
            calls,
            &ca,
            https,
            "/pachgate.standin.Echo/Stats",
            "demo-token",
            b"",
        );
        assert_eq!(answer.status.as_deref(), Some("0"), "{}", answer.message);
        echo_fields(&answer.body).1
    };
    let before = stats(calls);
    let refused = grpc_call(calls, &ca, https, ECHO_UNARY, "wrong", b"\x0a\x01x");
    assert_eq!(refused.status.as_deref(), Some("16"), "{}", refused.message);
    assert!(
        refused.message.contains("corrupted or has expired"),
        "{}",
        refused.message
    );
    assert_eq!(stats(calls), before, "a refused call reached pachd");

    // The console route (HTTP/1.1 upstream) and the plaintext listener's redirect.
    let console = Command::new("curl")
        .args(["-s", "--max-time", "20", "--cacert"])
        .arg(&ca)
        .args(["--resolve", &format!("{HOST}:{https}:127.0.0.1")])
        .arg(format!("https://{HOST}:{https}/headers"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&console.stdout);
    assert!(text.starts_with("GET /headers"), "{text}");
    let http = port_of(container, &Value::from("http"));
    let redirect = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .args(["-H", &format!("host: {HOST}")])
        .arg(format!("http://127.0.0.1:{http}/lab?x=1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&redirect.stdout),
        format!("308 https://{HOST}/lab?x=1")
    );

    // SIGTERM, as the kubelet stops a pod, with a call in flight (the stand-in answers it
    // after 3 s): the pod leaves readiness at once, the call is answered, and the process
    // exits cleanly well within the grace period.
    // grpcio, not curl: curl 7.88 drops trailers that arrive just before the connection
    // closes, as they do here once the drain ends.
    let target = format!("localhost:{https}");
    let ca_arg = ca.to_str().unwrap().to_string();
    let slow = std::thread::spawn(move || {
        let output = python(
            "grpc_outcome.py",
            &[
                "--target",
                &target,
                "--ca",
                &ca_arg,
                "--token",
                "demo-token",
                "--interval-ms",
                "3000",
                "unary",
            ],
        );
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    });
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let stop = std::thread::scope(|scope| {
        let stop = scope.spawn(|| engine.podman(&["stop", "--time", &grace.to_string(), &name]));
        std::thread::sleep(Duration::from_millis(300));
        let (url, code) = probe(container, "readinessProbe");
        assert!(
            !(200..400).contains(&code),
            "{url} still ready while draining: {code}"
        );
        stop.join().unwrap()
    });
    let took = started.elapsed();
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    assert!(
        took < Duration::from_secs(grace),
        "podman stop took {took:?}; grace period {grace}s"
    );
    let slow = slow.join().unwrap();
    assert_eq!(slow["code"], "OK", "the call in flight at SIGTERM: {slow}");
    assert_eq!(slow["replies"], 1, "{slow}");
    assert!(
        took >= Duration::from_millis(1500),
        "stopped in {took:?}, before the call in flight was answered"
    );
    assert_eq!(running.inspect("{{.State.Status}}"), "exited");
    assert_eq!(
        running.inspect("{{.State.ExitCode}}"),
        "0",
        "logs:\n{}",
        running.logs()
    );
    let logs = running.logs();
    assert!(logs.contains("drained; exiting"), "{logs}");
    assert!(
        !logs.contains("demo-token"),
        "a token reached the log:\n{logs}"
    );
}
