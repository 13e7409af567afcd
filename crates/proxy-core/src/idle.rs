//! When a client connection last did anything: requests in flight on it and the moment the
//! last one ended, so a connection that holds no request for `idle_timeout` can be closed.
//! Keepalive PINGs and other frames do not count: an idle h2 connection whose client answers
//! every PING, or a TLS connection whose client never sends its h2 preface, otherwise stays
//! open (and costs memory) for as long as the client likes.
//!
//! The connection's shared state also carries its client address as the access log writes
//! it: each request already holds the state while in flight, so its log line reaches the
//! address without a reference count of its own.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::exchange::ClientAddress;

pub(crate) struct ConnActivity {
    opened: Instant,
    client: ClientAddress,
    in_flight: AtomicUsize,
    /// When the last request ended, in milliseconds after `opened`.
    last_ended_ms: AtomicU64,
}

impl ConnActivity {
    pub(crate) fn new(client: ClientAddress) -> Arc<Self> {
        Arc::new(ConnActivity {
            opened: Instant::now(),
            client,
            in_flight: AtomicUsize::new(0),
            last_ended_ms: AtomicU64::new(0),
        })
    }

    /// Counts a request as in flight until the returned guard's `end`. A guard dropped
    /// without it leaves the connection busy for good: never closed early, only never idle.
    pub(crate) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// No request has begun on the connection yet.
    pub(crate) fn never_served(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self.last_ended_ms.load(Ordering::Acquire) == 0
    }

    /// When the connection becomes idle for `timeout`: `None` while a request is in flight.
    pub(crate) fn idle_deadline(&self, timeout: Duration) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let last_ended = Duration::from_millis(self.last_ended_ms.load(Ordering::Acquire));
        Some(self.opened + last_ended + timeout)
    }
}

/// One request in flight on a connection, from its head to the response's last byte (or the
/// end of its websocket tunnel).
pub(crate) struct InFlight(Arc<ConnActivity>);

impl InFlight {
    /// The request ended at `ended` (its record already read the clock for its duration).
    /// What is returned still reaches the connection's client address (for the log line).
    pub(crate) fn end(self, ended: Instant) -> Ended {
        let activity = &self.0;
        // At least 1: 0 says no request has ended yet (see `ConnActivity::never_served`).
        let ended_ms = (ended.saturating_duration_since(activity.opened).as_millis() as u64).max(1);
        // A store, not a max: two requests ending together may land in either order, and
        // the difference is their few microseconds. Stored before the count drops, so a
        // watcher that sees no request in flight also sees when the last one ended.
        activity.last_ended_ms.store(ended_ms, Ordering::Release);
        activity.in_flight.fetch_sub(1, Ordering::Release);
        Ended(self.0)
    }
}

/// A request that has ended, still holding its connection's shared state.
pub(crate) struct Ended(Arc<ConnActivity>);

impl Ended {
    pub(crate) fn client(&self) -> &ClientAddress {
        &self.0.client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_follows_the_last_request_to_end() {
        let activity = ConnActivity::new(ClientAddress::new(([127, 0, 0, 1], 9).into()));
        let opened = activity.opened;
        let timeout = Duration::from_secs(10);
        assert_eq!(activity.idle_deadline(timeout), Some(opened + timeout));

        let first = activity.begin();
        let second = activity.begin();
        first.end(opened + Duration::from_secs(5));
        assert_eq!(activity.idle_deadline(timeout), None, "one still in flight");

        second.end(opened + Duration::from_secs(8));
        assert_eq!(
            activity.idle_deadline(timeout),
            Some(opened + Duration::from_secs(8) + timeout)
        );
    }
}
