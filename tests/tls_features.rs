//! TLS for production: certificates chosen by SNI (openssl s_client -servername), client
//! certificates required when `client_ca` is set (curl with and without one), and a TLS 1.3
//! floor.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn run(program: &str, args: &[&str], dir: &Path) -> String {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The subject alternative names of the certificate the server presents for `servername`.
fn presented_names(port: u16, servername: Option<&str>, dir: &Path) -> String {
    let connect = format!("127.0.0.1:{port}");
    let mut args = vec!["s_client", "-connect", &connect, "-showcerts"];
    match servername {
        Some(name) => args.extend(["-servername", name]),
        None => args.push("-noservername"),
    }
    let output = Command::new("openssl")
        .args(&args)
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let pem = String::from_utf8_lossy(&output.stdout);
    let start = pem
        .find("-----BEGIN CERTIFICATE-----")
        .expect("a certificate");
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + 25;
    std::fs::write(dir.join("presented.pem"), &pem[start..end]).unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-noout",
            "-ext",
            "subjectAltName",
            "-in",
            "presented.pem",
        ],
        dir,
    )
}

#[test]
fn certificates_are_chosen_by_sni() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    let bin = BIN;
    for (out, host) in [
        ("console", "console.example.com"),
        ("wild", "*.pach.example.com"),
    ] {
        run(
            bin,
            &["cert", "generate", "--out", out, "--host", host],
            dir.path(),
        );
    }
    let d = dir.path().display();
    let config = TestConfig::new()
        .tls_hosts(&["localhost"])
        .self_signed_dir("default")
        .section(&format!(
            "[[tls.sni]]\nhosts = [\"console.example.com\"]\ncert = \"{d}/console/tls.crt\"\nkey = \"{d}/console/tls.key\""
        ))
        .section(&format!(
            "[[tls.sni]]\nhosts = [\"*.pach.example.com\"]\ncert = \"{d}/wild/tls.crt\"\nkey = \"{d}/wild/tls.key\""
        ))
        .section(&standin_routes(&standins, ""));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let port = proxy.https().port();
    for (servername, want) in [
        (Some("console.example.com"), "DNS:console.example.com"),
        (Some("CONSOLE.example.com"), "DNS:console.example.com"),
        (Some("grpc.pach.example.com"), "DNS:*.pach.example.com"),
        (Some("a.b.pach.example.com"), "DNS:localhost"),
        (Some("unknown.example.org"), "DNS:localhost"),
        (None, "DNS:localhost"),
    ] {
        let names = presented_names(port, servername, dir.path());
        assert!(names.contains(want), "{servername:?}: got {names}");
    }
}

#[test]
fn client_certificates_are_required_when_client_ca_is_set() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A client CA and a client certificate (extendedKeyUsage clientAuth), made by openssl.
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "clients-ca.key",
            "-out",
            "clients-ca.crt",
            "-subj",
            "/CN=pachgate test clients",
            "-days",
            "2",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
        d,
    );
    run(
        "openssl",
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "client.key",
            "-out",
            "client.csr",
            "-subj",
            "/CN=robot",
        ],
        d,
    );
    std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    run(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "clients-ca.crt",
            "-CAkey",
            "clients-ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client.ext",
        ],
        d,
    );
    // A certificate from a CA pachgate does not trust.
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "stranger.key",
            "-out",
            "stranger.crt",
            "-subj",
            "/CN=stranger",
            "-days",
            "2",
        ],
        d,
    );

    let config = TestConfig::new()
        .tls_hosts(&["localhost"])
        .tls(&format!(
            "client_ca = \"{}/clients-ca.crt\"\nmin_version = \"1.3\"",
            d.display()
        ))
        .section(&standin_routes(&standins, ""));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    let url = format!("https://localhost:{}/", proxy.https().port());
    let curl = |extra: &[&str]| {
        let output = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
                "--cacert",
            ])
            .arg(proxy.ca())
            .args(extra)
            .arg(&url)
            .current_dir(d)
            .output()
            .unwrap();
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    assert_eq!(
        curl(&["--cert", "client.crt", "--key", "client.key"]),
        (0, "200".into())
    );
    let (exit, status) = curl(&[]);
    assert!(
        exit != 0 && status == "000",
        "no client certificate was accepted: {exit} {status}"
    );
    let (exit, status) = curl(&["--cert", "stranger.crt", "--key", "stranger.key"]);
    assert!(
        exit != 0 && status == "000",
        "an untrusted client certificate was accepted"
    );
    // TLS 1.3 only: a TLS 1.2 client is refused.
    let (exit, _) = curl(&[
        "--cert",
        "client.crt",
        "--key",
        "client.key",
        "--tls-max",
        "1.2",
    ]);
    assert_ne!(exit, 0, "TLS 1.2 was accepted with min_version = 1.3");
}

