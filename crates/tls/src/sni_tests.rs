//! Tests of the SNI resolver and its reloads: real rustls handshakes in memory.

use super::*;
use crate::{
    ensure_self_signed, listener_config, load_ca_certificates, load_cert_and_key,
    upstream_client_config, CertPaths, CertifiedKeyPem, GeneratedPaths, MinVersion,
};
use rustls::pki_types::{CertificateDer, ServerName};
use std::fs;
use std::ops::Not;

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

/// Whether a reload applied new files, none refused.
fn applied(outcome: ReloadOutcome) -> bool {
    assert!(outcome.refused.is_empty(), "{outcome:?}");
    outcome.changed
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
    let default = ensure_self_signed(a.path(), &["a.test".into(), "y.x.b.test".into()]).unwrap();
    let wildcard = ensure_self_signed(b.path(), &["*.b.test".into()]).unwrap();
    let handle = listener_config(ListenerTlsFiles {
        default: pair(&default),
        sni: vec![(vec!["*.B.test".into()], pair(&wildcard))],
        client_ca: None,
        min_version: MinVersion::Tls12,
        self_signed: None,
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
        self_signed: None,
    })
    .unwrap();
    assert!(
        applied(handle.reload()).not(),
        "unchanged files are no reload"
    );

    ensure_self_signed(dir.path(), &["b.test".into()]).unwrap();
    assert!(applied(handle.reload()));
    assert_eq!(handle.certificates()[0].names, ["b.test"]);
    let roots = load_ca_certificates(&generated.ca_cert).unwrap();
    let client = upstream_client_config(roots, None, &[b"h2"]).unwrap();
    let served = handshake(handle.config.clone(), client.clone(), "b.test").unwrap();
    assert_eq!(served, leaf(&generated));

    fs::write(&generated.cert, "not a certificate").unwrap();
    let refused = handle.reload();
    assert!(
        !refused.changed && refused.refused.len() == 1,
        "{refused:?}"
    );
    assert!(
        applied(handle.reload()).not(),
        "a refused file is reported once"
    );
    assert_eq!(handle.certificates()[0].names, ["b.test"]);
    assert_eq!(
        handshake(handle.config.clone(), client, "b.test").unwrap(),
        served,
        "the certificate in use keeps serving"
    );
}

/// Each certificate is reloaded on its own: an SNI entry whose new files are refused
/// keeps serving what it served, and neither then nor at later checks does it hold
/// back the renewal of the default certificate.
#[test]
fn a_refused_sni_certificate_does_not_hold_back_the_others() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let default = ensure_self_signed(a.path(), &["a.test".into()]).unwrap();
    let legacy = ensure_self_signed(b.path(), &["legacy.test".into()]).unwrap();
    let handle = listener_config(ListenerTlsFiles {
        default: pair(&default),
        sni: vec![(vec!["legacy.test".into()], pair(&legacy))],
        client_ca: None,
        min_version: MinVersion::Tls13,
        self_signed: None,
    })
    .unwrap();
    // A new client each time: a resumed session would show the first one's certificate.
    let served = |name| {
        let mut roots = load_ca_certificates(&default.ca_cert).unwrap();
        roots.extend(load_ca_certificates(&legacy.ca_cert).unwrap());
        let client = upstream_client_config(roots, None, &[b"h2"]).unwrap();
        handshake(handle.config.clone(), client, name).unwrap()
    };
    let legacy_leaf = served("legacy.test");

    // The legacy entry's file breaks and the default is renewed, in one check.
    fs::write(&legacy.cert, "not a certificate").unwrap();
    ensure_self_signed(a.path(), &["a.test".into(), "renewed.a.test".into()]).unwrap();
    let outcome = handle.reload();
    assert!(outcome.changed, "{outcome:?}");
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert!(
        outcome.refused[0].to_string().contains("not a PEM")
            || outcome.refused[0].to_string().contains("no PEM"),
        "{outcome:?}"
    );
    assert_eq!(served("a.test"), leaf(&default));
    assert_eq!(
        served("legacy.test"),
        legacy_leaf,
        "the refused entry keeps serving"
    );

    // Renewed again while the legacy file is still broken: applied, nothing reported.
    ensure_self_signed(a.path(), &["a.test".into()]).unwrap();
    assert!(applied(handle.reload()));
    assert_eq!(served("a.test"), leaf(&default));
    let names: Vec<_> = handle.certificates().into_iter().map(|c| c.names).collect();
    assert_eq!(names, [vec!["a.test"], vec!["legacy.test"]]);
}

/// A listener serving a self-signed leaf for `a.test` kept in `dir`, as if started a
/// year ago: its leaf has 5 days left.
fn serving_a_leaf_near_its_expiry(dir: &Path) -> (GeneratedPaths, ListenerTlsHandle) {
    let hosts = vec!["a.test".to_string()];
    ensure_self_signed(dir, &hosts).unwrap();
    let generated = crate::generate::replace_leaf(dir, &hosts, 5);
    let handle = listener_config(ListenerTlsFiles {
        default: pair(&generated),
        sni: Vec::new(),
        client_ca: None,
        min_version: MinVersion::Tls13,
        self_signed: Some(crate::SelfSigned {
            dir: dir.to_path_buf(),
            hosts,
        }),
    })
    .unwrap();
    (generated, handle)
}

