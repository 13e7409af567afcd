//! pachgate's TLS material: loads PEM certificate chains and keys, picks a certificate by SNI,
//! verifies client certificates (mTLS), builds the rustls server configuration (ALPN `h2` +
//! `http/1.1`, TLS 1.2+ or 1.3 only), and generates and remembers a private CA plus leaf
//! certificate with rcgen. The crypto under all of it is rustls' aws-lc-rs provider.
//!
//! Knows nothing about HTTP or sockets: it hands out `rustls::ServerConfig`s.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

pub use rustls;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found (expected `-----BEGIN CERTIFICATE-----` blocks)")]
    NoCertificate { path: PathBuf },
    #[error("{path}: not a PEM certificate chain: {reason}")]
    BadCertificate { path: PathBuf, reason: String },
    #[error("{path}: no private key found (expected a PKCS#8, PKCS#1 or SEC1 PEM key): {reason}")]
    BadKey { path: PathBuf, reason: String },
    #[error("certificate and key do not belong together, or are unusable: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The ALPN protocols pachgate offers, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A certificate chain and its private key, parsed from PEM.
pub struct CertifiedKeyPem {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Reads a PEM chain (leaf first) and a PEM private key in any of PKCS#8, PKCS#1 or SEC1.
pub fn load_cert_and_key(cert: &Path, key: &Path) -> Result<CertifiedKeyPem, TlsError> {
    let cert_pem = fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert.to_path_buf(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_path_buf(),
        });
    }
    let key_pem = fs::read(key).map_err(|source| TlsError::Read {
        path: key.to_path_buf(),
        source,
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(CertifiedKeyPem { chain, key })
}

/// Checks a certificate and key the way the listener will use them: PEM parses, the key
/// matches the certificate, the certificate has not expired. For config validation.
pub fn check_pair(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    certified_key(
        load_checked(&CertPaths {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
        })?
        .0,
        &provider,
    )
    .map(|_| ())
}

/// The lowest TLS version offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// Picks the certificate for a handshake by SNI; falls back to the default.
#[derive(Debug)]
struct SniResolver {
    /// What is served, for metrics and the status page.
    certificates: Vec<CertificateInfo>,
    exact: std::collections::HashMap<String, Arc<rustls::sign::CertifiedKey>>,
    /// `.example.com` for `*.example.com`.
    wildcard: Vec<(String, Arc<rustls::sign::CertifiedKey>)>,
    default: Arc<rustls::sign::CertifiedKey>,
}

impl SniResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        // A wildcard covers exactly one label, as in X.509.
        if let Some((_, parent)) = name.split_once('.') {
            let suffix = format!(".{parent}");
            if let Some((_, key)) = self.wildcard.iter().find(|(s, _)| *s == suffix) {
                return Some(key.clone());
            }
        }
        Some(self.default.clone())
    }
}

fn certified_key(
    material: CertifiedKeyPem,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
    Ok(Arc::new(rustls::sign::CertifiedKey::from_der(
        material.chain,
        material.key,
        provider,
    )?))
}

/// Reads PEM CA certificates for client verification.
pub fn load_ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The listener's certificates as files, so they can be re-read when they change.
#[derive(Debug, Clone)]
pub struct ListenerTlsFiles {
    pub default: CertPaths,
    pub sni: Vec<(Vec<String>, CertPaths)>,
    pub client_ca: Option<PathBuf>,
    pub min_version: MinVersion,
}

/// A certificate the listener serves: its names, file and expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The DNS names and IP addresses it is valid for (subjectAltName), else its CN.
    pub names: Vec<String>,
    pub file: PathBuf,
    /// notAfter, Unix seconds.
    pub not_after: i64,
}

/// The built server configuration plus the handle that reloads its certificates.
pub struct ListenerTlsHandle {
    pub config: Arc<ServerConfig>,
    resolver: Arc<ReloadingResolver>,
}

impl ListenerTlsHandle {
    /// Re-reads every certificate and key. `Ok(true)`: new material is now served to new
    /// handshakes; `Ok(false)`: nothing changed; `Err`: the new files were refused and the
    /// certificates in use stay (open connections are never touched either way).
    pub fn reload(&self) -> Result<bool, TlsError> {
        self.resolver.reload()
    }

    /// The certificates new handshakes get now.
    pub fn certificates(&self) -> Vec<CertificateInfo> {
        self.resolver.current.load().certificates.clone()
    }

