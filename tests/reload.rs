//! Config reload under load, on SIGHUP and on a file change: a route added, then a broken
//! file, then a fixed one, while grpcio calls run on kept and new connections: zero failed
//! calls, the new route works, the broken file changes nothing and is reported with
//! file:line:column and counted; listeners added or moved by a reload serve at once; a
//! ConfigMap-style `..data` symlink swap is seen by the file watch. What a reload keeps of
//! the running state is tested in-process (proxy-core's `reload_carry_over`).

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// gRPC to pachd and `/old` to console; reloads add routes to it.
fn config(standins: &Running) -> TestConfig {
    TestConfig::new()
        .upstream("pachd", standins.address("standin-pachd"), "h2c")
        .upstream("console", standins.address("standin-console"), "http1")
        .route("pachd-grpc", "grpc = true", "pachd")
        .route("old", "path_prefix = \"/old\"", "console")
}

/// A route to console at `/NAME`.
fn console_route(config: TestConfig, name: &str) -> TestConfig {
    config.route(name, &format!("path_prefix = \"/{name}\""), "console")
}

const HTTPS: &str = "127.0.0.1:0";

#[test]
fn sighup_reloads_a_valid_config_and_refuses_a_broken_one_under_load() {
    let standins = standins();
    let proxy = pachgate_config(&config(&standins).file(HTTPS), 1);
    let path = proxy.dir.path().join("pachgate.toml");
    let added = console_route(config(&standins), "added");
    let ca = proxy.ca();
    let status = |route: &str| {
        http_code(
            &["--cacert", ca.to_str().unwrap()],
            &format!("https://{}{route}", proxy.target()),
        )
    };
    assert_eq!(status("/added"), "404");

    let client = start_call_loop(&proxy.target(), &proxy.ca(), 8, &[]);

    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(&path, added.file(HTTPS)).unwrap();
    proxy.running.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status("/added"), "200", "the added route does not answer");
    // Only a route changed: both upstreams go on (connections, health, counts).
    stderr_until(
        &proxy.running,
        "upstreams_kept=2 upstreams_new=0",
        Duration::from_secs(5),
    );

    // Broken: an unknown key on line 3. Nothing changes; the error names the place.
    let broken = added
        .file(HTTPS)
        .replace("[listen]\n", "[listen]\nbogus = 1\n");
    std::fs::write(&path, broken).unwrap();
    proxy.running.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        status("/added"),
        "200",
        "a broken file changed the running config"
    );
    let log = proxy.running.stderr_so_far();
    assert!(
        log.contains(&format!("{}:2:1", path.display())) && log.contains("config reload refused"),
        "{log}"
    );

    // Fixed again, with one more route.
    let fixed = console_route(added, "fixed");
    std::fs::write(&path, fixed.file(HTTPS)).unwrap();
    proxy.running.signal("HUP");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(status("/fixed"), "200");

    finish_call_loop(client, "calls failed during reloads");
}

