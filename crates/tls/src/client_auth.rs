//! Client certificates (mTLS) checked against the `client_ca` file as it is now: the verifier
//! is swapped when the file changes, like the served certificates, so rotating or removing a
//! client CA takes effect without a restart. A resumed TLS session skips the client
//! certificate check, so the sessions and tickets handed out under the old CAs are forgotten
//! at the same time: a client of a removed CA cannot resume its way back in.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::{load_ca_certificates, TlsError};

/// One version of the client CA file, verified by webpki.
#[derive(Debug)]
struct Version {
    verifier: Arc<dyn ClientCertVerifier>,
    /// The CA names offered in the CertificateRequest. A verifier must lend them out for as
    /// long as it lives, and versions are swapped, so each version's are leaked: a few
    /// hundred bytes each time the file changes.
    hints: &'static [DistinguishedName],
}

/// Requires a client certificate issued by a CA in the `client_ca` file as last loaded.
#[derive(Debug)]
pub(crate) struct ReloadingClientVerifier {
    current: arc_swap::ArcSwap<Version>,
    /// The listener's session tickets and session cache, renewed with the CAs.
    pub(crate) tickets: Arc<RenewableTickets>,
    pub(crate) sessions: Arc<RenewableSessions>,
}

impl ReloadingClientVerifier {
    pub(crate) fn load(
        path: &Path,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsError> {
        Ok(ReloadingClientVerifier {
            current: arc_swap::ArcSwap::from_pointee(build(path, provider)?),
            tickets: Arc::new(RenewableTickets(arc_swap::ArcSwap::from_pointee(
                new_ticketer()?,
            ))),
            sessions: Arc::new(RenewableSessions(arc_swap::ArcSwap::from_pointee(
                new_session_cache(),
            ))),
        })
    }

    /// Verifies against the file's current contents from the next handshake on, and lets
    /// no session made before resume; on an error the CAs (and sessions) in use stay.
    pub(crate) fn reload(
        &self,
        path: &Path,
        provider: &Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<(), TlsError> {
        let version = build(path, provider)?;
        let ticketer = new_ticketer()?;
        self.current.store(Arc::new(version));
        self.tickets.0.store(Arc::new(ticketer));
        self.sessions.0.store(Arc::new(new_session_cache()));
        Ok(())
    }
}

/// A ticketer or session cache behind a swappable cell (`ArcSwap` wants a sized value).
#[derive(Debug)]
pub(crate) struct Held<T: ?Sized>(Arc<T>);

fn new_ticketer() -> Result<Held<dyn ProducesTickets>, TlsError> {
    Ok(Held(rustls::crypto::aws_lc_rs::Ticketer::new()?))
}

/// rustls' default cache size for stateful (TLS 1.2 session id) resumption.
fn new_session_cache() -> Held<dyn StoresServerSessions> {
    Held(ServerSessionMemoryCache::new(256))
}

/// Session tickets from a ticketer that is replaced when the client CAs change: tickets it
/// issued before no longer decrypt, so their clients make a full handshake.
#[derive(Debug)]
pub(crate) struct RenewableTickets(arc_swap::ArcSwap<Held<dyn ProducesTickets>>);

impl ProducesTickets for RenewableTickets {
    fn enabled(&self) -> bool {
        self.0.load().0.enabled()
    }
    fn lifetime(&self) -> u32 {
        self.0.load().0.lifetime()
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.0.load().0.encrypt(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.0.load().0.decrypt(cipher)
    }
}

/// The session cache, emptied (replaced) when the client CAs change.
#[derive(Debug)]
pub(crate) struct RenewableSessions(arc_swap::ArcSwap<Held<dyn StoresServerSessions>>);

impl StoresServerSessions for RenewableSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.load().0.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().0.get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.load().0.take(key)
    }
    fn can_cache(&self) -> bool {
        self.0.load().0.can_cache()
    }
}

fn build(path: &Path, provider: &Arc<rustls::crypto::CryptoProvider>) -> Result<Version, TlsError> {
    let unusable = |reason: String| TlsError::ClientCa {
        path: path.to_path_buf(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for (at, ca) in load_ca_certificates(path)?.into_iter().enumerate() {
        roots
            .add(ca)
            .map_err(|e| unusable(format!("certificate {}: {e}", at + 1)))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| unusable(e.to_string()))?;
    let hints = Box::leak(verifier.root_hint_subjects().to_vec().into_boxed_slice());
    Ok(Version { verifier, hints })
}

impl ClientCertVerifier for ReloadingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.current.load().hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current
            .load()
            .verifier
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verifier
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current
            .load()
            .verifier
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.current.load().verifier.supported_verify_schemes()
    }
}