/// A self-signed leaf is renewed while the listener runs: once the one served is within
/// the renewal margin, the next certificate check issues a new one (same CA, full term)
/// and serves it; the check after that finds nothing to do.
#[test]
fn a_self_signed_leaf_near_its_expiry_is_renewed_while_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, handle) = serving_a_leaf_near_its_expiry(dir.path());
    let days_left = |handle: &ListenerTlsHandle| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        (handle.certificates()[0].not_after - now) / 86_400
    };
    assert!(
        (4..=5).contains(&days_left(&handle)),
        "{}",
        days_left(&handle)
    );
    let short = leaf(&generated);

    assert!(applied(handle.reload()), "a due leaf is renewed and served");
    assert!(days_left(&handle) > 390, "{}", days_left(&handle));
    let roots = load_ca_certificates(&generated.ca_cert).unwrap();
    let client = upstream_client_config(roots, None, &[b"h2"]).unwrap();
    let served = handshake(handle.config.clone(), client, "a.test").unwrap();
    assert_eq!(served, leaf(&generated));
    assert_ne!(served, short);
    assert!(applied(handle.reload()).not(), "a fresh leaf is kept");
}

/// A due leaf whose CA files are gone is not renewed, and no CA is made while the
/// listener runs (clients that trust the CA in use would break): the failure is
/// reported once, and the leaf in use keeps serving.
#[test]
fn renewal_never_makes_a_new_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (generated, handle) = serving_a_leaf_near_its_expiry(dir.path());
    fs::remove_file(&generated.ca_cert).unwrap();
    fs::remove_file(&generated.ca_key).unwrap();
    let outcome = handle.reload();
    assert!(!outcome.changed, "{outcome:?}");
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert!(outcome.refused[0].to_string().contains("CA"), "{outcome:?}");
    assert!(!generated.ca_cert.exists(), "a CA was made");
    assert!(applied(handle.reload()).not(), "reported once");
}

/// An expired certificate is served (a client that checks it refuses the handshake for
/// that reason, and every other host keeps working); but new files holding an expired
/// leaf do not replace a certificate that still works.
#[test]
fn an_expired_certificate_is_served_but_does_not_replace_a_valid_one() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let default = ensure_self_signed(a.path(), &["a.test".into()]).unwrap();
    ensure_self_signed(b.path(), &["lapsed.test".into()]).unwrap();
    let lapsed = crate::generate::replace_leaf(b.path(), &["lapsed.test".into()], -2);
    let handle = listener_config(ListenerTlsFiles {
        default: pair(&default),
        sni: vec![(vec!["lapsed.test".into()], pair(&lapsed))],
        client_ca: None,
        min_version: MinVersion::Tls13,
        self_signed: None,
    })
    .expect("a lapsed SNI certificate does not stop the listener");
    let client = || {
        let mut roots = load_ca_certificates(&default.ca_cert).unwrap();
        roots.extend(load_ca_certificates(&lapsed.ca_cert).unwrap());
        upstream_client_config(roots, None, &[b"h2"]).unwrap()
    };
    let expired = |name| {
        matches!(
            handshake(handle.config.clone(), client(), name),
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. }
            ))
        )
    };
    assert!(
        expired("lapsed.test"),
        "the lapsed certificate is the one served"
    );
    assert_eq!(
        handshake(handle.config.clone(), client(), "a.test").unwrap(),
        leaf(&default)
    );
    let lapsed_flags: Vec<bool> = handle
        .certificates()
        .iter()
        .map(CertificateInfo::has_expired)
        .collect();
    assert_eq!(lapsed_flags, [false, true]);

    // The default's files are replaced by a lapsed leaf: refused, the valid one stays.
    let valid = leaf(&default);
    crate::generate::replace_leaf(a.path(), &["a.test".into()], -1);
    let outcome = handle.reload();
    assert!(!outcome.changed, "{outcome:?}");
    assert_eq!(outcome.refused.len(), 1, "{outcome:?}");
    assert!(
        outcome.refused[0].to_string().contains("expired"),
        "{outcome:?}"
    );
    assert_eq!(
        handshake(handle.config.clone(), client(), "a.test").unwrap(),
        valid
    );
    // A lapsed SNI certificate renewed by its owner is taken up.
    ensure_self_signed(b.path(), &["lapsed.test".into(), "renewed.test".into()]).unwrap();
    assert!(handle.reload().changed);
    assert_eq!(
        handshake(handle.config.clone(), client(), "lapsed.test").unwrap(),
        leaf(&lapsed)
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
        self_signed: None,
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
    assert!(applied(handle.reload()));
    assert!(!accepted(&old), "the removed CA's client is refused");
    assert!(accepted(&new), "the new CA's client is let in");

    fs::write(&client_ca, "not a certificate").unwrap();
    assert_eq!(handle.reload().refused.len(), 1);
    assert!(accepted(&new), "a refused file leaves the CA in use");
    assert!(!accepted(&old));
}
