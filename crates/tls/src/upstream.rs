//! TLS toward upstreams: a rustls client configuration that trusts only the configured CA,
//! and a digest of what it was built from, so that a reload can tell it unchanged.

use std::sync::Arc;

use rustls_pki_types::CertificateDer;

use crate::{CertifiedKeyPem, TlsError};

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

/// SHA-256 over everything [`upstream_client_config`] builds from (the CA certificates, the
/// client chain and key, the ALPN list), each piece length-prefixed: equal digests mean an
/// equal configuration, so a reload that read the same files can keep the upstream's
/// connections. Only the digest of the key is kept, never a second copy of it.
pub fn upstream_material_digest(
    ca: &[CertificateDer<'_>],
    client: Option<&CertifiedKeyPem>,
    alpn: &[&[u8]],
) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut piece = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    };
    piece(b"ca");
    for cert in ca {
        piece(cert);
    }
    if let Some(material) = client {
        piece(b"client");
        for cert in &material.chain {
            piece(cert);
        }
        piece(material.key.secret_der());
    }
    piece(b"alpn");
    for protocol in alpn {
        piece(protocol);
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate_into;

    #[test]
    fn the_digest_changes_with_each_piece_and_only_then() {
        let dir = tempfile::tempdir().unwrap();
        let paths = generate_into(dir.path(), &["localhost".to_string()]).unwrap();
        let ca = crate::load_ca_certificates(&paths.ca_cert).unwrap();
        let client = crate::load_cert_and_key(&paths.cert, &paths.key).unwrap();
        let base = upstream_material_digest(&ca, Some(&client), &[b"h2"]);
        assert_eq!(base, upstream_material_digest(&ca, Some(&client), &[b"h2"]));
        assert_ne!(base, upstream_material_digest(&ca, None, &[b"h2"]));
        assert_ne!(
            base,
            upstream_material_digest(&ca, Some(&client), &[b"http/1.1"])
        );
        assert_ne!(base, upstream_material_digest(&[], Some(&client), &[b"h2"]));
        // The same bytes split differently between pieces are not the same material.
        assert_ne!(
            upstream_material_digest(&ca, None, &[b"h2", b"c"]),
            upstream_material_digest(&ca, None, &[b"h", b"2c"])
        );
    }
}