/// Kubernetes-style secret mount: `tls.crt -> ..data/tls.crt`, `..data -> <version dir>`,
/// updated by swapping the `..data` symlink.
fn point_data_at(secret: &Path, version: &str) {
    let temporary = secret.join("..data_tmp");
    let _ = std::fs::remove_file(&temporary);
    std::os::unix::fs::symlink(version, &temporary).unwrap();
    std::fs::rename(&temporary, secret.join("..data")).unwrap();
}

#[test]
fn certificates_rotate_under_load_and_bad_files_change_nothing() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::create_dir(&secret).unwrap();
    for (version, host) in [("v1", "v1.example"), ("v2", "v2.example")] {
        run(
            BIN,
            &[
                "cert",
                "generate",
                "--out",
                &format!("secret/{version}"),
                "--host",
                "localhost",
                "--host",
                host,
            ],
            dir.path(),
        );
    }
    // A third version whose certificate is not PEM at all.
    std::fs::create_dir(secret.join("v3")).unwrap();
    std::fs::write(secret.join("v3/tls.crt"), "not a certificate\n").unwrap();
    std::fs::copy(secret.join("v2/tls.key"), secret.join("v3/tls.key")).unwrap();
    point_data_at(&secret, "v1");
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), secret.join(file)).unwrap();
    }
    let bundle = dir.path().join("cas.pem");
    let cas = std::fs::read_to_string(secret.join("v1/ca.crt")).unwrap()
        + &std::fs::read_to_string(secret.join("v2/ca.crt")).unwrap();
    std::fs::write(&bundle, cas).unwrap();

    let s = secret.display();
    let config = TestConfig::new()
        .listen("admin = \"127.0.0.1:0\"")
        .tls_files(format!("{s}/tls.crt"), format!("{s}/tls.key"))
        .section(&standin_routes(&standins, ""));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 2);
    let port = proxy.https().port();
    assert!(presented_names(port, Some("localhost"), dir.path()).contains("DNS:v1.example"));

    let client = start_call_loop(&format!("localhost:{port}"), &bundle, 12, &[]);

    std::thread::sleep(std::time::Duration::from_secs(2));
    point_data_at(&secret, "v2");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let names = presented_names(port, Some("localhost"), dir.path());
    assert!(names.contains("DNS:v2.example"), "after the swap: {names}");

    point_data_at(&secret, "v3");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let names = presented_names(port, Some("localhost"), dir.path());
    assert!(
        names.contains("DNS:v2.example"),
        "a bad file replaced the certificate: {names}"
    );

    let summary = finish_call_loop(client, "calls failed during rotation");
    assert_eq!(summary["failed"], 0, "{summary}");
    let log = proxy.running.stderr_so_far();
    assert!(log.contains("TLS certificates reloaded"), "{log}");
    assert!(log.contains("refused"), "{log}");

    // The reloads are counted, and the expiry series names the certificate now served.
    let admin = proxy.running.address("admin");
    let samples = scrape_metrics(admin);
    assert_eq!(
        samples["pachgate_certificate_reloads_total{result=ok}"], 1.0,
        "{samples:#}"
    );
    assert_eq!(
        samples["pachgate_certificate_reloads_total{result=failed}"], 1.0,
        "{samples:#}"
    );
    let expiry: Vec<&String> = samples
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.starts_with("pachgate_certificate_expiry_timestamp_seconds{"))
        .collect();
    assert!(
        expiry.len() == 1 && expiry[0].contains("v2.example"),
        "{expiry:?}"
    );
}

#[test]
fn generated_certificates_serve_and_are_trusted_by_grpcio() {
    let standins = standins();
    let dir = tempfile::tempdir().unwrap();
    run(
        BIN,
        &[
            "cert",
            "generate",
            "--out",
            "tls",
            "--host",
            "localhost",
            "--host",
            "127.0.0.1",
        ],
        dir.path(),
    );
    let d = dir.path().display();
    let config = TestConfig::new()
        .tls_files(format!("{d}/tls/tls.crt"), format!("{d}/tls/tls.key"))
        .section(&standin_routes(&standins, ""));
    let proxy = pachgate_config(&config.file("127.0.0.1:0"), 1);
    grpc_check_at(
        &format!("localhost:{}", proxy.https().port()),
        &dir.path().join("tls/ca.crt"),
        "pachd-methods",
    );
}

