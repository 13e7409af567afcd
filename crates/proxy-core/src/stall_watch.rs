//! The route timers of answers an HTTP/2 client has stopped taking.
//!
//! hyper's HTTP/2 server polls a response body only while the client's stream has send
//! window: a client that keeps its connection alive (PINGs answered, so no keepalive cuts
//! it) but never sends WINDOW_UPDATE for a stream leaves the body unpolled for ever, and
//! with it the route's timers, which live in the body. Its upstream request (an HTTP/1.1
//! upstream's whole socket) would be held for as long as the client liked.
//!
//! So a timed answer to an HTTP/2 client is also put on its connection's watch list, and
//! the connection's task looks at the list every [`SWEEP_EVERY`] while it is not empty: an
//! answer whose deadline has passed while nobody polled it is cut there (its upstream side
//! dropped), and the cut is handed to the client's stream when hyper next polls it (a
//! reset, or gRPC's trailers). A finished answer is never cut. While answers flow, the
//! timers in the body decide as before and the watch does nothing but hold a weak pointer.
//!
//! A stalled HTTP/1.1 client stalls its socket, which the connection's write watch sees
//! (`write_stall`). Cost per watched answer: one small shared allocation, a push onto the
//! list and an uncontended lock per poll of the body; a task per answer with a hand-over
//! per frame cost some 20 % more CPU per small HTTP/2 request (benches/README.md).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{BodyError, ProxyBody};
use crate::route_timeouts::TimedBody;

/// How often a connection with watched answers looks at them: how late past its deadline
/// a stalled answer may be cut.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The list is pruned of finished answers when it reaches a power of two at least this
/// long, so it stays within about twice the answers in flight.
const PRUNE_FROM: usize = 32;

/// One connection's watch list.
#[derive(Default)]
pub(crate) struct StallWatch {
    watched: Mutex<Vec<Weak<Watched>>>,
    /// The list's length, read without the lock by the connection's task.
    len: AtomicUsize,
    /// The connection's task, woken when the list stops being empty.
    connection: AtomicWaker,
    /// The next look, while the list is not empty (touched by the connection's task only).
    next_sweep: Mutex<Option<std::pin::Pin<Box<Sleep>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Nothing here panics while holding a lock; a poisoned one still holds sound state.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StallWatch {
    /// `body`, watched: the body the client's stream reads.
    pub(crate) fn watch(&self, body: Box<TimedBody>) -> ProxyBody {
        let size_hint = body.size_hint();
        let watched = Arc::new(Watched(Mutex::new(WatchedState { body, cut: None })));
        let was_empty = {
            let mut list = lock(&self.watched);
            if list.len() >= PRUNE_FROM && list.len().is_power_of_two() {
                list.retain(|weak| weak.strong_count() > 0);
            }
            list.push(Arc::downgrade(&watched));
            self.len.store(list.len(), Ordering::Release);
            list.len() == 1
        };
        if was_empty {
            self.connection.wake();
        }
        ProxyBody::Watched(WatchedBody {
            watched,
            ended: false,
            size_hint,
        })
    }

    /// Polled by the connection's task beside its connection: never ready; looks at the
    /// list when a sweep is due.
    pub(crate) fn poll_sweep(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.connection.register(cx.waker());
        if self.len.load(Ordering::Acquire) == 0 {
            return Poll::Pending;
        }
        let mut next = lock(&self.next_sweep);
        loop {
            let sleep = next.get_or_insert_with(|| Box::pin(tokio::time::sleep(SWEEP_EVERY)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            *next = None;
            if self.sweep() == 0 {
                return Poll::Pending;
            }
        }
    }

    /// Cuts the answers past their deadline that nobody is polling, and drops the finished
    /// ones from the list; how many are left.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut list = lock(&self.watched);
        list.retain(|weak| {
            let Some(watched) = weak.upgrade() else {
                return false;
            };
            let mut state = match watched.0.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                // Being polled right now: not stalled.
                Err(TryLockError::WouldBlock) => return true,
            };
            if state.cut.is_some() {
                return false;
            }
            let Some(expired) = state.body.overdue(now) else {
                // Finished (or cut by its own timer) answers need no more watching.
                return !state.body.is_end_stream();
            };
            // Drops the upstream's side now; the client gets the cut when it reads.
            let cut = state.body.cut(expired);
            state.cut = Some(cut);
            false
        });
        self.len.store(list.len(), Ordering::Release);
        list.len()
    }
}

/// A watched answer's body, shared by the client's stream and the watch list.
struct Watched(Mutex<WatchedState>);

struct WatchedState {
    body: Box<TimedBody>,
    /// The cut the watch made, for the client's stream to take.
    cut: Option<Result<Frame<Bytes>, BodyError>>,
}

/// The client's side of a watched answer.
pub struct WatchedBody {
    watched: Arc<Watched>,
    /// The body was at its end when last polled (hyper asks after each data frame).
    ended: bool,
    /// The upstream body's, when the watch began (hyper reads it once, before the first
    /// frame).
    size_hint: SizeHint,
}

impl std::fmt::Debug for WatchedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedBody")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl WatchedBody {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut state = lock(&self.watched.0);
        if let Some(cut) = state.cut.take() {
            self.ended = true;
            return Poll::Ready(Some(cut));
        }
        let polled = state.body.poll_frame(cx);
        // Read under the same lock as the frame: a cut the watch makes later cannot make a
        // body that is still sending look finished.
        self.ended = state.body.is_end_stream();
        polled
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.ended
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.size_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn timed(body: ProxyBody, grpc: bool, idle: Duration) -> Box<TimedBody> {
        let limits = crate::route_timeouts::RouteTimeouts {
            total: None,
            idle: Some(idle),
        };
        limits
            .start()
            .expect("on")
            .timed_response(body, grpc, "r".into())
    }