/// Collects stderr until a line contains `needle`.
fn stderr_until(running: &Running, needle: &str, within: Duration) -> String {
    let deadline = std::time::Instant::now() + within;
    let mut seen = String::new();
    while std::time::Instant::now() < deadline {
        seen.push_str(&running.stderr_so_far());
        if seen.contains(needle) {
            return seen;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("no stderr line with {needle:?}; saw:\n{seen}");
}

#[test]
fn a_file_change_reloads_without_a_signal_and_moves_listeners() {
    let standins = standins();
    let (admin_before, admin_after, plain) = (free_port(), free_port(), free_port());
    let before = config(&standins).listen(&format!("admin = \"127.0.0.1:{admin_before}\""));
    let proxy = pachgate_config(&before.file(HTTPS), 2);
    let path = proxy.dir.path().join("pachgate.toml");
    let ca = proxy.ca();
    let https_status = |route: &str| {
        http_code(
            &["--cacert", ca.to_str().unwrap()],
            &format!("https://{}{route}", proxy.target()),
        )
    };
    let plain_status = |url: String| http_code(&[], &url);

    let client = start_call_loop(&proxy.target(), &proxy.ca(), 8, &[]);
    std::thread::sleep(Duration::from_secs(1));

    // A route added, a plaintext listener added and the admin listener moved: no signal.
    let moved = format!(
        "admin = \"127.0.0.1:{admin_after}\"\nhttp = \"127.0.0.1:{plain}\"\nhttp_mode = \"serve\"\n"
    );
    let after = console_route(config(&standins), "added").listen(&moved);
    std::fs::write(&path, after.file(HTTPS)).unwrap();
    stderr_until(&proxy.running, "config reloaded", Duration::from_secs(10));
    assert_eq!(https_status("/added"), "200");
    assert_eq!(
        plain_status(format!("http://127.0.0.1:{plain}/added")),
        "200"
    );
    assert_eq!(
        plain_status(format!("http://127.0.0.1:{admin_after}/readyz")),
        "200"
    );
    assert_eq!(
        plain_status(format!("http://127.0.0.1:{admin_before}/readyz")),
        "000",
        "the old admin address still answers"
    );

    // Broken: refused, counted, and the running config (and its listeners) stay.
    std::fs::write(
        &path,
        after
            .file(HTTPS)
            .replace("[[routes]]", "[[routes]]\nbogus = 1"),
    )
    .unwrap();
    stderr_until(
        &proxy.running,
        "config reload refused",
        Duration::from_secs(10),
    );
    assert_eq!(https_status("/added"), "200");
    let samples = scrape_metrics(format!("127.0.0.1:{admin_after}").parse().unwrap());
    assert_eq!(
        samples["pachgate_config_reloads_total{result=ok}"], 1.0,
        "{samples:#}"
    );
    assert_eq!(
        samples["pachgate_config_reloads_total{result=failed}"], 1.0,
        "{samples:#}"
    );

    finish_call_loop(client, "calls failed during reloads");
}

/// A Kubernetes ConfigMap volume: `pachgate.toml -> ..data/pachgate.toml`, and an update
/// swaps the `..data` symlink to a new directory in one rename.
#[test]
fn a_configmap_style_symlink_swap_reloads() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write_version = |name: &str, text: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("pachgate.toml"), text).unwrap();
    };
    write_version("..v1", &config(&standins).file(HTTPS));
    std::os::unix::fs::symlink("..v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/pachgate.toml", root.join("pachgate.toml")).unwrap();
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--config"])
        .arg(root.join("pachgate.toml"))
        .env("PACHGATE_WORKER_THREADS", "2");
    let running = start(command, 1);
    let target = format!("localhost:{}", running.address("https").port());
    let ca = root.join("certs/ca.crt");
    let status = |route: &str| {
        http_code(
            &["--cacert", ca.to_str().unwrap()],
            &format!("https://{target}{route}"),
        )
    };
    assert_eq!(status("/added"), "404");

    // What the kubelet does: write the new version, point a temporary link at it, rename.
    write_version(
        "..v2",
        &console_route(config(&standins), "added").file(HTTPS),
    );
    std::os::unix::fs::symlink("..v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    stderr_until(&running, "config reloaded", Duration::from_secs(10));
    assert_eq!(status("/added"), "200");
}

