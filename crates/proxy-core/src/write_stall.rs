//! How long a client may leave the bytes pachgate writes to it untaken: a connection whose
//! writes make no progress for `limits.idle_timeout` is closed.
//!
//! The route timers cannot see such a client: hyper stops polling a response body while it
//! cannot write, so a timer that lives in the body is never looked at again, and the
//! upstream request (and, toward an HTTP/1.1 upstream, its socket) would be held for as long
//! as the client keeps the connection open without reading. HTTP/2 clients that stop
//! reading are also caught by the keepalive PING; HTTP/1.1 has nothing else.
//!
//! Cost: nothing while writes go through; the timer is allocated at a connection's first
//! write that has to wait, and re-armed only when a wait begins.

use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One connection's watch over its writes: 16 bytes, in every connection's state.
#[derive(Default)]
pub(crate) struct WriteStall {
    /// Milliseconds a write may wait; `None`: for ever.
    limit_ms: Option<NonZeroU32>,
    /// A wait is being timed.
    waiting: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl WriteStall {
    pub(crate) fn new(limit: Option<Duration>) -> Self {
        let limit_ms = limit.and_then(|limit| {
            NonZeroU32::new(u32::try_from(limit.as_millis()).unwrap_or(u32::MAX).max(1))
        });
        WriteStall {
            limit_ms,
            waiting: false,
            timer: None,
        }
    }

    /// Passes a write's outcome on: progress ends a wait; a write that must wait starts
    /// one (or goes on with it), and past the limit becomes an error, which ends the
    /// connection.
    pub(crate) fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        let Some(limit_ms) = self.limit_ms else {
            return written;
        };
        if !written.is_pending() {
            self.waiting = false;
            return written;
        }
        let limit = Duration::from_millis(u64::from(limit_ms.get()));
        let deadline = Instant::now() + limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            self.waiting = true;
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client took none of the bytes written to it for {} ms",
                    limit.as_millis()
                ),
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_starts_over() {
        let mut stall = WriteStall::new(Some(Duration::from_secs(3)));
        let start = Instant::now();
        // Waits, then progress at 2 s: the limit starts over.
        let waiting = poll_fn(|cx| stall.watch(cx, Poll::<io::Result<usize>>::Pending));
        assert!(tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .is_err());
        let written = poll_fn(|cx| stall.watch(cx, Poll::Ready(Ok(5usize)))).await;
        assert_eq!(written.unwrap(), 5);
        let failed = poll_fn(|cx| stall.watch(cx, Poll::<io::Result<usize>>::Pending)).await;
        assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - start, Duration::from_secs(5));

        let mut never = WriteStall::new(None);
        let waiting = poll_fn(|cx| never.watch(cx, Poll::<io::Result<usize>>::Pending));
        assert!(tokio::time::timeout(Duration::from_secs(3600), waiting)
            .await
            .is_err());
        assert!(std::mem::size_of::<WriteStall>() <= 16);
    }
}
