//! The listener's certificates while it runs: picking one per handshake by SNI (exact name,
//! then a one-label wildcard, then the default), and swapping in new files when they change
//! without touching open connections.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pachgate_file_watch::FileWatch;

use crate::client_auth::ReloadingClientVerifier;
use crate::listener::ListenerTlsFiles;
use crate::load::{certified_key, load_checked, read};
use crate::{CertificateInfo, TlsError};

/// After a file-system event, how long a rotation's several file operations get to land.
const CERTIFICATE_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Picks the certificate for a handshake by SNI; falls back to the default.
#[derive(Debug)]
pub(crate) struct SniResolver {
    /// What is served, for metrics and the status page.
    certificates: Vec<CertificateInfo>,
    exact: HashMap<String, Arc<rustls::sign::CertifiedKey>>,
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

/// The built server configuration plus the handle that reloads its certificates.
pub struct ListenerTlsHandle {
    pub config: Arc<rustls::ServerConfig>,
    pub(crate) resolver: Arc<ReloadingResolver>,
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
        let mut watch = self.start_watcher();
        if watch.is_none() {
            tracing::warn!("no file-system watch for certificates; re-checking periodically");
        }
        let mut tick = tokio::time::interval(fallback);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { watch.as_mut()?.changed().await } => {
                    // A rotation is several file operations; let them land, then read once.
                    if let Some(watch) = watch.as_mut() {
                        watch.settle(CERTIFICATE_SETTLE).await;
                    }
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

    /// Every directory holding one of the files; no watch unless all can be watched.
    fn start_watcher(&self) -> Option<FileWatch> {
        let files = &self.resolver.files;
        let dirs = std::iter::once(&files.default)
            .chain(files.sni.iter().map(|(_, p)| p))
            .flat_map(|p| [p.cert.clone(), p.key.clone()])
            .chain(files.client_ca.clone())
            .filter_map(|p| p.parent().map(Path::to_path_buf));
        FileWatch::directories(dirs).ok()
    }
}

#[derive(Debug)]
pub(crate) struct ReloadingResolver {
    pub(crate) current: arc_swap::ArcSwap<SniResolver>,
    pub(crate) files: ListenerTlsFiles,
    /// The bytes of every file as last loaded (or last refused), to notice changes.
    pub(crate) loaded: std::sync::Mutex<Vec<u8>>,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    /// The client-certificate check, rebuilt with the certificates when `client_ca` is set.
    pub(crate) client_verifier: Option<Arc<ReloadingClientVerifier>>,
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
    pub(crate) fn all_bytes(files: &ListenerTlsFiles) -> Result<Vec<u8>, TlsError> {
        let mut bytes = Vec::new();
        let pairs = std::iter::once(&files.default).chain(files.sni.iter().map(|(_, p)| p));
        for paths in pairs {
            for path in [&paths.cert, &paths.key] {
                bytes.extend(read(path)?);
                bytes.push(0);
            }
        }
        if let Some(path) = &files.client_ca {
            bytes.extend(read(path)?);
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
        // Both built before either is swapped: a refused file changes nothing.
        let resolver = build_resolver(&self.files, &self.provider)?;
        if let (Some(verifier), Some(path)) = (&self.client_verifier, &self.files.client_ca) {
            verifier.reload(path, &self.provider)?;
        }
        self.current.store(Arc::new(resolver));
        Ok(true)
    }
}

pub(crate) fn build_resolver(
    files: &ListenerTlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<SniResolver, TlsError> {
    let mut exact = HashMap::new();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        ensure_self_signed, listener_config, load_ca_certificates, load_cert_and_key,
        upstream_client_config, CertPaths, CertifiedKeyPem, GeneratedPaths, MinVersion,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::fs;

    /// A whole TLS handshake between rustls peers in memory; the leaf the server presented.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<CertificateDer<'static>, rustls::Error> {
        let name = ServerName::try_from(name.to_string()).unwrap();
        let mut client = rustls::ClientConnection::new(client, name)?;
        let mut server = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            if !client.is_handshaking() && !server.is_handshaking() {
                return Ok(client.peer_certificates().unwrap()[0].clone().into_owned());
            }
            pump(&mut client, &mut server)?;
            pump(&mut server, &mut client)?;
        }
        panic!("the handshake did not finish");
    }

    /// Everything `from` has to send, into `to`.
    fn pump<A, B>(
        from: &mut rustls::ConnectionCommon<A>,
        to: &mut rustls::ConnectionCommon<B>,
    ) -> Result<(), rustls::Error> {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut rest = &wire[..];
        while !rest.is_empty() {
            to.read_tls(&mut rest).unwrap();
            to.process_new_packets()?;
        }
        Ok(())
    }

    fn pair(generated: &GeneratedPaths) -> CertPaths {
        CertPaths {
            cert: generated.cert.clone(),
            key: generated.key.clone(),
        }
    }

    fn leaf(generated: &GeneratedPaths) -> CertificateDer<'static> {
        load_cert_and_key(&generated.cert, &generated.key)
            .unwrap()
            .chain
            .remove(0)
    }