    /// Keeps the served certificates in step with the files: a file-system watch (inotify
    /// on Linux) on the directories that hold them — which also sees Kubernetes swap the
    /// `..data` symlink of a mounted secret — and a re-check every `fallback` in case events
    /// are missed. Runs until the process ends.
    /// `observe` hears every reload that changed something or was refused.
    pub async fn watch(
        self: Arc<Self>,
        fallback: std::time::Duration,
        observe: impl Fn(&Result<(), TlsError>) + Send + 'static,
    ) {
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let watcher = self.start_watcher(events_tx);
        if watcher.is_none() {
            tracing::warn!("no file-system watch for certificates; re-checking periodically");
        }
        let mut tick = tokio::time::interval(fallback);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = events.recv() => {
                    // A rotation is several file operations; let them land, then read once.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    while events.try_recv().is_ok() {}
                }
            }
            match self.reload() {
                Ok(true) => {
                    tracing::info!("TLS certificates reloaded; new handshakes use them");
                    observe(&Ok(()));
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(
                        %error,
                        "new TLS certificate files refused; the certificates in use keep serving"
                    );
                    observe(&Err(error));
                }
            }
        }
    }

    fn start_watcher(
        &self,
        events: tokio::sync::mpsc::UnboundedSender<()>,
    ) -> Option<notify::RecommendedWatcher> {
        use notify::Watcher;
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if event.is_ok() {
                    let _ = events.send(());
                }
            })
            .ok()?;
        let files = &self.resolver.files;
        let mut dirs: Vec<PathBuf> = std::iter::once(&files.default)
            .chain(files.sni.iter().map(|(_, p)| p))
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            watcher
                .watch(&dir, notify::RecursiveMode::NonRecursive)
                .ok()?;
        }
        Some(watcher)
    }
}

#[derive(Debug)]
struct ReloadingResolver {
    current: arc_swap::ArcSwap<SniResolver>,
    files: ListenerTlsFiles,
    /// The bytes of every file as last loaded (or last refused), to notice changes.
    loaded: std::sync::Mutex<Vec<u8>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::ResolvesServerCert for ReloadingResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

impl ReloadingResolver {
    fn all_bytes(files: &ListenerTlsFiles) -> Result<Vec<u8>, TlsError> {
        let mut bytes = Vec::new();
        let pairs = std::iter::once(&files.default).chain(files.sni.iter().map(|(_, p)| p));
        for paths in pairs {
            for path in [&paths.cert, &paths.key] {
                bytes.extend(fs::read(path).map_err(|source| TlsError::Read {
                    path: path.clone(),
                    source,
                })?);
                bytes.push(0);
            }
        }
        Ok(bytes)
    }

    fn reload(&self) -> Result<bool, TlsError> {
        let bytes = Self::all_bytes(&self.files)?;
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if *loaded == bytes {
            return Ok(false);
        }
        // Remember what was seen either way, so a refused file is reported once.
        *loaded = bytes;
        let resolver = build_resolver(&self.files, &self.provider)?;
        self.current.store(Arc::new(resolver));
        Ok(true)
    }
}

fn load_checked(paths: &CertPaths) -> Result<(CertifiedKeyPem, CertificateInfo), TlsError> {
    let material = load_cert_and_key(&paths.cert, &paths.key)?;
    let mut info = CertificateInfo {
        names: Vec::new(),
        file: paths.cert.clone(),
        not_after: 0,
    };
    if let Ok((_, leaf)) = x509_parser::parse_x509_certificate(material.chain[0].as_ref()) {
        let not_after = leaf.validity().not_after.timestamp();
        info.not_after = not_after;
        info.names = certificate_names(&leaf);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if not_after < now {
            return Err(TlsError::BadCertificate {
                path: paths.cert.clone(),
                reason: "the certificate has expired".into(),
            });
        }
    }
    Ok((material, info))
}

fn certificate_names(leaf: &x509_parser::certificate::X509Certificate<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let mut names = Vec::new();
    if let Ok(Some(san)) = leaf.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => match bytes.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes"))
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*bytes).expect("16 bytes"))
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = leaf
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_string());
        }
    }
    names
}

