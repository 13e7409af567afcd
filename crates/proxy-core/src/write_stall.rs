//! How long a client may leave the bytes pachgate writes to it untaken: a connection whose
//! writes have waited `limits.idle_timeout` while the client took none of them is closed.
//!
//! The route timers cannot see such a client: hyper stops polling a response body while it
//! cannot write, so a timer that lives in the body is never looked at again, and the
//! upstream request (and, toward an HTTP/1.1 upstream, its socket) would be held for as long
//! as the client keeps the connection open without reading. HTTP/2 clients that stop
//! reading are also caught by the keepalive PING; HTTP/1.1 has nothing else.
//!
//! A slow client is not one that takes nothing: the kernel says a socket is writable again
//! only once a third of its send buffer is free, which a client reading a few KB/s from a
//! buffer autotuned to megabytes can take minutes to free. So when the limit is reached,
//! the socket's unacknowledged bytes (`SIOCOUTQ`) are compared with those when the wait
//! began: [`MIN_TAKEN`] fewer (or none left), and the wait starts over. A client that takes
//! less per period, a trickle that would hold its upstream request for ever, is cut. (A
//! receiver opens its window in steps of up to a sixteenth of its buffer, so a client that
//! reads under that much per period may show no progress and be cut too.)
//!
//! Cost: nothing while writes go through; the timer is allocated at a connection's first
//! write that has to wait, and re-armed only when a wait begins.

use std::future::Future;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// What a client must take per period for a wait to start over.
const MIN_TAKEN: u32 = 16 * 1024;

/// One connection's watch over its writes: 24 bytes, in every connection's state.
#[derive(Default)]
pub(crate) struct WriteStall {
    /// Milliseconds a write may wait with nothing taken; `None`: for ever.
    limit_ms: Option<NonZeroU32>,
    /// A wait is being timed.
    waiting: bool,
    /// The socket's unacknowledged bytes when the wait (or its last extension) began.
    unsent: u32,
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
            unsent: 0,
            timer: None,
        }
    }

    /// Passes a write's outcome on: progress ends a wait; a write that must wait starts
    /// one (or goes on with it), and once the client has taken nothing for the limit it
    /// becomes an error, which ends the connection. `socket`: the client's socket.
    pub(crate) fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        socket: &impl AsRawFd,
        written: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        self.watch_with(cx, || unsent_bytes(socket.as_raw_fd()), written)
    }

    /// [`WriteStall::watch`], with the socket's unsent bytes read by `unsent`.
    fn watch_with<T>(
        &mut self,
        cx: &mut Context<'_>,
        unsent: impl Fn() -> Option<u32>,
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
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + limit)));
        if !self.waiting {
            self.waiting = true;
            self.unsent = unsent().unwrap_or(0);
            timer.as_mut().reset(Instant::now() + limit);
        }
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match unsent() {
                // The client took some: it is slow, not gone. The wait starts over.
                Some(now) if now == 0 || now.saturating_add(MIN_TAKEN) <= self.unsent => {
                    self.unsent = now;
                    timer.as_mut().reset(Instant::now() + limit);
                }
                _ => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the client took none of the bytes written to it for {} ms",
                            limit.as_millis()
                        ),
                    )))
                }
            }
        }
    }
}

/// Bytes in the socket's send queue that the client has not acknowledged, sent or not
/// (`SIOCOUTQ`); `None` where that cannot be read.
fn unsent_bytes(fd: RawFd) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points to
        // a live c_int; `fd` is the client's open socket, borrowed for this call.
        let done = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut unsent as *mut libc::c_int) };
        (done == 0).then(|| u32::try_from(unsent).ok()).flatten()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = fd;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::future::poll_fn;

    #[tokio::test(start_paused = true)]
    async fn a_write_that_waits_past_the_limit_fails_and_progress_starts_over() {
        let mut stall = WriteStall::new(Some(Duration::from_secs(3)));
        let unsent = Cell::new(100_000);
        let pending = || Poll::<io::Result<usize>>::Pending;
        let start = Instant::now();
        // Waits, then a write goes through at 2 s: the limit starts over.
        let waiting = poll_fn(|cx| stall.watch_with(cx, || Some(unsent.get()), pending()));
        assert!(tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .is_err());
        let written = poll_fn(|cx| stall.watch_with(cx, || Some(unsent.get()), Poll::Ready(Ok(5))));
        assert_eq!(written.await.unwrap(), 5);
        // Waits again; at the limit the client has taken 20,000 bytes: the wait starts over.
        // Then it takes 1,000 more: a trickle, not enough.
        let slow = async {
            tokio::time::sleep(Duration::from_secs(2)).await;
            unsent.set(80_000);
            tokio::time::sleep(Duration::from_secs(2)).await;
            unsent.set(79_000);
        };
        let waiting = poll_fn(|cx| stall.watch_with(cx, || Some(unsent.get()), pending()));
        let (failed, ()) = tokio::join!(waiting, slow);
        assert_eq!(failed.unwrap_err().kind(), io::ErrorKind::TimedOut);
        // 2 s, then 3 s to the first look (20,000 taken: more), then 3 s with 1,000 taken.
        assert_eq!(Instant::now() - start, Duration::from_secs(8));

        let mut never = WriteStall::new(None);
        let waiting = poll_fn(|cx| never.watch_with(cx, || None, pending()));
        assert!(tokio::time::timeout(Duration::from_secs(3600), waiting)
            .await
            .is_err());
        assert!(std::mem::size_of::<WriteStall>() <= 24);
    }

    /// The unsent-bytes count of a real socket: once the peer's buffers are full it stays
    /// where it is, and it falls when the peer reads.
    #[tokio::test]
    async fn unsent_bytes_fall_only_as_the_peer_reads() {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ours = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut theirs, _) = listener.accept().await.unwrap();
        assert_eq!(unsent_bytes(ours.as_raw_fd()), Some(0));
        let chunk = vec![7u8; 64 * 1024];
        let mut written = 0;
        loop {
            match ours.try_write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let full = unsent_bytes(ours.as_raw_fd()).expect("SIOCOUTQ on Linux");
        assert!(full > 0);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            unsent_bytes(ours.as_raw_fd()),
            Some(full),
            "nothing was read"
        );
        // Half of what was written: its first part sits in the peer's receive buffer, and
        // reading it makes room for the rest.
        let mut read = vec![0u8; written / 2];
        theirs.read_exact(&mut read).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let after = unsent_bytes(ours.as_raw_fd()).unwrap();
        assert!(
            after < full,
            "{after} of {full} unsent after {} bytes were read",
            read.len()
        );
    }
}
