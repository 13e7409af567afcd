//! `limits.max_connections`: a cap on the client connections open at once across the https
//! and plain http listeners (the admin listener is not counted), so an overload cannot use up
//! the process's file descriptors or memory.
//!
//! A connection takes a [`Slot`] the moment it is accepted, before the PROXY header, the
//! allow-list and the TLS handshake, and its socket ([`ClientSocket`]) keeps the slot until it
//! closes, including while it carries a websocket tunnel after HTTP has let go of it. Past
//! the cap a new connection is accepted and closed at once (no TLS handshake, no task), so the
//! kernel's accept queue keeps draining; each is counted in
//! `pachgate_connections_refused_total{reason="max_connections"}` and a warning with the
//! count is logged at most once a second. The cap may change on reload: connections already
//! open are never closed for it, new ones wait until the count is below it again.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::metrics::Gauge;
use crate::write_stall::WriteStall;

/// The cap when nothing smaller is called for by the open-files limit.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// File descriptors kept aside from the open-files limit for everything that is not a client
/// connection: listeners, h2 upstream connections (one per worker and endpoint), the config
/// and certificate watches, logs.
const DESCRIPTOR_HEADROOM: u64 = 256;
/// The least a derived default goes down to, however low the open-files limit.
const LEAST_DERIVED_MAX: usize = 64;
/// At most one "refused" warning per this long; the refusals in between are summed into it.
const WARNING_INTERVAL: Duration = Duration::from_secs(1);

/// The default `limits.max_connections`: [`DEFAULT_MAX_CONNECTIONS`], or less when the
/// process's open-files limit (the soft `RLIMIT_NOFILE`) could not hold that many, see
/// [`max_connections_for_descriptors`]. Where the limit cannot be read (not Linux), the
/// constant.
pub fn default_max_connections() -> usize {
    match open_files_limit() {
        Some(descriptors) => {
            max_connections_for_descriptors(descriptors).min(DEFAULT_MAX_CONNECTIONS)
        }
        None => DEFAULT_MAX_CONNECTIONS,
    }
}

/// How many client connections `descriptors` file descriptors can carry: the headroom set
/// aside, half of the rest, since a client connection may hold a second descriptor toward
/// an HTTP/1 upstream (console, S3, pachd's HTTP ports) while a request is in flight. Never
/// below [`LEAST_DERIVED_MAX`].
pub fn max_connections_for_descriptors(descriptors: u64) -> usize {
    let usable = descriptors.saturating_sub(DESCRIPTOR_HEADROOM) / 2;
    usize::try_from(usable)
        .unwrap_or(usize::MAX)
        .max(LEAST_DERIVED_MAX)
}

/// The soft open-files limit of this process (`ulimit -n`); `None` if unlimited or unknown.
/// Read from `/proc/self/limits`, so no system call binding is needed.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_files_limit(&limits)
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    // "Max open files            1024                 524288               files"
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The open client connections and the cap on them, shared by every listener and worker.
pub(crate) struct ConnectionSlots {
    /// `pachgate_active_connections`; its value is the count the cap is checked against.
    open: Gauge,
    /// 0: no cap.
    max: AtomicUsize,
    /// Refusals not yet reported in a warning.
    unreported: AtomicU64,
    /// When the next warning may be logged, in milliseconds since `epoch`.
    next_warning: AtomicU64,
    epoch: Instant,
}

/// One client connection's place under the cap, given back when dropped.
pub(crate) struct Slot(Arc<ConnectionSlots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.dec();
    }
}