fn build_resolver(
    files: &ListenerTlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<SniResolver, TlsError> {
    let mut exact = std::collections::HashMap::new();
    let mut wildcard = Vec::new();
    let mut certificates = Vec::new();
    for (hosts, paths) in &files.sni {
        let (material, info) = load_checked(paths)?;
        certificates.push(info);
        let key = certified_key(material, provider)?;
        for host in hosts {
            let host = host.to_ascii_lowercase();
            match host.strip_prefix('*') {
                Some(suffix) => wildcard.push((suffix.to_string(), key.clone())),
                None => {
                    exact.insert(host, key.clone());
                }
            }
        }
    }
    let (material, info) = load_checked(&files.default)?;
    certificates.insert(0, info);
    Ok(SniResolver {
        certificates,
        exact,
        wildcard,
        default: certified_key(material, provider)?,
    })
}

/// AWS-LC's suites for the listener, AES-128-GCM first within each TLS version.
///
/// rustls (and OpenSSL) clients list AES-256-GCM first; AES-128-GCM is TLS 1.3's mandatory
/// suite (RFC 8446 §9.1), what BoringSSL (Envoy) and Go (Traefik, Caddy) servers choose on
/// hardware with AES instructions, and needs 10 AES rounds per block instead of 14: less CPU
/// per byte on every large body and websocket stream.
///
/// Key exchange groups are the provider's: X25519MLKEM768 among them, so a client that asks
/// for the post-quantum hybrid first gets it (the server follows the client's group order).
/// AWS-LC rather than ring: its X25519 takes half of ring's time (25 vs 46 µs for a key pair
/// and an agreement), the largest item in a handshake's profile.
fn listener_provider() -> rustls::crypto::CryptoProvider {
    use rustls::CipherSuite::*;
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let rank = |suite: &rustls::SupportedCipherSuite| match suite.suite() {
        TLS13_AES_128_GCM_SHA256 => 0,
        TLS13_AES_256_GCM_SHA384 => 1,
        TLS13_CHACHA20_POLY1305_SHA256 => 2,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    provider.cipher_suites.sort_by_key(rank);
    provider
}

/// The listener's server configuration: SNI selection (reloadable), optional client
/// certificates, the minimum version, ALPN and session tickets.
pub fn listener_config(files: ListenerTlsFiles) -> Result<ListenerTlsHandle, TlsError> {
    let provider = Arc::new(listener_provider());
    let resolver = Arc::new(ReloadingResolver {
        current: arc_swap::ArcSwap::from_pointee(build_resolver(&files, &provider)?),
        loaded: std::sync::Mutex::new(ReloadingResolver::all_bytes(&files)?),
        files: files.clone(),
        provider: provider.clone(),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in load_ca_certificates(path)? {
                roots.add(ca)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    // The suite is ours to choose (listener_provider's order), not the client's.
    config.ignore_client_order = true;
    Ok(ListenerTlsHandle {
        config: Arc::new(config),
        resolver,
    })
}

/// A client configuration for TLS toward an upstream: trusts only `ca`, offers `alpn`, and
/// presents a client certificate when given one.
pub fn upstream_client_config(
    ca: Vec<CertificateDer<'static>>,
    client: Option<CertifiedKeyPem>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in ca {
        roots.add(cert)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(material) => builder.with_client_auth_cert(material.chain, material.key)?,
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Where a generated CA and leaf live. File names are those of a Kubernetes TLS secret.
#[derive(Debug, Clone)]
pub struct GeneratedPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl GeneratedPaths {
    pub fn in_dir(dir: &Path) -> Self {
        GeneratedPaths {
            ca_cert: dir.join("ca.crt"),
            ca_key: dir.join("ca.key"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }
}

/// Name of the file that records which hosts the stored leaf was issued for, so a changed
/// host list gets a new leaf while the CA (which clients may have pinned) stays.
const HOSTS_FILE: &str = "hosts.txt";

/// Makes sure `dir` holds a CA and a leaf valid for `hosts`, reusing what is already there.
///
/// The CA is generated once and kept, so a client can pin it; the leaf is re-issued only when
/// the host list changed or a file is missing. Keys are written with mode 0600.
pub fn ensure_self_signed(dir: &Path, hosts: &[String]) -> Result<GeneratedPaths, TlsError> {
    let paths = GeneratedPaths::in_dir(dir);
    fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let (ca_pem, ca_key) = if paths.ca_cert.exists() && paths.ca_key.exists() {
        let ca_pem = read_string(&paths.ca_cert)?;
        let key_pem = read_string(&paths.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::BadKey {
            path: paths.ca_key.clone(),
            reason: e.to_string(),
        })?;
        (ca_pem, key)
    } else {
        let (ca_pem, key) = generate_ca()?;
        write_file(&paths.ca_key, key.serialize_pem().as_bytes(), true)?;
        write_file(&paths.ca_cert, ca_pem.as_bytes(), false)?;
        // A new CA invalidates any leaf signed by an old one.
        let _ = fs::remove_file(dir.join(HOSTS_FILE));
        (ca_pem, key)
    };

    let hosts_record = hosts.join("\n");
    let recorded = fs::read_to_string(dir.join(HOSTS_FILE)).ok();
    let leaf_is_current =
        paths.cert.exists() && paths.key.exists() && recorded.as_deref() == Some(&hosts_record);
    if !leaf_is_current {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
        let (leaf_pem, leaf_key) = issue_leaf(hosts, &issuer)?;
        write_file(&paths.key, leaf_key.serialize_pem().as_bytes(), true)?;
        write_file(&paths.cert, leaf_pem.as_bytes(), false)?;
        write_file(&dir.join(HOSTS_FILE), hosts_record.as_bytes(), false)?;
    }
    Ok(paths)
}

/// Generates a fresh CA and leaf into `dir`, replacing what is there.
pub fn generate_into(dir: &Path, hosts: &[String]) -> Result<GeneratedPaths, TlsError> {
    let paths = GeneratedPaths::in_dir(dir);
    for path in [&paths.ca_cert, &paths.ca_key, &paths.cert, &paths.key] {
        let _ = fs::remove_file(path);
    }
    ensure_self_signed(dir, hosts)
}

/// SHA-256 fingerprint of the first certificate in a PEM file, as colon-separated hex.
pub fn fingerprint_sha256(cert: &Path) -> Result<String, TlsError> {
    let material = fs::read(cert).map_err(|source| TlsError::Read {
        path: cert.to_path_buf(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(&material).map_err(|e| TlsError::BadCertificate {
        path: cert.to_path_buf(),
        reason: e.to_string(),
    })?;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der.as_ref());
    Ok(digest
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":"))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little so a client whose clock is slightly behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn generate_ca() -> Result<(String, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "pachgate local CA");
    name.push(DnType::OrganizationName, "pachgate");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, 3650);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key))
}

fn issue_leaf(
    hosts: &[String],
    issuer: &Issuer<'_, KeyPair>,
) -> Result<(String, KeyPair), TlsError> {
    let key = KeyPair::generate()?;
    // `CertificateParams::new` turns IP literals into IP SANs and the rest into DNS SANs.
    let mut params = CertificateParams::new(hosts.to_vec())?;
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        hosts.first().map(String::as_str).unwrap_or("pachgate"),
    );
    params.distinguished_name = name;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, 397);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key))
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents).map_err(err)?;
    #[cfg(unix)]
    if private {
        // `mode` applies only when the file is created; tighten an existing file too.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
    }

    #[test]
    fn self_signed_is_reused_and_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_self_signed(dir.path(), &hosts()).unwrap();
        let ca_before = fs::read(&first.ca_cert).unwrap();
        let leaf_before = fs::read(&first.cert).unwrap();
        let second = ensure_self_signed(dir.path(), &hosts()).unwrap();
        assert_eq!(ca_before, fs::read(&second.ca_cert).unwrap());
        assert_eq!(leaf_before, fs::read(&second.cert).unwrap());
        check_pair(&second.cert, &second.key).unwrap();
    }

    #[test]
    fn changed_hosts_reissue_leaf_but_keep_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_self_signed(dir.path(), &hosts()).unwrap();
        let ca_before = fs::read(&first.ca_cert).unwrap();
        let leaf_before = fs::read(&first.cert).unwrap();
        ensure_self_signed(dir.path(), &["pach.example.com".to_string()]).unwrap();
        assert_eq!(ca_before, fs::read(&first.ca_cert).unwrap());
        assert_ne!(leaf_before, fs::read(&first.cert).unwrap());
    }

    #[cfg(unix)]
    #[test]
    fn keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let paths = ensure_self_signed(dir.path(), &hosts()).unwrap();
        for key in [&paths.key, &paths.ca_key] {
            let mode = fs::metadata(key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
    }

    #[test]
    fn bad_material_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("k.pem");
        fs::write(&cert, "not a certificate").unwrap();
        fs::write(&key, "not a key").unwrap();
        let err = load_cert_and_key(&cert, &key).err().unwrap().to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let missing = load_cert_and_key(&dir.path().join("nope"), &key)
            .err()
            .unwrap()
            .to_string();
        assert!(missing.contains("cannot read"), "{missing}");
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let pa = ensure_self_signed(a.path(), &hosts()).unwrap();
        let pb = ensure_self_signed(b.path(), &hosts()).unwrap();
        assert!(check_pair(&pa.cert, &pb.key).is_err());
    }
}
