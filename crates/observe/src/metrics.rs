//! Prometheus metrics: one registry per process, encoded in the OpenMetrics text format by
//! prometheus-client. The data path touches only pre-resolved handles and local tallies;
//! label lookups happen once per request, at its end.
//!
//! Past 600 lines on purpose: every metric family is declared, registered and fed here, so
//! a name, its help text and the code that moves it are read together (one family per
//! concern would scatter the registry's single encoding).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

/// The open-connection gauge's type: the connection cap in proxy-core counts with it.
pub use prometheus_client::metrics::gauge::Gauge;

/// Latency buckets in seconds: sub-millisecond proxying up to five-minute streams.
const LATENCY_BUCKETS: [f64; 17] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: Arc<str>,
    protocol: &'static str,
    status: u16,
    grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthLabels {
    route: Arc<str>,
    decision: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertificateLabels {
    name: String,
    file: String,
}

/// Panics so far, process-wide (a panic belongs to no gateway); `/metrics` shows it as
/// `pachgate_panics_total`.
static PANICS: AtomicU64 = AtomicU64::new(0);

/// Longest panic message the log line carries; a longer one is cut (on a char boundary).
const PANIC_MESSAGE_LIMIT: usize = 512;

/// Installs the process's panic hook (replacing the default one, which would print a second
/// report to stderr): each panic is counted in `pachgate_panics_total` and logged once,
/// through `tracing`, with where it happened and its message only. The release build
/// unwinds, so the panic then ends the task it happened in (a client connection, one h2
/// stream, an upstream connection's driver) and the process goes on.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::Relaxed);
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
            .unwrap_or_else(|| "unknown".into());
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let mut end = message.len().min(PANIC_MESSAGE_LIMIT);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let thread = std::thread::current();
        tracing::error!(
            target: "pachgate::panic",
            location = %location,
            thread = thread.name().unwrap_or("unnamed"),
            panic = &message[..end],
            "panic contained: the connection, stream or task it happened in was ended"
        );
    }));
}

/// Panics counted by the hook of [`install_panic_hook`] so far.
pub fn panics_so_far() -> u64 {
    PANICS.load(Ordering::Relaxed)
}

type HistogramFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

/// Every metric pachgate exports, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: HistogramFamily,
    received: Family<RouteLabel, Counter>,
    sent: Family<RouteLabel, Counter>,
    connections: Gauge,
    max_connections: Gauge,
    connections_refused: Family<ReasonLabel, Counter>,
    streams: Gauge,
    tunnels: Gauge,
    tls_handshake_failures: Family<ReasonLabel, Counter>,
    idle_closes: Counter,
    auth_decisions: Family<AuthLabels, Counter>,
    upstream_connect_failures: Family<UpstreamLabel, Counter>,
    config_reloads: Family<ResultLabel, Counter>,
    certificate_reloads: Family<ResultLabel, Counter>,
    certificate_expiry: Family<CertificateLabels, Gauge>,
    access_log_dropped: Counter,
    /// Where the access log's writer counts the lines it dropped; read at each scrape.
    access_log_dropped_source: OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
    /// Panics in this process (`PANICS`, counted by the panic hook); read at each scrape.
    panics: Counter,
    /// The upstreams of the configuration in use, which the per-address figures are read
    /// from at each scrape (see [`UpstreamCollector`]).
    upstream_source: Arc<OnceLock<UpstreamSource>>,
    /// All requests, for the status page (the labelled family is not summed at scrape).
    requests_all: AtomicU64,
    /// The route label of requests no route matched, made once.
    unrouted: Arc<str>,
}

/// Per-route handles, resolved when a configuration is installed so a request does not
/// look its route's histogram and byte counters up by label.
pub struct RouteMetrics {
    pub name: Arc<str>,
    duration: Histogram,
    received: Counter,
    sent: Counter,
}

/// Where a request body's byte count goes while it streams upstream.
#[derive(Debug)]
pub enum ByteTally {
    /// The request's own count, which its access-log line reports; booked to the route at
    /// the end.
    Request(Arc<AtomicU64>),
    /// Straight into the route's counter: nothing per request when no log line needs it.
    Route(Counter),
}

impl ByteTally {
    pub fn add(&self, bytes: u64) {
        match self {
            ByteTally::Request(count) => {
                count.fetch_add(bytes, Ordering::Relaxed);
            }
            ByteTally::Route(counter) => {
                counter.inc_by(bytes);
            }
        }
    }
}