impl ConnectionSlots {
    pub(crate) fn new(max: usize, open: Gauge) -> Arc<Self> {
        Arc::new(ConnectionSlots {
            open,
            max: AtomicUsize::new(max),
            unreported: AtomicU64::new(0),
            next_warning: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    pub(crate) fn max(&self) -> usize {
        self.max.load(Ordering::Relaxed)
    }

    pub(crate) fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub(crate) fn open(&self) -> usize {
        usize::try_from(self.open.get()).unwrap_or(0)
    }

    /// A place for a new connection, if the count is below the cap.
    pub(crate) fn take(self: &Arc<Self>) -> Option<Slot> {
        let max = self.max() as i64;
        let open = self.open.inner();
        if max == 0 {
            open.fetch_add(1, Ordering::AcqRel);
        } else {
            open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()?;
        }
        Some(Slot(self.clone()))
    }

    /// Notes one refused connection; returns how many to report in a warning now (this one
    /// and those since the last warning), or `None` while the last warning is recent.
    pub(crate) fn refused(&self) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now = self.epoch.elapsed().as_millis() as u64;
        let next = self.next_warning.load(Ordering::Relaxed);
        if now < next {
            return None;
        }
        let after = now + WARNING_INTERVAL.as_millis() as u64;
        self.next_warning
            .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        Some(self.unreported.swap(0, Ordering::Relaxed))
    }
}

/// A client's socket with its [`Slot`]: the connection counts until the socket closes.
/// Its writes are watched ([`WriteStall`]): a client that takes nothing for the limit
/// loses the connection.
pub(crate) struct ClientSocket {
    tcp: TcpStream,
    _slot: Slot,
    stall: WriteStall,
}

impl ClientSocket {
    pub(crate) fn new(tcp: TcpStream, slot: Slot, write_stall_limit: Option<Duration>) -> Self {
        ClientSocket {
            tcp,
            _slot: slot,
            stall: WriteStall::new(write_stall_limit),
        }
    }
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write(cx, buf);
        this.stall.watch(cx, &this.tcp, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.tcp).poll_write_vectored(cx, bufs);
        this.stall.watch(cx, &this.tcp, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap_and_come_back_when_dropped() {
        let gauge = Gauge::default();
        let slots = ConnectionSlots::new(2, gauge.clone());
        let first = slots.take().expect("below the cap");
        let second = slots.take().expect("below the cap");
        assert!(slots.take().is_none(), "a third past a cap of 2");
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!(slots.open(), 1);
        let third = slots.take().expect("a place was given back");
        // Lowered below what is open: nothing is taken away, nothing new gets in.
        slots.set_max(1);
        assert!(slots.take().is_none());
        drop(second);
        assert!(slots.take().is_none(), "still at the lowered cap");
        drop(third);
        let fourth = slots.take().expect("below the lowered cap");
        // 0: no cap at all.
        slots.set_max(0);
        let many: Vec<_> = (0..100).map(|_| slots.take().expect("no cap")).collect();
        assert_eq!(slots.open(), 101);
        drop((fourth, many));
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn refusals_are_reported_at_most_once_a_second_with_their_count() {
        let slots = ConnectionSlots::new(1, Gauge::default());
        assert_eq!(slots.refused(), Some(1), "the first refusal is reported");
        for _ in 0..10 {
            assert_eq!(slots.refused(), None, "within the interval");
        }
        // As if the interval had passed.
        slots.next_warning.store(0, Ordering::Relaxed);
        assert_eq!(slots.refused(), Some(11), "the ten held back, and this one");
    }

    #[test]
    fn the_default_follows_the_open_files_limit() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open processes        63704                63704                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), None);
        assert_eq!(max_connections_for_descriptors(1024), 384);
        assert_eq!(max_connections_for_descriptors(1_048_576), 524_160);
        assert_eq!(max_connections_for_descriptors(100), LEAST_DERIVED_MAX);
        let default = default_max_connections();
        assert!((LEAST_DERIVED_MAX..=DEFAULT_MAX_CONNECTIONS).contains(&default));
        if let Some(descriptors) = open_files_limit() {
            assert_eq!(
                default,
                max_connections_for_descriptors(descriptors).min(DEFAULT_MAX_CONNECTIONS)
            );
        }
    }
}