    #[test]
    fn sni_picks_exact_then_one_label_wildcard_then_default() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let default =
            ensure_self_signed(a.path(), &["a.test".into(), "y.x.b.test".into()]).unwrap();
        let wildcard = ensure_self_signed(b.path(), &["*.b.test".into()]).unwrap();
        let handle = listener_config(ListenerTlsFiles {
            default: pair(&default),
            sni: vec![(vec!["*.B.test".into()], pair(&wildcard))],
            client_ca: None,
            min_version: MinVersion::Tls12,
        })
        .unwrap();
        let mut roots = load_ca_certificates(&default.ca_cert).unwrap();
        roots.extend(load_ca_certificates(&wildcard.ca_cert).unwrap());
        let client = upstream_client_config(roots, None, &[b"h2"]).unwrap();

        let served = |name| handshake(handle.config.clone(), client.clone(), name).unwrap();
        assert_eq!(served("a.test"), leaf(&default));
        // Names compare without case; the wildcard covers one label only.
        assert_eq!(served("X.b.test"), leaf(&wildcard));
        assert_eq!(served("y.x.b.test"), leaf(&default));
        let names: Vec<_> = handle.certificates().into_iter().map(|c| c.names).collect();
        assert_eq!(
            names,
            [vec!["a.test", "y.x.b.test"], vec!["*.b.test"]],
            "the default first, then the SNI certificates"
        );
    }

    #[test]
    fn reload_takes_new_files_and_keeps_serving_when_they_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let generated = ensure_self_signed(dir.path(), &["a.test".into()]).unwrap();
        let handle = listener_config(ListenerTlsFiles {
            default: pair(&generated),
            sni: Vec::new(),
            client_ca: None,
            min_version: MinVersion::Tls13,
        })
        .unwrap();
        assert!(!handle.reload().unwrap(), "unchanged files are no reload");

        ensure_self_signed(dir.path(), &["b.test".into()]).unwrap();
        assert!(handle.reload().unwrap());
        assert_eq!(handle.certificates()[0].names, ["b.test"]);
        let roots = load_ca_certificates(&generated.ca_cert).unwrap();
        let client = upstream_client_config(roots, None, &[b"h2"]).unwrap();
        let served = handshake(handle.config.clone(), client.clone(), "b.test").unwrap();
        assert_eq!(served, leaf(&generated));

        fs::write(&generated.cert, "not a certificate").unwrap();
        assert!(handle.reload().is_err());
        assert!(!handle.reload().unwrap(), "a refused file is reported once");
        assert_eq!(handle.certificates()[0].names, ["b.test"]);
        assert_eq!(
            handshake(handle.config.clone(), client, "b.test").unwrap(),
            served,
            "the certificate in use keeps serving"
        );
    }

    /// A client CA and a client certificate it issued (extended key usage: client auth).
    fn client_ca_and_certificate() -> (String, CertifiedKeyPem) {
        use rcgen::{
            BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["robot".to_string()]).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let client = CertifiedKeyPem {
            chain: vec![cert.der().clone()],
            key: rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        };
        (ca.pem(), client)
    }

    /// The `client_ca` file is reloaded with the certificates: once it names another CA,
    /// clients of the old one are refused and clients of the new one let in; a broken file
    /// leaves the CA in use.
    #[test]
    fn a_changed_client_ca_is_applied_on_reload() {
        let dir = tempfile::tempdir().unwrap();
        let server = ensure_self_signed(dir.path(), &["a.test".into()]).unwrap();
        let (old_ca, old_client) = client_ca_and_certificate();
        let (new_ca, new_client) = client_ca_and_certificate();
        let client_ca = dir.path().join("clients.crt");
        fs::write(&client_ca, &old_ca).unwrap();
        let handle = listener_config(ListenerTlsFiles {
            default: pair(&server),
            sni: Vec::new(),
            client_ca: Some(client_ca.clone()),
            min_version: MinVersion::Tls13,
        })
        .unwrap();
        let roots = || load_ca_certificates(&server.ca_cert).unwrap();
        let old = upstream_client_config(roots(), Some(old_client), &[b"h2"]).unwrap();
        let new = upstream_client_config(roots(), Some(new_client), &[b"h2"]).unwrap();
        let accepted = |client: &Arc<rustls::ClientConfig>| {
            handshake(handle.config.clone(), client.clone(), "a.test").is_ok()
        };
        assert!(accepted(&old));
        assert!(!accepted(&new));

        fs::write(&client_ca, &new_ca).unwrap();
        assert!(handle.reload().unwrap());
        assert!(!accepted(&old), "the removed CA's client is refused");
        assert!(accepted(&new), "the new CA's client is let in");

        fs::write(&client_ca, "not a certificate").unwrap();
        assert!(handle.reload().is_err());
        assert!(accepted(&new), "a refused file leaves the CA in use");
        assert!(!accepted(&old));
    }
}
