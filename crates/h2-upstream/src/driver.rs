//! The task that drives a connection: reads and the frames they bring, writes, the
//! deadline for the upstream's SETTINGS, and keepalive pings.

use std::future::{poll_fn, Future};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pachgate_h2_wire::PING;

use crate::connection::{Inner, Shared};
use crate::{failure::Failure, Settings, READS_PER_WAKE};

impl Shared {
    /// The connection task's poll: ready when the connection has ended.
    pub(crate) fn poll_drive(&self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        let mut inner = self.lock();
        if !inner
            .driver
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            inner.driver = Some(cx.waker().clone());
        }
        inner.queued = 0;
        let mut reads = 0;
        while inner.failure.is_none() && inner.io.is_some() {
            if reads == READS_PER_WAKE {
                cx.waker().wake_by_ref();
                break;
            }
            reads += 1;
            match inner.poll_read(cx) {
                Poll::Ready(Ok(())) => {
                    if let Err((reason, text)) = inner.process_frames() {
                        inner.connection_error(reason, text);
                    }
                }
                Poll::Ready(Err(text)) => inner.fail(Failure::Connection(text.into())),
                Poll::Pending => break,
            }
        }
        inner.write_out(cx);
        if let Some(failure) = inner.failure.clone() {
            self.closed.store(true, Ordering::Release);
            inner.io = None;
            return Poll::Ready(Err(failure));
        }
        if inner.going_away.is_some() {
            self.closed.store(true, Ordering::Release);
            if inner.streams.is_empty() && inner.out.is_empty() {
                inner.io = None;
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    }

    /// Keepalive: called when the timer fires; the next deadline, or the failure.
    pub(crate) fn keepalive_tick(
        &self,
        every: Duration,
        timeout: Duration,
    ) -> Result<Duration, Failure> {
        let mut inner = self.lock();
        // Frames from the upstream prove it alive but not that it reads: one that sends and
        // never reads would hold our requests and uploads forever. Output waiting at two
        // looks running with nothing written since the look before them (between one and two
        // intervals, 30-60 s by default, after the last write) ends the connection.
        let waiting = !inner.out.is_empty();
        let progressed = std::mem::take(&mut inner.wrote);
        let stalled = waiting && !progressed;
        if stalled && inner.write_stalled {
            let failure = Failure::Connection(
                format!(
                    "the upstream read nothing we sent over two keepalive intervals ({:?} each)",
                    every.min(timeout)
                )
                .into(),
            );
            inner.fail(failure.clone());
            return Err(failure);
        }
        inner.write_stalled = stalled;
        if std::mem::take(&mut inner.heard) {
            inner.ping_outstanding = false;
            return Ok(every);
        }
        if inner.ping_outstanding {
            let failure =
                Failure::Connection(format!("no keepalive pong within {timeout:?}").into());
            inner.fail(failure.clone());
            return Err(failure);
        }
        // The last ping was answered: a full interval before the next.
        if std::mem::take(&mut inner.pong_received) {
            return Ok(every);
        }
        inner.ping_outstanding = true;
        inner.out.frame_header(8, PING, 0, 0);
        inner.out.small.extend_from_slice(b"pachgate");
        inner.wake_driver();
        Ok(timeout)
    }
}

/// Drives the connection: socket I/O, the deadline for the upstream's SETTINGS, and
/// keepalive pings while the upstream is silent.
pub(crate) async fn drive(shared: Arc<Shared>, settings: Settings) -> Result<(), Failure> {
    let _gone = DriverGone(shared.clone());
    let keepalive = settings.keepalive;
    let mut timer = keepalive.map(|(every, _)| Box::pin(tokio::time::sleep(every)));
    let mut settings_deadline = Some(Box::pin(tokio::time::sleep(settings.settings_timeout)));
    let ended = poll_fn(|cx| {
        if let Poll::Ready(ended) = shared.poll_drive(cx) {
            return Poll::Ready(ended);
        }
        if let Some(deadline) = settings_deadline.as_mut() {
            if shared.lock().peer_settings_seen {
                settings_deadline = None;
            } else if deadline.as_mut().poll(cx).is_ready() {
                let failure = Failure::Connection(
                    format!(
                        "no h2 SETTINGS from the upstream within {:?} (is it an h2 server?)",
                        settings.settings_timeout
                    )
                    .into(),
                );
                let mut inner = shared.lock();
                inner.fail(failure.clone());
                inner.io = None;
                shared.closed.store(true, Ordering::Release);
                return Poll::Ready(Err(failure));
            }
        }
        if let (Some(timer), Some((every, timeout))) = (timer.as_mut(), keepalive) {
            while timer.as_mut().poll(cx).is_ready() {
                match shared.keepalive_tick(every, timeout) {
                    Ok(next) => timer.as_mut().reset(tokio::time::Instant::now() + next),
                    Err(failure) => {
                        shared.closed.store(true, Ordering::Release);
                        shared.lock().io = None;
                        return Poll::Ready(Err(failure));
                    }
                }
            }
        }
        Poll::Pending
    })
    .await;
    shared.closed.store(true, Ordering::Release);
    ended
}

/// Ends the connection when its driving task does, however it ends: should that be a panic
/// (or the runtime shutting down), its streams fail instead of waiting forever for frames
/// nobody reads, and the next request opens a new connection.
pub(crate) struct DriverGone(Arc<Shared>);

impl Drop for DriverGone {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
        let mut inner = self.0.lock();
        if inner.failure.is_none() {
            inner.fail(Failure::Connection(
                "the upstream connection's task ended".into(),
            ));
        }
        inner.io = None;
    }
}

impl Inner {
    /// Reads once into the buffer behind any partial frame.
    pub(crate) fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), String>> {
        let io = self.io.as_mut().expect("read only while open");
        match self.reader.poll_read(io, cx) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err("upstream closed the connection".into())),
            Poll::Ready(Ok(_)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(format!("upstream read failed: {e}"))),
            Poll::Pending => Poll::Pending,
        }
    }
}