/// Live figures for the status page.
#[derive(Debug, Clone, Copy)]
pub struct LiveCounts {
    pub requests: u64,
    pub connections: i64,
    /// Connections refused because `limits.max_connections` were open.
    pub refused_at_max_connections: u64,
    pub streams: i64,
    pub tunnels: i64,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pachgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests and websocket tunnels by route, protocol, HTTP status and grpc-status",
            requests.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "request_duration",
            "Time from request head to the end of the response (or tunnel), by route",
            Unit::Seconds,
            durations.clone(),
        );
        let received = Family::<RouteLabel, Counter>::default();
        registry.register_with_unit(
            "received",
            "Body bytes received from clients, by route",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Family::<RouteLabel, Counter>::default();
        registry.register_with_unit(
            "sent",
            "Body bytes sent to clients, by route",
            Unit::Bytes,
            sent.clone(),
        );
        let connections = Gauge::default();
        registry.register(
            "active_connections",
            "Client connections open now on the https and http listeners, from accept to close \
             (TLS handshakes and websocket tunnels included); limits.max_connections caps it",
            connections.clone(),
        );
        let max_connections = Gauge::default();
        registry.register(
            "max_connections",
            "limits.max_connections: the cap on active_connections (0: none)",
            max_connections.clone(),
        );
        let connections_refused = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections closed as soon as accepted, by reason (max_connections, \
             address_not_allowed, untrusted_proxy, bad_proxy_header)",
            connections_refused.clone(),
        );
        let _ = connections_refused.get_or_create(&ReasonLabel {
            reason: "max_connections",
        });
        let streams = Gauge::default();
        registry.register(
            "active_streams",
            "Requests and h2 streams in flight now",
            streams.clone(),
        );
        let tunnels = Gauge::default();
        registry.register(
            "active_websocket_tunnels",
            "Websocket tunnels open now",
            tunnels.clone(),
        );
        let tls_handshake_failures = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "Client TLS handshakes that failed, by reason",
            tls_handshake_failures.clone(),
        );
        let idle_closes = Counter::default();
        registry.register(
            "idle_connections_closed",
            "Client connections closed after limits.idle_timeout without a request",
            idle_closes.clone(),
        );
        let auth_decisions = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_decisions",
            "Edge authentication and admission decisions on gated routes, by route, decision and reason",
            auth_decisions.clone(),
        );
        let upstream_connect_failures = Family::<UpstreamLabel, Counter>::default();
        registry.register(
            "upstream_connect_failures",
            "Failed connection attempts to upstream endpoints, by upstream",
            upstream_connect_failures.clone(),
        );
        let config_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, failed)",
            config_reloads.clone(),
        );
        let certificate_reloads = Family::<ResultLabel, Counter>::default();
        registry.register(
            "certificate_reloads",
            "Listener certificate reloads, by result (ok, failed)",
            certificate_reloads.clone(),
        );
        let certificate_expiry = Family::<CertificateLabels, Gauge>::default();
        registry.register(
            "certificate_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix time) of each certificate the listener serves",
            certificate_expiry.clone(),
        );
        let access_log_dropped = Counter::default();
        registry.register(
            "access_log_dropped",
            "Access-log lines dropped because the log's writer fell behind (its queue was full)",
            access_log_dropped.clone(),
        );
        let panics = Counter::default();
        registry.register(
            "panics",
            "Panics caught in this process: each ended one connection, stream or upstream \
             connection, not the process (see the log line \"panic contained\")",
            panics.clone(),
        );
        let upstream_source = Arc::new(OnceLock::new());
        registry.register_collector(Box::new(UpstreamCollector {
            source: upstream_source.clone(),
        }));
        // Both results exist from the start, so a dashboard sees 0 rather than no series.
        for result in ["ok", "failed"] {
            let _ = config_reloads.get_or_create(&ResultLabel { result });
            let _ = certificate_reloads.get_or_create(&ResultLabel { result });
        }
        Metrics {
            registry,
            requests,
            durations,
            received,
            sent,
            connections,
            max_connections,
            connections_refused,
            streams,
            tunnels,
            tls_handshake_failures,
            idle_closes,
            auth_decisions,
            upstream_connect_failures,
            config_reloads,
            certificate_reloads,
            certificate_expiry,
            access_log_dropped,
            access_log_dropped_source: OnceLock::new(),
            panics,
            upstream_source,
            requests_all: AtomicU64::new(0),
            unrouted: Arc::from(""),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        if let Some(source) = self.access_log_dropped_source.get() {
            // The writer's count only grows; fetch_max keeps concurrent scrapes monotonic.
            self.access_log_dropped
                .inner()
                .fetch_max(source(), Ordering::Relaxed);
        }
        self.panics
            .inner()
            .fetch_max(PANICS.load(Ordering::Relaxed), Ordering::Relaxed);
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    pub fn live(&self) -> LiveCounts {
        LiveCounts {
            requests: self.requests_all.load(Ordering::Relaxed),
            connections: self.connections.get(),
            refused_at_max_connections: self
                .connections_refused
                .get_or_create(&ReasonLabel {
                    reason: "max_connections",
                })
                .get(),
            streams: self.streams.get(),
            tunnels: self.tunnels.get(),
        }
    }

    pub fn route(&self, name: &str) -> Arc<RouteMetrics> {
        let label = RouteLabel {
            route: Arc::from(name),
        };
        Arc::new(RouteMetrics {
            duration: self.durations.get_or_create_owned(&label),
            received: self.received.get_or_create_owned(&label),
            sent: self.sent.get_or_create_owned(&label),
            name: label.route,
        })
    }

    /// Names the counter of access-log lines the log's writer dropped; `/metrics` reports it
    /// as `pachgate_access_log_dropped_total`. The first source set stays.
    pub fn count_access_log_drops(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.access_log_dropped_source.set(Box::new(source));
    }

    /// Names where the upstreams in use are found at scrape time; `/metrics` then shows each
    /// upstream's and each of its addresses' figures. The first source set stays.
    pub fn read_upstreams_from<U: UpstreamFigures + 'static>(
        &self,
        source: impl Fn() -> Vec<Arc<U>> + Send + Sync + 'static,
    ) {
        let _ = self.upstream_source.set(Box::new(move || {
            source()
                .into_iter()
                .map(|upstream| upstream as Arc<dyn UpstreamFigures>)
                .collect()
        }));
    }

    pub fn record_config_reload(&self, ok: bool) {
        self.config_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    pub fn record_certificate_reload(&self, ok: bool) {
        self.certificate_reloads
            .get_or_create(&ResultLabel {
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// Replaces the expiry series with the certificates now served: (name, file, notAfter).
    pub fn set_certificates(&self, certificates: &[(String, String, i64)]) {
        self.certificate_expiry.clear();
        for (name, file, not_after) in certificates {
            self.certificate_expiry
                .get_or_create(&CertificateLabels {
                    name: name.clone(),
                    file: file.clone(),
                })
                .set(*not_after);
        }
    }

    pub fn tls_handshake_failed(&self, reason: &'static str) {
        self.tls_handshake_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn idle_connection_closed(&self) {
        self.idle_closes.inc();
    }

    pub fn auth_decision(&self, route: &Arc<str>, allowed: bool, reason: &'static str) {
        self.auth_decisions
            .get_or_create(&AuthLabels {
                route: route.clone(),
                decision: if allowed { "allow" } else { "deny" },
                reason,
            })
            .inc();
    }

    pub fn upstream_connect_failed(&self, upstream: &str) {
        self.upstream_connect_failures
            .get_or_create(&UpstreamLabel {
                upstream: upstream.to_string(),
            })
            .inc();
    }

    /// The open-connection gauge, which the connection cap counts with.
    pub fn connections_gauge(&self) -> Gauge {
        self.connections.clone()
    }

    pub fn set_max_connections(&self, max: usize) {
        self.max_connections
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    pub fn connection_refused(&self, reason: &'static str) {
        self.connections_refused
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn stream_started(&self) {
        self.streams.inc();
    }

    pub fn tunnel_opened(&self) {
        self.tunnels.inc();
    }

    pub fn tunnel_closed(&self) {
        self.tunnels.dec();
    }

    /// Books one finished request (or tunnel); called once, from the exchange's end.
    pub fn request_finished(&self, finished: FinishedRequest<'_>) {
        self.streams.dec();
        self.requests_all.fetch_add(1, Ordering::Relaxed);
        let route = match finished.route {
            Some(route) => {
                route.duration.observe(finished.seconds);
                route.received.inc_by(finished.received);
                route.sent.inc_by(finished.sent_unbooked);
                route.name.clone()
            }
            None => self.unrouted.clone(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                route,
                protocol: finished.protocol,
                status: finished.status,
                grpc_status: grpc_status_label(finished.grpc_status),
            })
            .inc();
    }
}

impl RouteMetrics {
    pub fn received_tally(&self) -> ByteTally {
        ByteTally::Route(self.received.clone())
    }

    /// Long streams book their sent bytes as they go, not only at the end.
    pub fn add_sent(&self, bytes: u64) {
        self.sent.inc_by(bytes);
    }
}

/// What the scrape reads of one upstream (proxy-core's `Upstream` implements it): the
/// metrics know nothing else about upstreams.
pub trait UpstreamFigures: Send + Sync {
    fn name(&self) -> &str;
    fn counts(&self) -> UpstreamCounts;
    fn address_summaries(&self) -> Vec<AddressSummary>;
}

/// One address as `/metrics` and the status page show it.
#[derive(Debug, Clone)]
pub struct AddressSummary {
    pub address: String,
    /// "healthy", "unhealthy" (failing its health check), "ejected" (after connection
    /// failures) or "draining" (no longer listed by DNS).
    pub state: &'static str,
    pub pending: usize,
    pub ejections: u64,
    /// Requests sent to it so far (retries included).
    pub requests: u64,
}

/// Counters of one upstream, for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct UpstreamCounts {
    pub pending: usize,
    pub retries: u64,
    pub retries_over_budget: u64,
    pub overloaded: u64,
}

type UpstreamSource = Box<dyn Fn() -> Vec<Arc<dyn UpstreamFigures>> + Send + Sync>;

/// The states an upstream address can be in; `pachgate_upstream_address_state` has a series
/// for each (1 for the one it is in), so an alert can ask for any of them.
const ADDRESS_STATES: [&str; 4] = ["healthy", "unhealthy", "ejected", "draining"];

/// Per-upstream and per-address figures, read from the upstreams at scrape time: nothing is
/// recorded for them on the request path beyond the upstream's own atomic counts. A reload
/// builds new upstreams, so their counters start again from 0 (Prometheus reads that as a
/// counter reset); an address DNS no longer lists leaves the exposition once it is gone.
struct UpstreamCollector {
    source: Arc<OnceLock<UpstreamSource>>,
}

impl std::fmt::Debug for UpstreamCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCollector").finish_non_exhaustive()
    }
}

impl Collector for UpstreamCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(source) = self.source.get() else {
            return Ok(());
        };
        let upstreams = source();
        let figures: Vec<_> = upstreams
            .iter()
            .map(|u| (u.name(), u.counts(), u.address_summaries()))
            .collect();

        // Per upstream.
        type UpstreamValue = fn(&UpstreamCounts) -> u64;
        let per_upstream: [(&str, &str, MetricType, UpstreamValue); 4] = [
            (
                "upstream_pending_requests",
                "Requests sent to the upstream whose response head has not arrived yet \
                 (max_pending_requests caps it)",
                MetricType::Gauge,
                |c| c.pending as u64,
            ),
            (
                "upstream_retries",
                "Requests sent again to another address after their connection failed before \
                 any byte of them left (or the stream was refused)",
                MetricType::Counter,
                |c| c.retries,
            ),
            (
                "upstream_retries_over_budget",
                "Retries not made because the upstream's retry budget was spent",
                MetricType::Counter,
                |c| c.retries_over_budget,
            ),
            (
                "upstream_overloaded",
                "Requests answered 503 (gRPC UNAVAILABLE) because max_pending_requests were \
                 pending",
                MetricType::Counter,
                |c| c.overloaded,
            ),
        ];
        for (name, help, kind, value) in per_upstream {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for (upstream, counts, _) in &figures {
                let labels = [("upstream", *upstream)];
                let mut series = metric.encode_family(&labels)?;
                match kind {
                    MetricType::Counter => {
                        series.encode_counter::<NoLabelSet, _, u64>(&value(counts), None)?
                    }
                    _ => series.encode_gauge(&value(counts))?,
                }
            }
        }

        // Per address.
        {
            let mut metric = encoder.encode_descriptor(
                "upstream_address_healthy",
                "1 while the address takes new requests (listed, passing its health check, not \
                 ejected), else 0",
                None,
                MetricType::Gauge,
            )?;
            for (upstream, _, addresses) in &figures {
                for address in addresses {
                    let labels = [
                        ("upstream", *upstream),
                        ("address", address.address.as_str()),
                    ];
                    metric
                        .encode_family(&labels)?
                        .encode_gauge(&i64::from(address.state == "healthy"))?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "upstream_address_state",
                "The address's state: 1 on the series of the state it is in (healthy, \
                 unhealthy: failing its health check, ejected: after connection failures, \
                 draining: no longer listed by DNS)",
                None,
                MetricType::Gauge,
            )?;
            for (upstream, _, addresses) in &figures {
                for address in addresses {
                    for state in ADDRESS_STATES {
                        let labels = [
                            ("upstream", *upstream),
                            ("address", address.address.as_str()),
                            ("state", state),
                        ];
                        metric
                            .encode_family(&labels)?
                            .encode_gauge(&i64::from(address.state == state))?;
                    }
                }
            }
        }
        type AddressValue = fn(&AddressSummary) -> u64;
        let per_address: [(&str, &str, MetricType, AddressValue); 3] = [
            (
                "upstream_address_pending",
                "Requests sent to the address whose response head has not arrived yet",
                MetricType::Gauge,
                |a| a.pending as u64,
            ),
            (
                "upstream_address_ejections",
                "Times the address was ejected (taken out of the pick for a while) after a \
                 connection failure",
                MetricType::Counter,
                |a| a.ejections,
            ),
            (
                "upstream_address_requests",
                "Requests sent to the address (each attempt, retries included)",
                MetricType::Counter,
                |a| a.requests,
            ),
        ];
        for (name, help, kind, value) in per_address {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for (upstream, _, addresses) in &figures {
                for address in addresses {
                    let labels = [
                        ("upstream", *upstream),
                        ("address", address.address.as_str()),
                    ];
                    let mut series = metric.encode_family(&labels)?;
                    match kind {
                        MetricType::Counter => {
                            series.encode_counter::<NoLabelSet, _, u64>(&value(address), None)?
                        }
                        _ => series.encode_gauge(&value(address))?,
                    }
                }
            }
        }
        Ok(())
    }
}

pub struct FinishedRequest<'a> {
    pub route: Option<&'a RouteMetrics>,
    pub protocol: &'static str,
    pub status: u16,
    pub grpc_status: Option<u16>,
    pub seconds: f64,
    pub received: u64,
    pub sent_unbooked: u64,
}

/// gRPC status codes as label values without formatting; an unknown code is "other" and a
/// response without one is "" (label absent).
fn grpc_status_label(code: Option<u16>) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    match code {
        None => "",
        Some(code) => CODES.get(code as usize).copied().unwrap_or("other"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_request_is_booked_under_its_labels() {
        let metrics = Metrics::new();
        let route = metrics.route("pachd-grpc");
        metrics.stream_started();
        metrics.request_finished(FinishedRequest {
            route: Some(&route),
            protocol: "grpc",
            status: 200,
            grpc_status: Some(5),
            seconds: 0.002,
            received: 10,
            sent_unbooked: 20,
        });
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"pachgate_requests_total{route="pachd-grpc",protocol="grpc",status="200",grpc_status="5"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"pachgate_received_bytes_total{route="pachd-grpc"} 10"#));
        assert!(text.contains(r#"pachgate_sent_bytes_total{route="pachd-grpc"} 20"#));
        assert!(text.contains("pachgate_active_streams 0"));
        assert!(text.contains(r#"pachgate_config_reloads_total{result="failed"} 0"#));
        assert_eq!(metrics.live().requests, 1);
    }

    #[test]
    fn access_log_drops_are_read_from_the_writer_at_each_scrape() {
        let metrics = Metrics::new();
        assert!(metrics
            .encode()
            .contains("pachgate_access_log_dropped_total 0"));
        let dropped = Arc::new(AtomicU64::new(0));
        let source = dropped.clone();
        metrics.count_access_log_drops(move || source.load(Ordering::Relaxed));
        dropped.store(7, Ordering::Relaxed);
        let text = metrics.encode();
        assert!(
            text.contains("pachgate_access_log_dropped_total 7"),
            "{text}"
        );
        dropped.store(9, Ordering::Relaxed);
        assert!(metrics
            .encode()
            .contains("pachgate_access_log_dropped_total 9"));
    }
}