/// `[tls]` settings reload too: new handshakes get the new policy on the same socket.
#[test]
fn tls_settings_change_on_reload_for_new_handshakes() {
    let standins = standins();
    let proxy = pachgate_config(&config(&standins).file(HTTPS), 1);
    let path = proxy.dir.path().join("pachgate.toml");
    let handshake = |version: &str| {
        Command::new("openssl")
            .args(["s_client", "-connect", &proxy.https().to_string(), version])
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(handshake("-tls1_2"), "TLS 1.2 refused before the reload");

    std::fs::write(
        &path,
        config(&standins).tls("min_version = \"1.3\"").file(HTTPS),
    )
    .unwrap();
    stderr_until(&proxy.running, "config reloaded", Duration::from_secs(10));
    assert!(
        !handshake("-tls1_2"),
        "TLS 1.2 still accepted after the reload"
    );
    assert!(handshake("-tls1_3"), "TLS 1.3 refused after the reload");
}

/// A reload that removes the https listener also drops its certificates from `/metrics`:
/// no expiry series is left for a certificate nobody is served any more.
#[test]
fn a_reload_without_https_drops_its_certificate_expiry_series() {
    let standins = standins();
    let (admin, plain) = (free_port(), free_port());
    let listen = format!(
        "admin = \"127.0.0.1:{admin}\"\nhttp = \"127.0.0.1:{plain}\"\nhttp_mode = \"serve\""
    );
    let with_https = config(&standins).listen(&listen);
    let proxy = pachgate_config(&with_https.file(HTTPS), 3);
    let expiry_series = || {
        let samples = scrape_metrics(format!("127.0.0.1:{admin}").parse().unwrap());
        let samples = samples.as_object().expect("the samples as a JSON object");
        samples
            .keys()
            .filter(|name| name.starts_with("pachgate_certificate_expiry"))
            .count()
    };
    assert_eq!(expiry_series(), 1);

    let plain_only = format!("[listen]\n{listen}\n\n{}", with_https.body());
    std::fs::write(proxy.dir.path().join("pachgate.toml"), plain_only).unwrap();
    stderr_until(&proxy.running, "config reloaded", Duration::from_secs(10));
    assert_eq!(
        http_code(&[], &format!("http://127.0.0.1:{plain}/old")),
        "200"
    );
    assert_eq!(
        expiry_series(),
        0,
        "the removed listener's certificate is gone"
    );
}

/// A reload refused because a port is taken changes nothing, not even on disk: the https
/// listener it would move is not announced, and the new self-signed hosts it names get no
/// certificate — the running listener watches the same files, so a leaf issued while the
/// reload was prepared would reach clients although the reload was refused.
#[test]
fn a_reload_refused_for_a_busy_port_announces_and_issues_nothing() {
    let standins = standins();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let proxy = pachgate_config(&config(&standins).file(HTTPS), 1);
    let leaf = proxy.dir.path().join("certs/tls.crt");
    let leaf_before = std::fs::read(&leaf).unwrap();

    let refused = config(&standins)
        .tls_hosts(&["localhost", "127.0.0.1", "added.test"])
        .listen(&format!(
            "http = \"127.0.0.1:{busy_port}\"\nhttp_mode = \"serve\""
        ))
        .file(&format!("127.0.0.1:{}", free_port()));
    std::fs::write(proxy.dir.path().join("pachgate.toml"), refused).unwrap();
    proxy.running.signal("HUP");
    let log = stderr_until(
        &proxy.running,
        "config reload refused",
        Duration::from_secs(10),
    );
    assert!(
        log.contains(&format!("127.0.0.1:{busy_port}")),
        "the refusal names the busy port: {log}"
    );
    // Time for the running listener's certificate watch to see a changed file.
    std::thread::sleep(Duration::from_secs(2));
    let announced = proxy.running.stdout_lines_now();
    assert!(
        announced.iter().all(|line| !line.contains("listening on")),
        "a refused reload announced {announced:?}"
    );
    assert!(
        std::fs::read(&leaf).unwrap() == leaf_before,
        "the refused reload issued a new leaf"
    );
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {} -servername added.test </dev/null 2>/dev/null \
             | openssl x509 -noout -ext subjectAltName",
            proxy.https()
        ))
        .output()
        .unwrap();
    let names = String::from_utf8_lossy(&served.stdout);
    assert!(
        names.contains("DNS:localhost"),
        "no certificate served: {names}"
    );
    assert!(
        !names.contains("added.test"),
        "the served certificate took a refused reload's host: {names}"
    );
    drop(busy);
}

/// An edit made the moment the listener is announced (a script that writes the config as
/// soon as the port is ready) is not lost: the file is watched before any listener is
/// announced, and an edit between the first read and the watch is reloaded at once.
#[test]
fn an_edit_as_soon_as_the_listener_is_ready_is_reloaded() {
    let standins = standins();
    let proxy = pachgate_config(&config(&standins).file(HTTPS), 1);
    let added = console_route(config(&standins), "added");
    std::fs::write(proxy.dir.path().join("pachgate.toml"), added.file(HTTPS)).unwrap();
    stderr_until(&proxy.running, "config reloaded", Duration::from_secs(10));
    let ca = proxy.ca();
    assert_eq!(
        http_code(
            &["--cacert", ca.to_str().unwrap()],
            &format!("https://{}/added", proxy.target())
        ),
        "200"
    );
}

