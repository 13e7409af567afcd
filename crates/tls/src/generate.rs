//! The self-signed setup for local use and `pachgate generate`: a private CA, generated once
//! and kept so clients can pin it, and a leaf for the configured hosts, re-issued when the
//! host list changes or its expiry is near. Keys are written mode 0600.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::TlsError;

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
/// How long a generated leaf is valid: the most a publicly trusted one may be (browsers
/// refuse longer).
const LEAF_DAYS: i64 = 397;
/// A stored leaf with less than this left is issued anew (same CA) when pachgate starts: a
/// laptop's `pachgate local` used for over a year must not meet an expired certificate.
const LEAF_RENEW_BEFORE_DAYS: i64 = 30;

/// Makes sure `dir` holds a CA and a leaf valid for `hosts`, reusing what is already there.
///
/// The CA is generated once and kept, so a client can pin it; the leaf is re-issued only when
/// the host list changed, a file is missing, or it expires within
/// [`LEAF_RENEW_BEFORE_DAYS`] (or cannot be read). Keys are written with mode 0600.
pub fn ensure_self_signed(dir: &Path, hosts: &[String]) -> Result<GeneratedPaths, TlsError> {
    // One at a time in this process: a config reload and the running listener's renewal
    // may both issue a leaf, and one's key must not end up beside the other's certificate.
    static ISSUING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _issuing = ISSUING.lock().unwrap_or_else(|e| e.into_inner());
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
    let leaf_is_current = paths.cert.exists()
        && paths.key.exists()
        && recorded.as_deref() == Some(&hosts_record)
        && !expires_within(&paths.cert, LEAF_RENEW_BEFORE_DAYS);
    if !leaf_is_current {
        let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
        let (leaf_pem, leaf_key) = issue_leaf(hosts, &issuer, LEAF_DAYS)?;
        write_file(&paths.key, leaf_key.serialize_pem().as_bytes(), true)?;
        write_file(&paths.cert, leaf_pem.as_bytes(), false)?;
        write_file(&dir.join(HOSTS_FILE), hosts_record.as_bytes(), false)?;
    }
    Ok(paths)
}

/// A listener's self-signed certificate: where it is kept and the hosts its leaf names, so
/// a running listener can renew the leaf before it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelfSigned {
    pub dir: PathBuf,
    pub hosts: Vec<String>,
}

impl SelfSigned {
    /// Issues a new leaf (same CA) when the stored one expires within
    /// [`LEAF_RENEW_BEFORE_DAYS`] or cannot be read; `Ok(true)` when one was issued. Cheap
    /// when nothing is due (one file read and parse), so it can run at every certificate check.
    pub(crate) fn renew_if_due(&self) -> Result<bool, TlsError> {
        let paths = GeneratedPaths::in_dir(&self.dir);
        if !expires_within(&paths.cert, LEAF_RENEW_BEFORE_DAYS) {
            return Ok(false);
        }
        // The leaf only: a CA made now (its files gone, a cleaner emptied the directory)
        // would break every client that trusts the one in use, without a restart to say so.
        for ca_file in [&paths.ca_cert, &paths.ca_key] {
            if !ca_file.exists() {
                return Err(TlsError::Read {
                    path: ca_file.clone(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the CA is gone; the leaf is not renewed until a restart or reload makes a new CA",
                    ),
                });
            }
        }
        ensure_self_signed(&self.dir, &self.hosts)?;
        Ok(true)
    }
}

/// Generates a fresh CA and leaf into `dir`, replacing what is there.
pub fn generate_into(dir: &Path, hosts: &[String]) -> Result<GeneratedPaths, TlsError> {
    let paths = GeneratedPaths::in_dir(dir);
    for path in [&paths.ca_cert, &paths.ca_key, &paths.cert, &paths.key] {
        let _ = fs::remove_file(path);
    }
    ensure_self_signed(dir, hosts)
}

