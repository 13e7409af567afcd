//! The addresses an upstream's endpoint names stand for (one per pod behind a headless
//! Service), what makes one unusable for new requests (its name no longer lists it, its
//! health check fails, or it is ejected for a while after connection failures), and how a
//! request picks one: power of two choices on pending requests among the usable ones, or
//! among all of them when none is usable (better to try a sick pod than to fail everything).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use http::uri::Authority;
use pachgate_h2_upstream as h2_client;

use crate::error::ProxyError;

/// Ejection after connection failures: 1 s after the first, doubling per failure in a row,
/// at most 30 s. A success ends the streak.
const EJECTION_BASE: Duration = Duration::from_secs(1);
const EJECTION_MAX: Duration = Duration::from_secs(30);

/// One worker's connection to one address.
#[derive(Default)]
pub(crate) struct H2Slot {
    /// Loaded lock-free on every request.
    pub(crate) connection: ArcSwapOption<h2_client::Connection>,
    /// Serialises reconnects so a burst after a failure opens one connection, not hundreds.
    pub(crate) connecting: tokio::sync::Mutex<()>,
    /// The last connect that failed, and when it ended: requests that waited behind it take
    /// its answer instead of each trying (and waiting out `connect_timeout`) in turn.
    pub(crate) failed: Mutex<Option<(Instant, ProxyError)>>,
}

impl H2Slot {
    /// The failure of a connect that ended after `since`, if the last one did.
    pub(crate) fn failed_since(&self, since: Instant) -> Option<ProxyError> {
        let failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        failed
            .as_ref()
            .filter(|(at, _)| *at >= since)
            .map(|(_, error)| error.clone())
    }

    pub(crate) fn note_failed(&self, error: &ProxyError) {
        *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), error.clone()));
    }
}

/// Whether an address passes its upstream's active health check. Addresses of upstreams
/// without a check always do.
pub(crate) trait HealthView: Send + Sync {
    fn is_healthy(&self) -> bool;
}

pub(crate) struct Address {
    /// What TCP connects to: `10.1.2.3:1650`, or the endpoint's own `host:port` while its
    /// name has no DNS answer yet (the system resolver is then asked at connect time).
    pub(crate) target: String,
    /// The resolved address, when there is one.
    pub(crate) socket: Option<SocketAddr>,
    /// `target` again, shareable with access-log records without a copy.
    pub(crate) label: Arc<str>,
    /// The configured endpoint's authority (`pachd:1650`): `:authority` on h2 upstreams when
    /// the client gave none.
    pub(crate) endpoint_authority: Authority,
    /// `target` as an authority: HTTP/1.1 pools key their connections by it, so each
    /// address has its own pool.
    pub(crate) target_authority: Authority,
    /// Requests sent here whose response head has not arrived.
    pub(crate) pending: AtomicUsize,
    /// Its name stopped listing it: no new requests; its connections end after their
    /// in-flight work.
    pub(crate) draining: AtomicBool,
    /// Set once the health checker for this address has started.
    pub(crate) health: OnceLock<Arc<dyn HealthView>>,
    /// Keeps the address's health checker running; dropped (and the checker stopped) when
    /// the address leaves the set.
    #[allow(dead_code)] // held, never read: its drop stops the checker
    pub(crate) checker: Mutex<Option<Box<dyn Send>>>,
    /// Milliseconds (on [`clock_ms`]) until which the address is ejected; 0: not ejected.
    ejected_until_ms: AtomicU64,
    /// Connection failures in a row.
    strikes: AtomicU32,
    pub(crate) ejections: AtomicU64,
    /// Requests sent here (attempts, retries included).
    pub(crate) requests: AtomicU64,
    /// h2 connections, one per worker (empty for HTTP/1.1 upstreams, which use the pool).
    pub(crate) h2: Box<[H2Slot]>,
}

impl Address {
    pub(crate) fn new(
        target: String,
        socket: Option<SocketAddr>,
        endpoint_authority: Authority,
        h2_slots: usize,
    ) -> Result<Self, String> {
        let target_authority = target
            .parse::<Authority>()
            .map_err(|e| format!("address {target:?}: {e}"))?;
        Ok(Address {
            label: Arc::from(target.as_str()),
            target,
            socket,
            endpoint_authority,
            target_authority,
            pending: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            health: OnceLock::new(),
            checker: Mutex::new(None),
            ejected_until_ms: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            ejections: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            h2: (0..h2_slots).map(|_| H2Slot::default()).collect(),
        })
    }