/// One host's lapsed certificate stops neither a start nor a reload: pachgate serves it
/// with a warning (a client that checks it refuses the handshake with "certificate has
/// expired"), every other host keeps its own, and a route added by a reload works.
#[test]
fn a_lapsed_sni_certificate_stops_neither_start_nor_reload() {
    let standins = standins();
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["lapsed.example.com".into()]).unwrap();
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2025, 1, 1);
    let lapsed = params.self_signed(&key).unwrap();
    let (cert, key_file) = (
        certs.path().join("lapsed.crt"),
        certs.path().join("lapsed.key"),
    );
    std::fs::write(&cert, lapsed.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let sni = format!(
        "[[tls.sni]]\nhosts = [\"lapsed.example.com\"]\ncert = \"{}\"\nkey = \"{}\"",
        cert.display(),
        key_file.display()
    );
    let with_sni = |config: TestConfig| config.section(&sni);

    let proxy = pachgate_config(&with_sni(config(&standins)).file(HTTPS), 1);
    stderr_until(
        &proxy.running,
        "serving an expired certificate",
        Duration::from_secs(5),
    );
    let verified = Command::new("openssl")
        .args(["s_client", "-connect", &proxy.https().to_string()])
        .args(["-servername", "lapsed.example.com", "-CAfile"])
        .arg(&cert)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let verified = String::from_utf8_lossy(&verified.stdout);
    assert!(
        verified.contains("Verify return code: 10 (certificate has expired)"),
        "{verified}"
    );
    let ca = proxy.ca();
    let status = |route: &str| {
        http_code(
            &["--cacert", ca.to_str().unwrap()],
            &format!("https://{}{route}", proxy.target()),
        )
    };
    assert_eq!(status("/old"), "200", "the default certificate's host");

    let path = proxy.dir.path().join("pachgate.toml");
    let added = with_sni(console_route(config(&standins), "added"));
    std::fs::write(&path, added.file(HTTPS)).unwrap();
    stderr_until(&proxy.running, "config reloaded", Duration::from_secs(10));
    assert_eq!(status("/added"), "200", "the reload was not applied");
}

/// stdout is shared by the access log and the "listening on" lines. When whoever reads it
/// stops (a stuck log collector), the log's writes block; a reload that moves the admin
/// listener must still announce it without waiting, and `/healthz` must answer there.
#[test]
fn a_stdout_nobody_reads_stalls_no_reload_and_no_health_check() {
    let standins = standins();
    let (https, admin_before, admin_after) = (free_port(), free_port(), free_port());
    let https = format!("127.0.0.1:{https}");
    let admin = |port: u16| format!("admin = \"127.0.0.1:{port}\"");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pachgate.toml");
    std::fs::write(
        &path,
        config(&standins).listen(&admin(admin_before)).file(&https),
    )
    .unwrap();
    // stdout a pipe nobody reads, held open until the end.
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .env("PACHGATE_WORKER_THREADS", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let healthz = |port: u16| http_code(&["-m", "2"], &format!("http://127.0.0.1:{port}/healthz"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while healthz(admin_before) != "200" {
        assert!(
            std::time::Instant::now() < deadline,
            "pachgate never became healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Hundreds of access lines at least: the pipe (64 KiB) is full long before the end.
    let bench = Command::new(BIN)
        .args(["bench", "http", "--insecure", "--quiet", "--protocol", "h1"])
        .args(["--duration", "2s", "--connections", "4", "--target"])
        .arg(format!("https://{https}/old/x"))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&bench.stdout);
    let answered: u64 = report
        .lines()
        .find_map(|line| line.strip_prefix("ok"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    // About 160 lines of some 400 bytes fill a 64 KiB pipe.
    assert!(answered >= 300, "too few lines to fill stdout: {report}");

    std::fs::write(
        &path,
        config(&standins).listen(&admin(admin_after)).file(&https),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut answer = healthz(admin_after);
    while answer != "200" && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        answer = healthz(admin_after);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(answer, "200", "the moved admin listener never answered");
}
