//! pachgate's TLS material: loads PEM certificate chains and keys, picks a certificate by SNI,
//! verifies client certificates (mTLS), builds the rustls server configuration (ALPN `h2` +
//! `http/1.1`, TLS 1.2+ or 1.3 only), keeps served certificates in step with their files,
//! builds client configurations toward upstreams, and generates and remembers a private CA
//! plus leaf certificate with rcgen. The crypto under all of it is rustls' aws-lc-rs provider.
//!
//! Must not: know about HTTP or sockets (it hands out rustls configurations), or touch an
//! open connection when certificates change.
//!
//! - `load`: PEM files into keys, and the checks a listener relies on;
//! - `listener`: the server configuration;
//! - `sni`: choosing a certificate per handshake, and reloading them when the files change;
//! - `client_auth`: client certificates checked against the `client_ca` file, reloaded with
//!   the certificates;
//! - `upstream`: client configurations toward upstreams;
//! - `generate`: the self-signed CA and leaf.

mod client_auth;
mod generate;
mod listener;
mod load;
mod sni;
mod upstream;

use std::path::PathBuf;

use thiserror::Error;

pub use generate::{ensure_self_signed, generate_into, GeneratedPaths, SelfSigned};
pub use listener::{listener_config, ListenerTlsFiles, MinVersion};
pub use load::{
    check_client_ca, check_pair, fingerprint_sha256, load_ca_certificates, load_cert_and_key,
    CertPaths, CertificateInfo, CertifiedKeyPem,
};
pub use rustls;
pub use sni::{ListenerTlsHandle, ReloadOutcome};
pub use upstream::{upstream_client_config, upstream_material_digest};

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
    #[error(
        "{cert} and {key}: the key does not belong to the certificate, or cannot be used: {source}"
    )]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error("{path}: not a usable client CA: {reason}")]
    ClientCa { path: PathBuf, reason: String },
    #[error("TLS setup refused: {0}")]
    Config(#[from] rustls::Error),
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// The ALPN protocols pachgate offers, in preference order.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];
