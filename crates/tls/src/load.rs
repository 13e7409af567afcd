//! Reading certificate material from disk: PEM chains and keys (PKCS#8, PKCS#1, SEC1), CA
//! bundles, and the checks the listener relies on (the key matches the certificate), with
//! the names and expiry a served certificate reports.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::TlsError;

/// A certificate chain and its private key, parsed from PEM.
pub struct CertifiedKeyPem {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

/// Reads a PEM chain (leaf first) and a PEM private key in any of PKCS#8, PKCS#1 or SEC1.
pub fn load_cert_and_key(cert: &Path, key: &Path) -> Result<CertifiedKeyPem, TlsError> {
    let chain = read_certificates(cert)?;
    let key_pem = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    Ok(CertifiedKeyPem { chain, key })
}

/// Checks a certificate and key the way the listener will use them: PEM parses, the key
/// matches the certificate. For config validation. An expired certificate passes (its
/// [`CertificateInfo::has_expired`] says so): it is served with a warning, as one host's
/// lapsed certificate must not stop a start or a reload that every other host needs.
pub fn check_pair(cert: &Path, key: &Path) -> Result<CertificateInfo, TlsError> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let paths = CertPaths {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
    };
    load_served(&paths, &provider).map(|(_, info)| info)
}

/// Checks a `client_ca` file the way the listener will use it: PEM parses, and every
/// certificate in it is one a client certificate can be verified against. For config
/// validation.
pub fn check_client_ca(path: &Path) -> Result<(), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    crate::client_auth::ReloadingClientVerifier::load(path, &provider).map(|_| ())
}

/// A pair as the listener serves it: loaded, described ([`load_described`]), and its key
/// matched with the certificate; errors name both files.
pub(crate) fn load_served(
    paths: &CertPaths,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<(Arc<rustls::sign::CertifiedKey>, CertificateInfo), TlsError> {
    let (material, info) = load_described(paths)?;
    let key = rustls::sign::CertifiedKey::from_der(material.chain, material.key, provider)
        .map_err(|source| TlsError::Pair {
            cert: paths.cert.clone(),
            key: paths.key.clone(),
            source,
        })?;
    Ok((Arc::new(key), info))
}

/// Reads PEM CA certificates for client verification.
pub fn load_ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    read_certificates(path)
}

/// Every PEM certificate in a file, in order; none is an error.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
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

/// A file's bytes; the error names the file.
pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate and key on disk.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
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

impl CertificateInfo {
    /// Whether its notAfter has passed (a leaf whose validity could not be read has not).
    pub fn has_expired(&self) -> bool {
        self.not_after != 0 && self.not_after < unix_now()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Loads a pair and reads what its leaf says of itself (names, notAfter).
fn load_described(paths: &CertPaths) -> Result<(CertifiedKeyPem, CertificateInfo), TlsError> {
    let material = load_cert_and_key(&paths.cert, &paths.key)?;
    let mut info = CertificateInfo {
        names: Vec::new(),
        file: paths.cert.clone(),
        not_after: 0,
    };
    if let Ok((_, leaf)) = x509_parser::parse_x509_certificate(material.chain[0].as_ref()) {
        info.not_after = leaf.validity().not_after.timestamp();
        info.names = certificate_names(&leaf);
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

/// SHA-256 fingerprint of the first certificate in a PEM file, as colon-separated hex.
pub fn fingerprint_sha256(cert: &Path) -> Result<String, TlsError> {
    let material = read(cert)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ensure_self_signed;

    fn hosts() -> Vec<String> {
        vec!["localhost".into(), "127.0.0.1".into()]
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
        let error = check_pair(&pa.cert, &pb.key).unwrap_err().to_string();
        assert!(error.contains(&*pa.cert.to_string_lossy()), "{error}");
        assert!(error.contains(&*pb.key.to_string_lossy()), "{error}");
        assert!(error.contains("does not belong"), "{error}");
    }

    /// A client CA file whose PEM block holds no certificate a client can be verified
    /// against is refused when the config is checked, naming the file.
    #[test]
    fn an_unusable_client_ca_is_refused_naming_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.crt");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = check_client_ca(&path).unwrap_err().to_string();
        assert!(error.contains(&*path.to_string_lossy()), "{error}");
        assert!(error.contains("not a usable client CA"), "{error}");

        let generated = ensure_self_signed(dir.path(), &hosts()).unwrap();
        check_client_ca(&generated.ca_cert).unwrap();
    }
}
