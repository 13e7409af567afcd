//! TLS toward upstreams: a rustls client configuration that trusts only the configured CA.

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
