//! Active health checks of one upstream address, as Pachyderm's Envoy runs them against each
//! pod: `grpc.health.v1.Health/Check` over HTTP/2 for pachd's gRPC port, an HTTP/1.1 GET of a
//! path for the rest (console `/health`, pachd HTTP `/healthz`, dex
//! `/dex/.well-known/openid-configuration`).
//!
//! [`spawn`] starts a task that checks one address every `interval` on a fresh connection,
//! the whole check (connect, TLS, request, answer) bounded by `timeout`, and keeps a
//! [`HealthState`] that the request path reads without locking. The upstream is untrusted:
//! answers are read with a size limit, protobuf is parsed defensively, and nothing it sends
//! can panic or stall the checker beyond `timeout`.
//!
//! State rules: a new address starts unhealthy (a pod listed before it is ready gets no
//! traffic) and is checked at once; its first success makes it healthy. From then on it turns
//! unhealthy after `unhealthy_threshold` failures in a row and healthy again after
//! `healthy_threshold` successes in a row.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

mod grpc;
mod http1;

pub use grpc::{decode_check_response, encode_check_request, ServingStatus};

/// The most of an answer (headers aside) a check reads: health answers are tiny.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The most header bytes a check accepts in an answer.
pub const MAX_HEADER_BYTES: u32 = 16 * 1024;

/// What a check asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// grpc.health.v1.Health/Check over HTTP/2 (h2c, or h2 over TLS); healthy iff
    /// grpc-status 0 and status SERVING. `service` is the request's `service` field (empty:
    /// the server as a whole).
    Grpc { service: String },
    /// HTTP/1.1 GET of a path (plain or TLS); healthy iff 2xx. The path may carry a query.
    HttpGet { path: String },
}

/// How and how often to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckSpec {
    pub kind: CheckKind,
    /// From the start of one check to the start of the next (at least 1 ms).
    pub interval: Duration,
    /// Bound on one whole check: connect, TLS, request and answer.
    pub timeout: Duration,
    /// Failures in a row that turn a healthy address unhealthy (0 counts as 1).
    pub unhealthy_threshold: u32,
    /// Successes in a row that turn an unhealthy address healthy again (0 counts as 1). An
    /// address that has never passed a check needs only one.
    pub healthy_threshold: u32,
}

/// How to reach the address.
#[derive(Clone)]
pub enum Transport {
    /// Plain TCP (h2c for gRPC checks).
    Plain,
    /// TLS with the upstream's client configuration. For gRPC checks its ALPN list should
    /// offer `h2` (a server that picks another protocol fails the check); for HTTP checks
    /// `http/1.1` or nothing.
    Tls {
        connector: tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
    },
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Plain => f.write_str("Plain"),
            Transport::Tls { server_name, .. } => f
                .debug_struct("Tls")
                .field("server_name", server_name)
                .finish_non_exhaustive(),
        }
    }
}

/// One address's health, shared between its checker and the request path.
#[derive(Debug, Default)]
pub struct HealthState {
    healthy: AtomicBool,
    checks: AtomicU64,
    failures: AtomicU64,
    last_failure: Mutex<Option<String>>,
}

impl HealthState {
    /// Whether the address may get new requests (one relaxed atomic load).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Checks finished so far, passed or failed.
    pub fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    /// Checks failed so far.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Why the latest failed check failed (for the status page), `None` before any failure.
    /// It stays after later successes; compare [`is_healthy`](Self::is_healthy).
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn record(&self, outcome: &Result<String, String>) {
        if let Err(reason) = outcome {
            *self
                .last_failure
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reason.clone());
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.checks.fetch_add(1, Ordering::Relaxed);
    }
}

/// The running checks of one address. Dropping it stops them, the check in flight included
/// (its connection is closed).
#[derive(Debug)]
pub struct Checker {
    state: Arc<HealthState>,
    task: JoinHandle<()>,
}

impl Checker {
    pub fn state(&self) -> Arc<HealthState> {
        self.state.clone()
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts checking `address` on the current tokio runtime (panics outside one, as
/// `tokio::spawn` does); `authority` goes in `:authority` / `Host`.
///
/// The address starts unhealthy and is checked at once. `on_change(healthy, reason)` is
/// called on every change of state, with the reason of the check that caused it (e.g.
/// "status SERVING", "HTTP 200", "connect refused", "timed out after 1s", "grpc-status 14
/// UNAVAILABLE", "status NOT_SERVING", "HTTP 503"); reasons name no secrets.
pub fn spawn(
    address: SocketAddr,
    authority: String,
    transport: Transport,
    spec: CheckSpec,
    on_change: impl Fn(bool, &str) + Send + Sync + 'static,
) -> Checker {
    let state = Arc::new(HealthState::default());
    let task = tokio::spawn(run(
        address,
        authority,
        transport,
        spec,
        state.clone(),
        on_change,
    ));
    Checker { state, task }
}

async fn run(
    address: SocketAddr,
    authority: String,
    transport: Transport,
    spec: CheckSpec,
    state: Arc<HealthState>,
    on_change: impl Fn(bool, &str) + Send + Sync + 'static,
) {
    let interval = spec.interval.max(Duration::from_millis(1));
    let mut tracker = Tracker::default();
    loop {
        let started = Instant::now();
        let outcome = check_once(address, &authority, &transport, &spec).await;
        state.record(&outcome);
        let (ok, reason) = match &outcome {
            Ok(reason) => (true, reason.as_str()),
            Err(reason) => (false, reason.as_str()),
        };
        if let Some(healthy) = tracker.record(ok, spec.healthy_threshold, spec.unhealthy_threshold)
        {
            state.healthy.store(healthy, Ordering::Relaxed);
            on_change(healthy, reason);
        } else if !ok && tracker.failing_from_the_start(spec.unhealthy_threshold) {
            // Not "turned unhealthy": a pod still starting looks the same, so say what is
            // known.
            on_change(
                false,
                &format!("no check passed since it was listed; {reason}"),
            );
        }
        tokio::time::sleep_until(started + interval).await;
    }
}

/// One check, bounded by the spec's timeout: `Ok(what passed)` or `Err(why it failed)`.
pub async fn check_once(
    address: SocketAddr,
    authority: &str,
    transport: &Transport,
    spec: &CheckSpec,
) -> Result<String, String> {
    let check = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| connect_reason(&e))?;
        let _ = tcp.set_nodelay(true);
        match transport {
            Transport::Plain => run_kind(tcp, "http", authority, &spec.kind).await,
            Transport::Tls {
                connector,
                server_name,
            } => {
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS handshake failed: {e}"))?;
                if let CheckKind::Grpc { .. } = spec.kind {
                    let alpn = tls.get_ref().1.alpn_protocol();
                    if alpn.is_some_and(|p| p != b"h2") {
                        return Err("TLS peer did not choose h2".to_string());
                    }
                }
                run_kind(tls, "https", authority, &spec.kind).await
            }
        }
    };
    match tokio::time::timeout(spec.timeout, check).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("timed out after {:?}", spec.timeout)),
    }
}

