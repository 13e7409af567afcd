//! Looking endpoint names up again and again: every `dns_refresh` each name's A and AAAA
//! answers replace its addresses in the upstream's set. Addresses still listed keep their
//! connections; new ones take requests at once; removed ones drain (no new requests, their
//! h2 connections end after their streams, their pooled HTTP/1.1 connections idle out). A
//! name that fails to resolve keeps its last good answer, and the failure is logged once.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;
use http::uri::Authority;

use super::addresses::Address;
use super::health::HealthWiring;

/// One endpoint given as a name.
pub(crate) struct Name {
    /// The endpoint as configured (`pachd:1650`): the address used until DNS answers.
    endpoint: String,
    host: String,
    port: u16,
    authority: Authority,
    /// The last good answer; `None` until the first.
    answer: Option<Vec<SocketAddr>>,
    /// The last lookup failed (so a failure is logged once, and a recovery once).
    failing: bool,
}

impl Name {
    pub(crate) fn new(endpoint: &str, authority: &Authority) -> Self {
        Name {
            endpoint: endpoint.to_string(),
            host: authority
                .host()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: authority.port_u16().unwrap_or(80),
            authority: authority.clone(),
            answer: None,
            failing: false,
        }
    }
}

pub(crate) struct Resolution {
    pub(crate) upstream: String,
    pub(crate) names: Vec<Name>,
    pub(crate) refresh: Duration,
    pub(crate) servers: Vec<SocketAddr>,
    pub(crate) h2_slots: usize,
    pub(crate) health: Option<HealthWiring>,
    /// The endpoints given as IP addresses: always in the set.
    pub(crate) literals: Vec<String>,
}

impl Resolution {
    /// Runs until the upstream is gone (its address set dropped with its snapshot).
    pub(crate) async fn run(mut self, addresses: Weak<ArcSwap<Vec<Arc<Address>>>>) {
        // A resolver that cannot be built (no usable resolv.conf, say) is tried again: a
        // reload keeps an unchanged upstream, so it would not get another chance there.
        let mut warned = false;
        let resolver = loop {
            match self.resolver() {
                Ok(resolver) => break resolver,
                Err(error) => {
                    if !warned {
                        tracing::warn!(upstream = %self.upstream, %error, "no DNS resolver: endpoint names are looked up by the system at connect time; trying again");
                        warned = true;
                    }
                    if addresses.strong_count() == 0 {
                        return;
                    }
                    tokio::time::sleep(self.refresh.max(Duration::from_secs(5))).await;
                }
            }
        };
        loop {
            for name in &mut self.names {
                let lookup = tokio::time::timeout(
                    self.refresh.max(Duration::from_secs(2)),
                    resolver.lookup_ip(name.host.as_str()),
                )
                .await;
                let outcome = match lookup {
                    Ok(Ok(found)) => {
                        let mut sockets: Vec<SocketAddr> = found
                            .iter()
                            .map(|ip| SocketAddr::new(ip, name.port))
                            .collect();
                        sockets.sort();
                        sockets.dedup();
                        if sockets.is_empty() {
                            Err("no addresses in the answer".to_string())
                        } else {
                            Ok(sockets)
                        }
                    }
                    Ok(Err(error)) => Err(error.to_string()),
                    Err(_) => Err("lookup timed out".to_string()),
                };
                match outcome {
                    Ok(sockets) => {
                        if name.failing {
                            tracing::info!(upstream = %self.upstream, name = %name.host, "endpoint name resolves again");
                        }
                        name.failing = false;
                        name.answer = Some(sockets);
                    }
                    Err(error) => {
                        if !name.failing {
                            tracing::warn!(upstream = %self.upstream, name = %name.host, %error, "cannot resolve endpoint name; keeping its last addresses");
                        }
                        name.failing = true;
                    }
                }
            }
            let Some(addresses) = addresses.upgrade() else {
                return;
            };
            self.apply(&addresses);
            drop(addresses);
            tokio::time::sleep(self.refresh).await;
        }
    }

    fn resolver(&self) -> Result<TokioResolver, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if self.servers.is_empty() {
            TokioResolver::builder(provider).map_err(|e| e.to_string())?
        } else {
            let servers = self
                .servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            TokioResolver::builder_with_config(ResolverConfig::from_name_servers(servers), provider)
        };
        let options = builder.options_mut();
        // Each refresh asks the server: its answer is the list of pods now, and a cached one
        // would keep a gone pod for the record's TTL.
        options.cache_size = 0;
        options.ip_strategy = hickory_resolver::config::LookupIpStrategy::Ipv4AndIpv6;
        options.timeout = Duration::from_secs(2);
        options.attempts = 2;
        builder.build().map_err(|e| e.to_string())
    }

    /// Installs the addresses the names stand for now, keeping the ones still listed (and
    /// their connections) and draining the ones no longer listed.
    fn apply(&self, addresses: &ArcSwap<Vec<Arc<Address>>>) {
        let current = addresses.load_full();
        let mut next: Vec<Arc<Address>> = Vec::with_capacity(current.len());
        let keep = |target: &str, next: &mut Vec<Arc<Address>>| -> bool {
            if next.iter().any(|a| a.target == target) {
                return true;
            }
            match current.iter().find(|a| a.target == target) {
                Some(existing) => {
                    next.push(existing.clone());
                    true
                }
                None => false,
            }
        };
        // Addresses given literally stay as they are; names bring their answers.
        for literal in &self.literals {
            keep(literal, &mut next);
        }
        for name in &self.names {
            match &name.answer {
                None => {
                    keep(&name.endpoint, &mut next);
                }
                Some(sockets) => {
                    for socket in sockets {
                        let target = socket.to_string();
                        if keep(&target, &mut next) {
                            continue;
                        }
                        match Address::new(
                            target,
                            Some(*socket),
                            name.authority.clone(),
                            self.h2_slots,
                        ) {
                            Ok(address) => {
                                if let Some(health) = &self.health {
                                    health.adopt(&address);
                                }
                                next.push(Arc::new(address))
                            }
                            Err(error) => {
                                tracing::warn!(upstream = %self.upstream, %error, "unusable address in a DNS answer")
                            }
                        }
                    }
                }
            }
        }
        let unchanged = next.len() == current.len()
            && next
                .iter()
                .all(|a| current.iter().any(|c| Arc::ptr_eq(a, c)));
        if unchanged || next.is_empty() {
            return;
        }
        let removed: Vec<&Arc<Address>> = current
            .iter()
            .filter(|c| !next.iter().any(|a| Arc::ptr_eq(a, c)))
            .collect();
        for gone in &removed {
            gone.draining
                .store(true, std::sync::atomic::Ordering::Relaxed);
            gone.retire_connections();
        }
        tracing::info!(
            upstream = %self.upstream,
            addresses = %next.iter().map(|a| a.target.as_str()).collect::<Vec<_>>().join(", "),
            removed = %removed.iter().map(|a| a.target.as_str()).collect::<Vec<_>>().join(", "),
            "upstream addresses changed"
        );
        addresses.store(Arc::new(next));
    }
}