    pub(crate) fn is_healthy(&self) -> bool {
        self.health.get().is_none_or(|health| health.is_healthy())
    }

    pub(crate) fn is_ejected(&self) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > clock_ms()
    }

    /// Takes new requests: listed, healthy and not ejected.
    fn usable(&self) -> bool {
        self.resendable() && self.is_healthy()
    }

    /// Listed, and no connection to it failed a moment ago (its health check aside).
    fn resendable(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && !self.is_ejected()
    }

    /// A connection to this address failed (refused, timed out, reset before it spoke):
    /// eject it for a while, longer for each failure in a row.
    pub(crate) fn note_connection_failure(&self) -> Duration {
        let strikes = self.strikes.fetch_add(1, Ordering::Relaxed).min(16);
        let ejection = EJECTION_BASE
            .saturating_mul(1 << strikes.min(5))
            .min(EJECTION_MAX);
        self.ejected_until_ms
            .store(clock_ms() + ejection.as_millis() as u64, Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        ejection
    }

    /// A response head arrived from this address: its failure streak is over. Read before
    /// written, so the common case touches no shared cache line for writing.
    pub(crate) fn note_success(&self) {
        if self.strikes.load(Ordering::Relaxed) != 0 {
            self.strikes.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Ends every worker's h2 connection to this address once its streams have.
    pub(crate) fn retire_connections(&self) {
        for slot in self.h2.iter() {
            if let Some(connection) = slot.connection.swap(None) {
                connection.retire();
            }
        }
    }

    pub(crate) fn state_name(&self) -> &'static str {
        if self.draining.load(Ordering::Relaxed) {
            "draining"
        } else if !self.is_healthy() {
            "unhealthy"
        } else if self.is_ejected() {
            "ejected"
        } else {
            "healthy"
        }
    }
}

/// Milliseconds since the first call (never 0, so 0 can mean "not set").
pub(crate) fn clock_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// The addresses a request has already been sent to (and failed on): a retry goes elsewhere.
#[derive(Default)]
pub(crate) struct Tried {
    seen: [usize; 5],
    count: usize,
}

impl Tried {
    pub(crate) fn add(&mut self, address: &Arc<Address>) {
        if self.count < self.seen.len() {
            self.seen[self.count] = Arc::as_ptr(address) as usize;
            self.count += 1;
        }
    }

    fn contains(&self, address: &Arc<Address>) -> bool {
        let key = Arc::as_ptr(address) as usize;
        self.seen[..self.count].contains(&key)
    }
}

/// Picks an address for a new request among `addresses`, skipping `tried`: two usable ones
/// at random, the one with fewer pending requests. When no untried address is usable, any
/// untried one that is still listed (Envoy's "panic mode"), those not ejected first, then
/// any untried one at all.
pub(crate) fn pick(addresses: &[Arc<Address>], tried: &Tried) -> Option<Arc<Address>> {
    if let [only] = addresses {
        return (!tried.contains(only)).then(|| only.clone());
    }
    let filters: [&dyn Fn(&Address) -> bool; 4] = [
        &|a| a.usable(),
        &|a| a.resendable(),
        &|a| !a.draining.load(Ordering::Relaxed),
        &|_| true,
    ];
    for filter in filters {
        let candidate = |a: &&Arc<Address>| filter(a) && !tried.contains(a);
        let count = addresses.iter().filter(candidate).count();
        if count == 0 {
            continue;
        }
        // The filter reads state other threads change (ejection, health, DNS): an address
        // counted above may fail it below. Then whatever still passes is taken, and only
        // when none does is the next filter tried.
        let nth = |n: usize| addresses.iter().filter(candidate).nth(n);
        let picked = if count == 1 {
            nth(0)
        } else {
            let first = random_below(count);
            let second = (first + 1 + random_below(count - 1)) % count;
            match (nth(first), nth(second)) {
                (Some(a), Some(b)) => {
                    let fewer =
                        b.pending.load(Ordering::Relaxed) < a.pending.load(Ordering::Relaxed);
                    Some(if fewer { b } else { a })
                }
                (one, other) => one.or(other).or_else(|| addresses.iter().find(candidate)),
            }
        };
        match picked {
            Some(one) => return Some(one.clone()),
            None => continue,
        }
    }
    None
}

/// Whether an untried address is listed and not ejected: where a request whose connection
/// failed may go next. One failing its health check still may (the check can be wrong, or
/// not have passed yet on a new address); one whose own connection failed a moment ago
/// may not: when every address is down, trying each in turn made every request wait a
/// connect timeout per address.
pub(crate) fn any_resendable(addresses: &[Arc<Address>], tried: &Tried) -> bool {
    addresses
        .iter()
        .any(|a| a.resendable() && !tried.contains(a))
}

/// A cheap per-thread random number below `bound` (xorshift; fairness, not secrecy).
fn random_below(bound: usize) -> usize {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            let seed = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            (seed ^ (&seed as *const u64 as u64)) | 1
        });
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x % bound as u64) as usize
    })
}

