//! The listener's certificates while it runs: picking one per handshake by SNI (exact name,
//! then a one-label wildcard, then the default), and swapping in new files when they change
//! without touching open connections.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use pachgate_file_watch::FileWatch;

use crate::client_auth::ReloadingClientVerifier;
use crate::listener::ListenerTlsFiles;
use crate::load::{load_served, read, CertPaths};
use crate::{CertificateInfo, TlsError};

/// After a file-system event, how long a rotation's several file operations get to land.
const CERTIFICATE_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

/// Picks the certificate for a handshake by SNI; falls back to the default.
#[derive(Debug)]
pub(crate) struct SniResolver {
    /// What is served, for metrics and the status page: the default first, then the SNI
    /// entries in the config's order.
    certificates: Vec<CertificateInfo>,
    /// The key of each, in the same order: a reload replaces those whose files changed.
    keys: Vec<Arc<rustls::sign::CertifiedKey>>,
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
    /// Re-reads every certificate and key, and the client CA file, after renewing a
    /// self-signed leaf that is due. Each certificate is judged on its own: one whose files
    /// changed and load is served to new handshakes from now on; one whose new files are
    /// refused (cannot be read, do not parse, or hold an expired leaf in place of one still
    /// valid) keeps serving what it served, and so does every certificate whose files did
    /// not change (an unused SNI certificate that expired does not hold back the renewal of
    /// the others). Open connections are never touched.
    pub fn reload(&self) -> ReloadOutcome {
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
            // File reads, and a renewal's key generation and synced writes: off the worker
            // threads, which a slow volume would otherwise stall for every request.
            let handle = self.clone();
            let outcome = match tokio::task::spawn_blocking(move || handle.reload()).await {
                Ok(outcome) => outcome,
                Err(_) => continue, // the reload panicked: what was served stays
            };
            if outcome.changed {
                tracing::info!("TLS certificates reloaded; new handshakes use them");
                observe(&Ok(()));
            }
            for error in outcome.refused {
                tracing::error!(
                    %error,
                    "new TLS certificate files refused; what they would replace keeps serving"
                );
                observe(&Err(error));
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

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadOutcome {
    /// New material is served to new handshakes.
    pub changed: bool,
    /// Files that changed and were refused, or could not be read; what they would have
    /// replaced keeps serving. A refused file is reported once, until it changes again.
    pub refused: Vec<TlsError>,
}

#[derive(Debug)]
pub(crate) struct ReloadingResolver {
    pub(crate) current: arc_swap::ArcSwap<SniResolver>,
    pub(crate) files: ListenerTlsFiles,
    /// The bytes each certificate's files had when last loaded (or last refused), to
    /// notice changes: one entry per certificate, in [`SniResolver::certificates`]' order.
    pub(crate) loaded: std::sync::Mutex<LoadedBytes>,
    pub(crate) provider: Arc<rustls::crypto::CryptoProvider>,
    /// The client-certificate check, rebuilt with the certificates when `client_ca` is set.
    pub(crate) client_verifier: Option<Arc<ReloadingClientVerifier>>,
    /// The last failure to renew the self-signed leaf, reported once until it changes.
    pub(crate) renewal_failure: std::sync::Mutex<Option<String>>,
}

impl rustls::server::ResolvesServerCert for ReloadingResolver {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.load().resolve(hello)
    }
}

/// What the listener's files held when last loaded or refused.
#[derive(Debug, PartialEq)]
pub(crate) struct LoadedBytes {
    pairs: Vec<Vec<u8>>,
    client_ca: Option<Vec<u8>>,
}

impl LoadedBytes {
    pub(crate) fn read(files: &ListenerTlsFiles) -> Result<LoadedBytes, TlsError> {
        Ok(LoadedBytes {
            pairs: pairs(files).map(pair_bytes).collect::<Result<_, _>>()?,
            client_ca: files.client_ca.as_deref().map(read).transpose()?,
        })
    }
}

/// The default certificate's files, then each SNI entry's, in the config's order.
fn pairs(files: &ListenerTlsFiles) -> impl Iterator<Item = &CertPaths> {
    std::iter::once(&files.default).chain(files.sni.iter().map(|(_, paths)| paths))
}

fn pair_bytes(paths: &CertPaths) -> Result<Vec<u8>, TlsError> {
    let mut bytes = read(&paths.cert)?;
    bytes.push(0);
    bytes.extend(read(&paths.key)?);
    Ok(bytes)
}

impl ReloadingResolver {
    fn reload(&self) -> ReloadOutcome {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let mut outcome = ReloadOutcome::default();
        self.renew_self_signed(&mut outcome);
        let current = self.current.load_full();
        let mut certificates = current.certificates.clone();
        let mut keys = current.keys.clone();
        for (at, paths) in pairs(&self.files).enumerate() {
            let bytes = match pair_bytes(paths) {
                Ok(bytes) => bytes,
                Err(error) => {
                    outcome.refused.push(error);
                    continue;
                }
            };
            if loaded.pairs[at] == bytes {
                continue;
            }
            // Remembered either way, so a refused file is reported once.
            loaded.pairs[at] = bytes;
            match load_served(paths, &self.provider) {
                // A lapsed certificate does not replace one that still works.
                Ok((_, info)) if info.has_expired() && !certificates[at].has_expired() => {
                    outcome.refused.push(TlsError::BadCertificate {
                        path: paths.cert.clone(),
                        reason: "the certificate has expired".into(),
                    });
                }
                Ok((key, info)) => {
                    warn_if_expired(&info);
                    keys[at] = key;
                    certificates[at] = info;
                    outcome.changed = true;
                }
                Err(error) => outcome.refused.push(error),
            }
        }
        if let (Some(verifier), Some(path)) = (&self.client_verifier, &self.files.client_ca) {
            match read(path) {
                Err(error) => outcome.refused.push(error),
                Ok(bytes) if loaded.client_ca.as_ref() == Some(&bytes) => {}
                Ok(bytes) => {
                    loaded.client_ca = Some(bytes);
                    match verifier.reload(path, &self.provider) {
                        Ok(()) => outcome.changed = true,
                        Err(error) => outcome.refused.push(error),
                    }
                }
            }
        }
        if outcome.changed {
            self.current
                .store(Arc::new(SniResolver::new(&self.files, certificates, keys)));
        }
        outcome
    }

    /// Issues a new self-signed leaf when the served one nears its expiry; the files it
    /// writes are then read like any changed files. A failure (a read-only directory, say)
    /// is reported once until it changes: the leaf in use keeps serving meanwhile.
    fn renew_self_signed(&self, outcome: &mut ReloadOutcome) {
        let Some(self_signed) = &self.files.self_signed else {
            return;
        };
        let mut reported = self
            .renewal_failure
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match self_signed.renew_if_due() {
            Ok(renewed) => {
                if renewed {
                    tracing::info!(dir = %self_signed.dir.display(), "self-signed certificate renewed");
                }
                *reported = None;
            }
            Err(error) => {
                let text = error.to_string();
                if reported.as_deref() != Some(text.as_str()) {
                    *reported = Some(text);
                    outcome.refused.push(error);
                }
            }
        }
    }
}

/// A lapsed certificate is still served (clients that check it refuse the handshake with
/// a precise error), with a warning: refusing it would take every other host down with it.
fn warn_if_expired(info: &CertificateInfo) {
    if info.has_expired() {
        tracing::warn!(
            file = %info.file.display(),
            names = ?info.names,
            "serving an expired certificate: clients that check it will refuse the handshake; renew it"
        );
    }
}

/// Loads every certificate the listener serves; any refusal is an error (at startup, and
/// when a reload of the config builds the listener anew). An expired one is served, with a
/// warning.
pub(crate) fn build_resolver(
    files: &ListenerTlsFiles,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<SniResolver, TlsError> {
    let mut certificates = Vec::new();
    let mut keys = Vec::new();
    for paths in pairs(files) {
        let (key, info) = load_served(paths, provider)?;
        warn_if_expired(&info);
        keys.push(key);
        certificates.push(info);
    }
    Ok(SniResolver::new(files, certificates, keys))
}

impl SniResolver {
    /// `certificates` and `keys`: the default's first, then the SNI entries'.
    fn new(
        files: &ListenerTlsFiles,
        certificates: Vec<CertificateInfo>,
        keys: Vec<Arc<rustls::sign::CertifiedKey>>,
    ) -> SniResolver {
        let mut exact = HashMap::new();
        let mut wildcard = Vec::new();
        for ((hosts, _), key) in files.sni.iter().zip(&keys[1..]) {
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
        SniResolver {
            default: keys[0].clone(),
            certificates,
            keys,
            exact,
            wildcard,
        }
    }
}

#[cfg(test)]
#[path = "sni_tests.rs"]
mod tests;