/// The listener chooses the cipher suite: AES-128-GCM (TLS 1.3's mandatory suite) even for
/// a client that lists AES-256-GCM first, as OpenSSL's and rustls' clients do; a client
/// that offers only AES-256-GCM or ChaCha20 still gets what it offers.
#[test]
fn the_listener_prefers_aes_128_gcm() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let negotiated = |suites: &str| {
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &proxy.target(), "-tls1_3", "-brief"])
            .args(["-ciphersuites", suites])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        // -brief prints the handshake summary on stderr.
        let text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.lines()
            .find_map(|line| line.strip_prefix("Ciphersuite: "))
            .unwrap_or_else(|| panic!("no ciphersuite in {text}"))
            .trim()
            .to_string()
    };
    assert_eq!(
        negotiated("TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_128_GCM_SHA256"),
        "TLS_AES_128_GCM_SHA256"
    );
    assert_eq!(
        negotiated("TLS_AES_256_GCM_SHA384"),
        "TLS_AES_256_GCM_SHA384"
    );
    assert_eq!(
        negotiated("TLS_CHACHA20_POLY1305_SHA256"),
        "TLS_CHACHA20_POLY1305_SHA256"
    );
}

/// The listener takes the post-quantum hybrid key exchange (X25519MLKEM768) from a client
/// that asks for it first, as current browsers and Go clients do, and X25519 from one that
/// does not offer it (a rustls client, the key exchange groups set per case).
#[test]
fn the_listener_takes_the_post_quantum_hybrid_key_exchange() {
    use rustls::crypto::aws_lc_rs::{default_provider, kx_group};
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};

    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(proxy.ca()).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let roots = std::sync::Arc::new(roots);
    let negotiated = |groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>| {
        let mut provider = default_provider();
        provider.kx_groups = groups;
        let config = rustls::ClientConfig::builder_with_provider(provider.into())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").unwrap();
        let mut client = rustls::ClientConnection::new(config.into(), name).unwrap();
        let mut tcp = std::net::TcpStream::connect(proxy.https()).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        client.complete_io(&mut tcp).unwrap();
        assert!(!client.is_handshaking());
        client.negotiated_key_exchange_group().unwrap().name()
    };
    assert_eq!(
        negotiated(vec![kx_group::X25519MLKEM768, kx_group::X25519]),
        rustls::NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        negotiated(vec![kx_group::X25519MLKEM768]),
        rustls::NamedGroup::X25519MLKEM768
    );
    assert_eq!(
        negotiated(vec![kx_group::X25519, kx_group::X25519MLKEM768]),
        rustls::NamedGroup::X25519
    );
}

#[test]
fn hsts_header_on_tls_responses_when_enabled() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "hsts = true");
    let output = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "--cacert"])
        .arg(proxy.ca())
        .arg(format!("https://{}/", proxy.target()))
        .output()
        .unwrap();
    let headers = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(
        headers.contains("strict-transport-security: max-age=31536000"),
        "{headers}"
    );
}

/// An HTTP/1.1 backend behind TLS (`openssl s_server -www`, a TLS implementation not ours):
/// pachgate verifies it against the configured CA; a wrong CA is a 502 that says why.
#[test]
fn http1_tls_upstream_is_verified() {
    let dir = tempfile::tempdir().unwrap();
    run(
        BIN,
        &[
            "cert",
            "generate",
            "--out",
            "backend",
            "--host",
            "backend.internal",
        ],
        dir.path(),
    );
    let port = free_port();
    let mut server = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-www",
            "-quiet",
        ])
        .args(["-cert", "backend/tls.crt", "-key", "backend/tls.key"])
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        std::time::Duration::from_secs(10),
    );
    let route = |ca: &str| {
        TestConfig::new()
            .upstream_with(
                "backend",
                format!("127.0.0.1:{port}"),
                "http1-tls",
                &format!("ca = \"{ca}\"\nserver_name = \"backend.internal\""),
            )
            .route("all", "path_prefix = \"/\"", "backend")
            .start()
    };
    let good = route(&dir.path().join("backend/ca.crt").display().to_string());
    let curl = |proxy: &Proxy| {
        let output = Command::new("curl")
            .args(["-sS", "--http1.1", "-w", "\n%{http_code}", "--cacert"])
            .arg(proxy.ca())
            .arg(format!("https://{}/", proxy.target()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let answer = curl(&good);
    assert!(
        answer.ends_with("\n200") && answer.contains("s_server"),
        "{answer}"
    );

    let wrong_ca = good.ca().display().to_string();
    let wrong = route(&wrong_ca);
    let answer = curl(&wrong);
    assert!(
        answer.ends_with("\n502") && answer.contains("TLS verification failed"),
        "{answer}"
    );
    let _ = server.kill();
    let _ = server.wait();
}
