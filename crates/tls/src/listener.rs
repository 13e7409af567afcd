//! The listener's rustls server configuration: which suites and versions, client
//! certificates (mTLS) or none, ALPN, session tickets, and the reloading SNI resolver.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;

use crate::client_auth::ReloadingClientVerifier;
use crate::sni::{build_resolver, ListenerTlsHandle, LoadedBytes, ReloadingResolver};
use crate::{CertPaths, SelfSigned, TlsError, ALPN_PROTOCOLS};

/// The lowest TLS version offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

/// The listener's certificates as files, so they can be re-read when they change.
#[derive(Debug, Clone)]
pub struct ListenerTlsFiles {
    pub default: CertPaths,
    pub sni: Vec<(Vec<String>, CertPaths)>,
    pub client_ca: Option<PathBuf>,
    pub min_version: MinVersion,
    /// When the default certificate is self-signed: its leaf is renewed at the certificate
    /// checks while the listener runs, not only when a config is loaded.
    pub self_signed: Option<SelfSigned>,
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
    // The bytes first, as `reload` reads them: files replaced between the two reads are
    // then seen as changed at the next check, instead of matching what was never served.
    let loaded = LoadedBytes::read(&files)?;
    let client_verifier = match &files.client_ca {
        None => None,
        Some(path) => Some(Arc::new(ReloadingClientVerifier::load(path, &provider)?)),
    };
    let resolver = Arc::new(ReloadingResolver {
        current: arc_swap::ArcSwap::from_pointee(build_resolver(&files, &provider)?),
        loaded: std::sync::Mutex::new(loaded),
        files: files.clone(),
        provider: provider.clone(),
        client_verifier: client_verifier.clone(),
        renewal_failure: std::sync::Mutex::new(None),
    });
    let versions: &[&rustls::SupportedProtocolVersion] = match files.min_version {
        MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        MinVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder =
        ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &client_verifier {
        None => builder.with_no_client_auth(),
        Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
    };
    let mut config = builder.with_cert_resolver(resolver.clone());
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    match &client_verifier {
        // Renewed with the client CAs (see `client_auth`).
        Some(verifier) => {
            config.ticketer = verifier.tickets.clone();
            config.session_storage = verifier.sessions.clone();
        }
        None => config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?,
    }
    // The suite is ours to choose (listener_provider's order), not the client's.
    config.ignore_client_order = true;
    Ok(ListenerTlsHandle {
        config: Arc::new(config),
        resolver,
    })
}