async fn run_kind<IO>(
    io: IO,
    scheme: &str,
    authority: &str,
    kind: &CheckKind,
) -> Result<String, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match kind {
        CheckKind::Grpc { service } => grpc::check(io, scheme, authority, service).await,
        CheckKind::HttpGet { path } => http1::check(io, authority, path).await,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn connect_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::ConnectionRefused => "connect refused".to_string(),
        _ => format!("connect failed: {error}"),
    }
}

/// The threshold rules, apart from any I/O.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    healthy: bool,
    ever_passed: bool,
    successes: u32,
    failures: u32,
    /// An address failing from its first check on was reported once.
    told_never_passed: bool,
}

impl Tracker {
    pub fn is_healthy(&self) -> bool {
        self.healthy
    }

    /// Records one check; returns the new state when it changed.
    pub fn record(
        &mut self,
        passed: bool,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<bool> {
        if passed {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            let needed = if self.ever_passed {
                healthy_threshold.max(1)
            } else {
                1
            };
            self.ever_passed = true;
            if !self.healthy && self.successes >= needed {
                self.healthy = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.healthy && self.failures >= unhealthy_threshold.max(1) {
                self.healthy = false;
                return Some(false);
            }
        }
        None
    }

    /// Whether an address that has never passed has now failed `unhealthy_threshold` times
    /// in a row, for the first time: worth one warning with the reason (a wrong `path` or
    /// `service`, say). [`record`](Self::record) reports no change for it, as it was never
    /// healthy, and traffic still reaches it while no address is healthy, so a check
    /// failing from the start would otherwise go unnoticed.
    pub fn failing_from_the_start(&mut self, unhealthy_threshold: u32) -> bool {
        let due = !self.ever_passed
            && !self.told_never_passed
            && self.failures >= unhealthy_threshold.max(1);
        self.told_never_passed |= due;
        due
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;

    fn run(tracker: &mut Tracker, outcomes: &str) -> Vec<Option<bool>> {
        outcomes
            .chars()
            .map(|c| tracker.record(c == '+', 3, 2))
            .collect()
    }

    #[test]
    fn a_new_address_is_unhealthy_until_its_first_success() {
        let mut tracker = Tracker::default();
        assert!(!tracker.is_healthy());
        // Failures before any success change nothing: it was never healthy.
        assert_eq!(run(&mut tracker, "---"), [None, None, None]);
        assert_eq!(run(&mut tracker, "+"), [Some(true)]);
        assert!(tracker.is_healthy());
    }

    #[test]
    fn thresholds_count_in_a_row() {
        let mut tracker = Tracker::default();
        assert_eq!(run(&mut tracker, "+"), [Some(true)]);
        // One failure, then a success: the streak restarts.
        assert_eq!(run(&mut tracker, "-+-"), [None, None, None]);
        assert_eq!(run(&mut tracker, "-"), [Some(false)]);
        // Back to healthy only after three successes in a row.
        assert_eq!(run(&mut tracker, "++-++"), [None, None, None, None, None]);
        assert_eq!(run(&mut tracker, "+"), [Some(true)]);
        assert!(tracker.is_healthy());
    }

    /// An address that fails from its first check on is reported once, when it has failed
    /// as many times as would make a healthy one unhealthy; not again, and not once it
    /// has passed.
    #[test]
    fn an_address_failing_from_the_start_is_reported_once() {
        let mut tracker = Tracker::default();
        let reports: Vec<bool> = "----"
            .chars()
            .map(|_| {
                tracker.record(false, 3, 2);
                tracker.failing_from_the_start(2)
            })
            .collect();
        assert_eq!(reports, [false, true, false, false]);

        let mut passed = Tracker::default();
        assert_eq!(run(&mut passed, "+--"), [Some(true), None, Some(false)]);
        assert!(!passed.failing_from_the_start(2));
    }

    #[test]
    fn zero_thresholds_count_as_one() {
        let mut tracker = Tracker::default();
        assert_eq!(tracker.record(true, 0, 0), Some(true));
        assert_eq!(tracker.record(false, 0, 0), Some(false));
        assert_eq!(tracker.record(true, 0, 0), Some(true));
    }
}