/// Whether the first certificate in the PEM file at `path` expires within `days` (or the
/// file holds none that parses).
fn expires_within(path: &Path, days: i64) -> bool {
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let Ok(pem) = fs::read(path) else {
        return true;
    };
    let Ok(der) = CertificateDer::from_pem_slice(&pem) else {
        return true;
    };
    let Ok((_, leaf)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return true;
    };
    let horizon = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    leaf.validity().not_after.timestamp() < horizon.unix_timestamp()
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    // Back-date a little so a client whose clock is slightly behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

/// For tests: replaces the leaf in `dir` with one from the same CA, for `hosts`, ending
/// `days` from now (a negative count: ended that long ago, after a year's validity).
#[cfg(test)]
pub(crate) fn replace_leaf(dir: &Path, hosts: &[String], days: i64) -> GeneratedPaths {
    let paths = GeneratedPaths::in_dir(dir);
    let ca_key = KeyPair::from_pem(&read_string(&paths.ca_key).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&read_string(&paths.ca_cert).unwrap(), ca_key).unwrap();
    let (pem, key) = if days < 0 {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(hosts.to_vec()).unwrap();
        let end = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        params.not_before = end - time::Duration::days(365);
        params.not_after = end;
        (params.signed_by(&key, &issuer).unwrap().pem(), key)
    } else {
        issue_leaf(hosts, &issuer, days).unwrap()
    };
    write_file(&paths.key, key.serialize_pem().as_bytes(), true).unwrap();
    write_file(&paths.cert, pem.as_bytes(), false).unwrap();
    paths
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
    days: i64,
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
    validity(&mut params, days);
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert.pem(), key))
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a whole new file in place of `path`: into a fresh file beside it (mode 0600 from
/// its creation when `private`), then renamed over it, so that a reader (the certificate
/// watch of a running pachgate) sees the old file or the new one, never half of one, and a
/// new key is never readable under an old file's looser mode.
fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    // A name of this write's own: a config reload and the running listener's renewal may
    // write the same directory at once, and must not take each other's staged files.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut staged = path.as_os_str().to_owned();
    staged.push(format!(".new.{}.{write}", std::process::id()));
    let staged = PathBuf::from(staged);
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&staged).map_err(err)?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&staged, path))
        .map_err(|error| {
            let _ = fs::remove_file(&staged);
            err(error)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check_pair;

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

    /// A stored leaf close to its expiry (here 5 days left) is issued anew, by the same CA,
    /// for the full term; one with a year left is kept.
    #[test]
    fn a_leaf_near_its_expiry_is_reissued_by_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let paths = ensure_self_signed(dir.path(), &hosts()).unwrap();
        let ca_before = fs::read(&paths.ca_cert).unwrap();
        replace_leaf(dir.path(), &hosts(), 5);
        let short_pem = fs::read(&paths.cert).unwrap();
        assert!(expires_within(&paths.cert, LEAF_RENEW_BEFORE_DAYS));

        ensure_self_signed(dir.path(), &hosts()).unwrap();
        assert_eq!(ca_before, fs::read(&paths.ca_cert).unwrap(), "the CA stays");
        assert_ne!(short_pem, fs::read(&paths.cert).unwrap());
        assert!(!expires_within(&paths.cert, LEAF_DAYS - 2));
        check_pair(&paths.cert, &paths.key).unwrap();
        let renewed = fs::read(&paths.cert).unwrap();
        ensure_self_signed(dir.path(), &hosts()).unwrap();
        assert_eq!(
            renewed,
            fs::read(&paths.cert).unwrap(),
            "a fresh leaf is kept"
        );
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

        // A key file left readable by others is replaced by a new file, private from its
        // creation on; nothing is left beside it.
        fs::set_permissions(&paths.key, fs::Permissions::from_mode(0o644)).unwrap();
        let old = fs::metadata(&paths.key).unwrap();
        ensure_self_signed(dir.path(), &["other.test".into()]).unwrap();
        let new = fs::metadata(&paths.key).unwrap();
        assert_eq!(new.permissions().mode() & 0o777, 0o600);
        use std::os::unix::fs::MetadataExt;
        assert_ne!(old.ino(), new.ino(), "the key was rewritten in place");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains(".new"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
    }
}
