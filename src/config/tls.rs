//! The listener's TLS: certificate files or a self-signed pair, SNI certificates, client CA
//! and minimum version, checked (keys loaded) while validating.

use std::path::PathBuf;

use toml::Spanned;

use super::types::Tls;
use super::Validator;

/// Where the listener's certificate comes from, with paths already resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned { dir: PathBuf, hosts: Vec<String> },
}

impl TlsSource {
    /// The certificate and key files (generating them first for `self_signed`).
    fn paths(&self) -> Result<pachgate_tls::CertPaths, pachgate_tls::TlsError> {
        Ok(match self {
            TlsSource::Files { cert, key } => pachgate_tls::CertPaths {
                cert: cert.clone(),
                key: key.clone(),
            },
            TlsSource::SelfSigned { dir, hosts } => {
                let paths = pachgate_tls::ensure_self_signed(dir, hosts)?;
                pachgate_tls::CertPaths {
                    cert: paths.cert,
                    key: paths.key,
                }
            }
        })
    }
}

/// The TLS listener's whole setup, with paths resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTlsSource {
    pub default: TlsSource,
    /// (hosts, cert, key) chosen by SNI.
    pub sni: Vec<(Vec<String>, PathBuf, PathBuf)>,
    pub client_ca: Option<PathBuf>,
    pub min_version: pachgate_tls::MinVersion,
}

impl ListenerTlsSource {
    /// Builds the listener's server config, whose certificates can be reloaded later.
    pub fn server_config(&self) -> Result<pachgate_tls::ListenerTlsHandle, pachgate_tls::TlsError> {
        let sni = self
            .sni
            .iter()
            .map(|(hosts, cert, key)| {
                (
                    hosts.clone(),
                    pachgate_tls::CertPaths {
                        cert: cert.clone(),
                        key: key.clone(),
                    },
                )
            })
            .collect();
        let self_signed = match &self.default {
            TlsSource::SelfSigned { dir, hosts } => Some(pachgate_tls::SelfSigned {
                dir: dir.clone(),
                hosts: hosts.clone(),
            }),
            TlsSource::Files { .. } => None,
        };
        pachgate_tls::listener_config(pachgate_tls::ListenerTlsFiles {
            default: self.default.paths()?,
            sni,
            client_ca: self.client_ca.clone(),
            min_version: self.min_version,
            self_signed,
        })
    }
}

const DEFAULT_SELF_SIGNED_HOSTS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

impl Validator<'_> {
    pub(super) fn tls(
        &mut self,
        mut tls: Option<Spanned<Tls>>,
        https: Option<&Spanned<String>>,
    ) -> Option<ListenerTlsSource> {
        let mut sni = Vec::new();
        let mut client_ca = None;
        let mut min_version = pachgate_tls::MinVersion::Tls12;
        if let Some(tls) = tls.as_mut() {
            let tls = tls.get_mut();
            // A name in two entries would be served by one of them, by an accident of order.
            let mut named = std::collections::HashSet::new();
            for entry in tls.sni.take().unwrap_or_default() {
                let entry = entry.into_inner();
                if entry.hosts.get_ref().is_empty() {
                    self.err(
                        &entry.hosts.span(),
                        "tls.sni.hosts is empty: name at least one host",
                    );
                }
                for host in entry.hosts.get_ref() {
                    let name = host.strip_prefix("*.").unwrap_or(host);
                    let valid = !name.is_empty()
                        && !name.contains('*')
                        && name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                    if !valid {
                        self.err(
                            &entry.hosts.span(),
                            format!("tls.sni host {host:?}: expected a DNS name or `*.suffix`"),
                        );
                    } else if !named.insert(host.to_ascii_lowercase()) {
                        self.err(
                            &entry.hosts.span(),
                            format!("tls.sni host {host:?} is already named by an earlier [[tls.sni]] entry"),
                        );
                    }
                }
                let cert = self.path(entry.cert.get_ref());
                let key = self.path(entry.key.get_ref());
                if let Err(e) = pachgate_tls::check_pair(&cert, &key) {
                    self.err(&entry.cert.span(), format!("tls.sni cert/key: {e}"));
                }
                sni.push((entry.hosts.get_ref().clone(), cert, key));
            }
            if let Some(ca) = tls.client_ca.take() {
                let path = self.path(ca.get_ref());
                match pachgate_tls::check_client_ca(&path) {
                    Ok(()) => client_ca = Some(path),
                    Err(e) => self.err(&ca.span(), format!("tls.client_ca: {e}")),
                }
            }
            if let Some(version) = tls.min_version {
                min_version = version.into();
            }
        }
        let default = self.tls_default(tls, https)?;
        Some(ListenerTlsSource {
            default,
            sni,
            client_ca,
            min_version,
        })
    }

    fn tls_default(
        &mut self,
        tls: Option<Spanned<Tls>>,
        https: Option<&Spanned<String>>,
    ) -> Option<TlsSource> {
        let Some(tls) = tls else {
            if let Some(https) = https {
                self.err(
                    &https.span(),
                    "listen.https needs a [tls] section: `cert` and `key` files, or `self_signed = true`",
                );
            }
            return None;
        };
        let span = tls.span();
        let tls = tls.into_inner();
        if tls.self_signed {
            if tls.cert.is_some() || tls.key.is_some() {
                self.err(
                    &span,
                    "[tls] sets both `self_signed = true` and `cert`/`key`: choose one",
                );
                return None;
            }
            let dir = tls
                .self_signed_dir
                .as_ref()
                .map(|d| self.path(d.get_ref()))
                .unwrap_or_else(|| self.path("pachgate-certs"));
            let hosts = match &tls.hosts {
                Some(hosts) if hosts.get_ref().is_empty() => {
                    self.err(&hosts.span(), "tls.hosts is empty: name at least one host");
                    return None;
                }
                Some(hosts) => hosts.get_ref().clone(),
                None => DEFAULT_SELF_SIGNED_HOSTS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
            };
            return Some(TlsSource::SelfSigned { dir, hosts });
        }
        if let Some(hosts) = &tls.hosts {
            self.err(
                &hosts.span(),
                "tls.hosts only applies with self_signed = true (a loaded certificate carries its own names)",
            );
        }
        let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
            self.err(
                &span,
                "[tls] needs `cert` and `key` (PEM files), or `self_signed = true`",
            );
            return None;
        };
        let cert_path = self.path(cert.get_ref());
        let key_path = self.path(key.get_ref());
        let mut ok = true;
        for (value, path, what) in [(cert, &cert_path, "tls.cert"), (key, &key_path, "tls.key")] {
            if !path.is_file() {
                self.err(
                    &value.span(),
                    format!("{what}: file {} does not exist", path.display()),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        // Load now, so a bad PEM or a key that does not match is reported here, not at serve.
        if let Err(e) = pachgate_tls::check_pair(&cert_path, &key_path) {
            self.err(&cert.span(), format!("tls.cert/tls.key: {e}"));
            return None;
        }
        Some(TlsSource::Files {
            cert: cert_path,
            key: key_path,
        })
    }
}
