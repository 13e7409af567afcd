//! A switch tests flip to make a stand-in report itself unhealthy, as a pod that is listed
//! but not ready (or shutting down) does. Clones share the switch.
//!
//! What follows it: the gRPC pachd's `grpc.health.v1.Health` (`Check` answers SERVING or
//! NOT_SERVING, `Watch` streams each change) and pachd's HTTP `/healthz`
//! ([`PachdOptions::health`](crate::PachdOptions::health)); dex's
//! `/dex/.well-known/openid-configuration` ([`PachdOptions::dex_health`](crate::PachdOptions::dex_health));
//! the console's `/health` ([`serve_console_with_health`](crate::serve_console_with_health)).
//! Unhealthy HTTP paths answer 503.

use std::sync::Arc;

use tokio::sync::watch;

#[derive(Debug, Clone)]
pub struct Health(Arc<watch::Sender<bool>>);

impl Default for Health {
    /// Serving.
    fn default() -> Self {
        Health(Arc::new(watch::Sender::new(true)))
    }
}

impl Health {
    /// A serving switch (as `Default`).
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_serving(&self, serving: bool) {
        self.0.send_replace(serving);
    }

    pub fn is_serving(&self) -> bool {
        *self.0.borrow()
    }

    /// Follows changes (for `Watch`).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.0.subscribe()
    }
}
