//! The gateway: what the listeners (`connection`) and the request pipeline (`pipeline`)
//! share — the current configuration snapshot, the metrics, the server options, and the
//! drain (connections and websocket tunnels still open, and the signals that end them).

use std::sync::atomic;
use std::sync::Arc;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::connection::{server_builder, ServerLimits};
use crate::connection_limit::ConnectionSlots;
use crate::metrics::Metrics;
use crate::snapshot::{CarriedOver, Snapshot};

pub struct Gateway {
    /// Shared with the metrics, which read its upstreams at each scrape.
    pub(crate) snapshot: Arc<ArcSwap<Snapshot>>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: ServerLimits,
    /// Client connections open now, and `limits.max_connections` (which reloads change).
    pub(crate) slots: Arc<ConnectionSlots>,
    /// Set once on shutdown: listeners stop accepting, connections are told to finish.
    pub(crate) draining: tokio::sync::watch::Sender<bool>,
    /// Set once on shutdown, `drain_delay` before `draining`: `/readyz` fails.
    withdrawn: std::sync::atomic::AtomicBool,
    /// Connections and tunnels still open, for the drain.
    pub(crate) work: Arc<OpenWork>,
    /// Chosen by ALPN: h2 and http/1.1 skip preface sniffing; no ALPN gets auto-detection.
    pub(crate) auto: auto::Builder<TokioExecutor>,
    pub(crate) h1_only: auto::Builder<TokioExecutor>,
    pub(crate) h2_only: auto::Builder<TokioExecutor>,
}

impl Gateway {
    pub fn new(mut snapshot: Snapshot, limits: ServerLimits) -> Arc<Self> {
        let metrics = Arc::new(Metrics::new());
        snapshot.attach_metrics(&metrics);
        snapshot.start_upstreams();
        let work = Arc::new(OpenWork {
            active: atomic::AtomicUsize::new(0),
            all_closed: tokio::sync::Notify::new(),
            metrics: metrics.clone(),
            close_tunnels: tokio::sync::watch::channel(false).0,
        });
        let slots = ConnectionSlots::new(limits.max_connections, metrics.connections_gauge());
        metrics.set_max_connections(limits.max_connections);
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let scraped = snapshot.clone();
        metrics.read_upstreams_from(move || scraped.load().upstreams.clone());
        let auto = server_builder(&limits);
        let h1_only = server_builder(&limits).http1_only();
        let h2_only = server_builder(&limits).http2_only();
        Arc::new(Gateway {
            snapshot,
            metrics,
            limits,
            slots,
            draining: tokio::sync::watch::channel(false).0,
            withdrawn: std::sync::atomic::AtomicBool::new(false),
            work,
            auto,
            h1_only,
            h2_only,
        })
    }

    /// Graceful drain, step one: stop accepting, tell every connection to finish (GOAWAY to
    /// h2 clients, `Connection: close` to HTTP/1), keep serving what is in flight.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Shutdown, step zero: `/readyz` fails from now on, while everything is still served
    /// (see `ServerLimits::drain_delay`).
    pub fn withdraw(&self) {
        self.withdrawn
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `/readyz` should fail: withdrawn or draining.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(std::sync::atomic::Ordering::Relaxed) || self.is_draining()
    }

    /// Step two: resolves once every connection and websocket tunnel has closed.
    pub async fn drained(&self) {
        loop {
            let notified = self.work.all_closed.notified();
            if self.work.active.load(atomic::Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Step three, at the drain deadline: websocket tunnels send close frames (1001, going
    /// away) to both sides at the next frame boundary and end.
    pub fn close_tunnels(&self) {
        self.work.close_tunnels.send_replace(true);
    }

    pub(crate) fn tunnels(&self) -> TunnelTicket {
        TunnelTicket(self.work.clone())
    }

    /// Swaps in a new configuration; requests in flight finish on the old one. What did not
    /// change goes on from the running one ([`CarriedOver`] says what).
    pub fn replace_snapshot(&self, mut snapshot: Snapshot) -> CarriedOver {
        let carried = snapshot.carry_over(&self.snapshot.load());
        snapshot.attach_metrics(&self.metrics);
        snapshot.start_upstreams();
        self.snapshot.store(Arc::new(snapshot));
        carried
    }

    /// The configuration new requests use now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A new `limits.max_connections` (0: no cap), for connections accepted from now on;
    /// those already open stay, even above a lowered cap.
    pub fn set_max_connections(&self, max: usize) {
        self.slots.set_max(max);
        self.metrics.set_max_connections(max);
    }

    /// `limits.max_connections` now (0: no cap).
    pub fn max_connections(&self) -> usize {
        self.slots.max()
    }
}

/// Connections and tunnels in flight: what the drain waits for.
pub(crate) struct OpenWork {
    active: atomic::AtomicUsize,
    all_closed: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    /// Set at the drain deadline: tunnels end with close frames.
    close_tunnels: tokio::sync::watch::Sender<bool>,
}

#[derive(Clone, Copy)]
pub(crate) enum WorkKind {
    Connection,
    Tunnel,
}

/// Counts a connection or tunnel as open (for the drain, and tunnels for their gauge) until
/// dropped. The connection gauge counts sockets instead (`connection_limit`).
pub(crate) struct WorkGuard {
    work: Arc<OpenWork>,
    kind: WorkKind,
}

impl WorkGuard {
    pub(crate) fn new(work: Arc<OpenWork>, kind: WorkKind) -> Self {
        if let WorkKind::Tunnel = kind {
            work.metrics.tunnel_opened();
        }
        work.active.fetch_add(1, atomic::Ordering::AcqRel);
        WorkGuard { work, kind }
    }
}

impl Drop for WorkGuard {
    fn drop(&mut self) {
        if let WorkKind::Tunnel = self.kind {
            self.work.metrics.tunnel_closed();
        }
        let left = self.work.active.fetch_sub(1, atomic::Ordering::AcqRel);
        if left == 1 {
            self.work.all_closed.notify_waiters();
        }
    }
}

/// What a websocket tunnel needs from the gateway: to be counted, and to hear when to close.
#[derive(Clone)]
pub(crate) struct TunnelTicket(Arc<OpenWork>);

impl TunnelTicket {
    pub(crate) fn open(&self) -> WorkGuard {
        WorkGuard::new(self.0.clone(), WorkKind::Tunnel)
    }

    pub(crate) fn close_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.0.close_tunnels.subscribe()
    }
}
