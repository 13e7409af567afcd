//! Active health checks, one checker per resolved address of an upstream that has
//! `health_check` set (crate `pachgate-health` does the checking). A new address starts
//! unhealthy and is checked at once, so a pod that is listed but not ready takes no
//! requests; each change of state is logged.

use std::sync::Arc;

use pachgate_health::{CheckSpec, HealthState, Transport};

use super::addresses::{Address, HealthView};
use super::UpstreamTls;

impl HealthView for HealthState {
    fn is_healthy(&self) -> bool {
        HealthState::is_healthy(self)
    }
}

/// What a new address needs to get its checker.
#[derive(Clone)]
pub(crate) struct HealthWiring {
    pub(crate) upstream: Arc<str>,
    pub(crate) spec: CheckSpec,
    pub(crate) transport: Transport,
}

impl HealthWiring {
    pub(crate) fn new(upstream: &str, spec: CheckSpec, tls: Option<&UpstreamTls>) -> Self {
        HealthWiring {
            upstream: Arc::from(upstream),
            spec,
            transport: match tls {
                None => Transport::Plain,
                Some(tls) => Transport::Tls {
                    connector: tls.connector.clone(),
                    server_name: tls.server_name.clone(),
                },
            },
        }
    }

    /// Starts checking `address` (on the current runtime). Addresses not resolved yet (a
    /// name the system resolver is asked for at connect time) are not checked.
    pub(crate) fn adopt(&self, address: &Address) {
        let Some(socket) = address.socket else {
            return;
        };
        let upstream = self.upstream.clone();
        let label = address.label.clone();
        let checker = pachgate_health::spawn(
            socket,
            address.endpoint_authority.to_string(),
            self.transport.clone(),
            self.spec.clone(),
            move |healthy, reason| {
                if healthy {
                    tracing::info!(upstream = %upstream, address = %label, %reason, "upstream address healthy");
                } else {
                    tracing::warn!(upstream = %upstream, address = %label, %reason, "upstream address unhealthy");
                }
            },
        );
        let state: Arc<dyn HealthView> = checker.state();
        let _ = address.health.set(state);
        *address
            .checker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Box::new(checker));
    }
}
