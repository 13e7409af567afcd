//! The signals pachgate acts on: SIGTERM and SIGINT start the drain, SIGHUP reloads the
//! config. Each is caught from the moment its handle is made, which `serve` does before it
//! binds anything.

/// SIGTERM and SIGINT, caught from the moment this is made. Made before anything is bound:
/// until a handler is in place the signal's default action applies, and a process killed
/// that way cuts its clients off mid-answer (no drain, no TLS close, no close frame).
pub struct ShutdownSignals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    pub fn register() -> Result<Self, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let catch = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| format!("cannot catch {name}: {e}"))
            };
            Ok(ShutdownSignals {
                terminate: catch(SignalKind::terminate(), "SIGTERM")?,
                interrupt: catch(SignalKind::interrupt(), "SIGINT")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignals {})
    }

    /// The next SIGTERM or SIGINT (one that arrived since the last call included).
    pub async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// SIGHUP, where there is such a thing.
pub(crate) struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    pub(crate) fn register() -> Option<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::hangup()) {
                Ok(signal) => Some(Hangups { signal }),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload follows file changes only");
                    None
                }
            }
        }
        #[cfg(not(unix))]
        None
    }

    pub(crate) async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        return self.signal.recv().await;
        #[cfg(not(unix))]
        std::future::pending().await
    }
}