/// Counts a request as pending on its address (for the pick) until dropped.
pub(crate) struct PendingOn<'a>(&'a Address);

impl<'a> PendingOn<'a> {
    pub(crate) fn new(address: &'a Address) -> Self {
        address.pending.fetch_add(1, Ordering::Relaxed);
        address.requests.fetch_add(1, Ordering::Relaxed);
        PendingOn(address)
    }
}

impl Drop for PendingOn<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(n: u8) -> Arc<Address> {
        let target = format!("127.0.0.{n}:1650");
        Arc::new(
            Address::new(
                target.clone(),
                target.parse().ok(),
                "pachd:1650".parse().unwrap(),
                0,
            )
            .unwrap(),
        )
    }

    #[test]
    fn the_less_loaded_of_two_wins() {
        let set = vec![address(2), address(3)];
        set[0].pending.store(5, Ordering::Relaxed);
        for _ in 0..50 {
            let picked = pick(&set, &Tried::default()).unwrap();
            assert_eq!(&*picked.label, "127.0.0.3:1650");
        }
    }

    #[test]
    fn picks_spread_over_idle_addresses() {
        let set = vec![address(2), address(3), address(4)];
        let mut seen = std::collections::HashMap::new();
        for _ in 0..300 {
            let picked = pick(&set, &Tried::default()).unwrap();
            *seen.entry(picked.label.clone()).or_insert(0) += 1;
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(seen.values().all(|&n| n > 30), "{seen:?}");
    }

    #[test]
    fn draining_ejected_and_tried_addresses_are_skipped() {
        let set = vec![address(2), address(3), address(4)];
        set[0].draining.store(true, Ordering::Relaxed);
        set[1].note_connection_failure();
        for _ in 0..20 {
            assert_eq!(
                &*pick(&set, &Tried::default()).unwrap().label,
                "127.0.0.4:1650"
            );
        }
        let mut tried = Tried::default();
        tried.add(&set[2]);
        // Nothing usable is left: the ejected (still listed) address is tried before the
        // draining one.
        assert_eq!(&*pick(&set, &tried).unwrap().label, "127.0.0.3:1650");
        tried.add(&set[1]);
        assert_eq!(&*pick(&set, &tried).unwrap().label, "127.0.0.2:1650");
        tried.add(&set[0]);
        assert!(pick(&set, &tried).is_none());
    }

    #[test]
    fn ejection_grows_with_failures_in_a_row_and_ends_on_success() {
        let a = address(2);
        assert_eq!(a.note_connection_failure(), Duration::from_secs(1));
        assert_eq!(a.note_connection_failure(), Duration::from_secs(2));
        assert!(a.is_ejected());
        a.note_success();
        assert!(!a.is_ejected());
        assert_eq!(a.note_connection_failure(), Duration::from_secs(1));
        for _ in 0..10 {
            a.note_connection_failure();
        }
        assert_eq!(a.note_connection_failure(), EJECTION_MAX);
    }

    /// An address that stops passing between the count and the pick (another thread ejects
    /// it; here its health check turns) does not make the pick come back empty.
    #[test]
    fn an_address_that_changes_state_mid_pick_is_passed_over() {
        struct HealthyOnce(std::sync::atomic::AtomicBool);
        impl HealthView for HealthyOnce {
            fn is_healthy(&self) -> bool {
                !self.0.swap(true, Ordering::SeqCst)
            }
        }
        let (a, b) = (address(1), address(2));
        a.note_connection_failure();
        let _ = b
            .health
            .set(Arc::new(HealthyOnce(std::sync::atomic::AtomicBool::new(
                false,
            ))));
        let picked = pick(&[a.clone(), b.clone()], &Tried::default());
        assert!(picked.is_some(), "panic mode takes one of them");
    }
}