    fn watched(body: ProxyBody) -> WatchedBody {
        match body {
            ProxyBody::Watched(body) => body,
            other => panic!("not watched: {other:?}"),
        }
    }

    async fn next(body: &mut WatchedBody) -> Option<Result<Frame<Bytes>, BodyError>> {
        poll_fn(|cx| body.poll_frame(cx)).await
    }

    /// The connection's side: sweeps as the connection's task would, until stopped.
    fn sweeping(watch: Arc<StallWatch>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { poll_fn(|cx| watch.poll_sweep(cx)).await })
    }

    #[tokio::test(start_paused = true)]
    async fn an_unpolled_answer_past_its_deadline_is_cut_and_the_cut_handed_over() {
        let watch = Arc::new(StallWatch::default());
        let sweeper = sweeping(watch.clone());
        // An answer under an idle limit of 3 s that its client never polls.
        let endless = ProxyBody::Full(Some(Bytes::from_static(b"first")));
        let mut body = watched(watch.watch(timed(endless, true, Duration::from_secs(3))));
        assert_eq!(watch.len.load(Ordering::Acquire), 1);
        // Full(Some) is not at its end: the watch waits for the deadline.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(
            lock(&body.watched.0).cut.is_none(),
            "cut before its deadline"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            lock(&body.watched.0).cut.is_some(),
            "not cut past its deadline"
        );
        assert_eq!(watch.len.load(Ordering::Acquire), 0);
        // The client reads at last: the cut (gRPC: DEADLINE_EXCEEDED trailers), then the end.
        let trailers = next(&mut body)
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.is_end_stream());
        sweeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_answer_is_not_cut_and_leaves_the_list() {
        let watch = Arc::new(StallWatch::default());
        let sweeper = sweeping(watch.clone());
        let mut body = watched(watch.watch(timed(
            ProxyBody::Full(Some(Bytes::from_static(b"whole"))),
            false,
            Duration::from_secs(1),
        )));
        assert_eq!(body.size_hint().exact(), Some(5));
        let frame = next(&mut body).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "whole");
        assert!(body.is_end_stream(), "the frame carries the end");
        // Unread past the deadline (hyper waiting for window with the end in hand).
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(lock(&body.watched.0).cut.is_none());
        assert_eq!(watch.len.load(Ordering::Acquire), 0);
        assert!(next(&mut body).await.is_none());
        sweeper.abort();
    }

    #[tokio::test]
    async fn finished_answers_are_pruned_as_the_list_grows() {
        let watch = StallWatch::default();
        for _ in 0..200 {
            drop(watch.watch(timed(ProxyBody::Empty, false, Duration::from_secs(1))));
        }
        let kept = watch.watch(timed(ProxyBody::Empty, false, Duration::from_secs(1)));
        assert!(
            lock(&watch.watched).len() <= 2 * PRUNE_FROM + 1,
            "not pruned"
        );
        drop(kept);
    }
}
