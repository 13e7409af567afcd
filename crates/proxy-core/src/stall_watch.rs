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
//! reset, or gRPC's trailers). An answer the upstream has finished is never cut: what is
//! left of it (already received, up to [`FINISHED_REST_LIMIT`]) is kept for the client
//! instead. While answers flow, the timers in the body decide as before and the watch does
//! nothing but hold a weak pointer.
//!
//! A stalled HTTP/1.1 client stalls its socket, which the connection's write watch sees
//! (`write_stall`). Cost per watched answer: one small shared allocation, a push onto the
//! list and an uncontended lock per poll of the body; a task per answer with a hand-over
//! per frame cost some 20 % more CPU per small HTTP/2 request (benches/README.md).

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
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
/// The list is pruned of dropped answers once it is this long, and then whenever it has
/// doubled since: it stays within about twice the answers in flight.
const PRUNE_FROM: usize = 32;
/// The most data of a finished answer kept for a stalled client instead of cutting it.
const FINISHED_REST_LIMIT: usize = 256 * 1024;

/// One connection's watch list.
#[derive(Default)]
pub(crate) struct StallWatch {
    watched: Mutex<List>,
    /// The list's length, read without the lock by the connection's task.
    len: AtomicUsize,
    /// The connection's task, woken when the list stops being empty.
    connection: AtomicWaker,
    /// The next look (touched by the connection's task only).
    next_sweep: Mutex<NextSweep>,
}

#[derive(Default)]
struct List {
    entries: Vec<Weak<Watched>>,
    /// The length at which dropped answers are next pruned.
    prune_at: usize,
}

#[derive(Default)]
struct NextSweep {
    /// Allocated at the first sweep, then reset for each.
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
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
        let watched = Arc::new(Watched(Mutex::new(WatchedState {
            body,
            finished: false,
            handed: VecDeque::new(),
        })));
        let was_empty = {
            let mut list = lock(&self.watched);
            if list.entries.len() >= list.prune_at.max(PRUNE_FROM) {
                list.entries.retain(|weak| weak.strong_count() > 0);
                list.prune_at = 2 * list.entries.len();
            }
            list.entries.push(Arc::downgrade(&watched));
            self.len.store(list.entries.len(), Ordering::Release);
            list.entries.len() == 1
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
        let next = &mut *next;
        loop {
            let sleep = match &mut next.sleep {
                Some(sleep) => {
                    if !next.armed {
                        sleep.as_mut().reset(Instant::now() + SWEEP_EVERY);
                    }
                    sleep
                }
                None => next.sleep.insert(Box::pin(tokio::time::sleep(SWEEP_EVERY))),
            };
            next.armed = true;
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            next.armed = false;
            if self.sweep() == 0 {
                return Poll::Pending;
            }
        }
    }

    /// Cuts the answers past their deadline that nobody is polling, and drops the finished
    /// ones from the list; how many are left.
    fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut list = lock(&self.watched);
        list.entries.retain(|weak| {
            let Some(watched) = weak.upgrade() else {
                return false;
            };
            let state = match watched.0.try_lock() {
                Ok(state) => state,
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                // Being polled right now: not stalled.
                Err(TryLockError::WouldBlock) => return true,
            };
            if state.finished {
                return false;
            }
            let Some(expired) = state.body.overdue(now) else {
                // Finished (or cut by its own timer) answers need no more watching.
                return !state.body.is_end_stream();
            };
            drop(state);
            due.push((watched, expired));
            false
        });
        drop(list);
        // Outside the list's lock: a cut drops an upstream body and logs, and workers
        // adding answers to the list must not wait on either.
        let mut still_watched = Vec::new();
        for (watched, expired) in due {
            let mut state = lock(&watched.0);
            if state.finished {
                continue;
            }
            if state.body.overdue(now).is_none() {
                // Polled in the meantime: moved on (watched again) or ended.
                if !state.body.is_end_stream() {
                    still_watched.push(Arc::downgrade(&watched));
                }
                continue;
            }
            // An answer the upstream has finished, whose end has not been read yet (a
            // chunked body's last chunk, trailers): kept whole for the client, not cut.
            state.handed = match state.body.rest_if_finished(FINISHED_REST_LIMIT) {
                Some(rest) => rest,
                // Drops the upstream's side now; the client gets the cut when it reads.
                None => VecDeque::from([state.body.cut(expired)]),
            };
            state.finished = true;
        }
        let mut list = lock(&self.watched);
        list.entries.append(&mut still_watched);
        let left = list.entries.len();
        self.len.store(left, Ordering::Release);
        left
    }
}

/// A watched answer's body, shared by the client's stream and the watch list.
struct Watched(Mutex<WatchedState>);

struct WatchedState {
    body: Box<TimedBody>,
    /// The watch has taken over: the client's stream gets `handed`, then the end.
    finished: bool,
    /// The cut the watch made, or the rest of a finished answer.
    handed: VecDeque<Result<Frame<Bytes>, BodyError>>,
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
        if state.finished {
            let next = state.handed.pop_front();
            self.ended = state.handed.is_empty();
            return Poll::Ready(next);
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

    /// An upstream body that has received `frames` and nothing more yet: each is read
    /// without waiting, and its end is known only once they are all read.
    fn received(frames: Vec<Frame<Bytes>>) -> ProxyBody {
        let state = WatchedState {
            body: timed(ProxyBody::Empty, false, Duration::from_secs(1)),
            finished: true,
            handed: frames.into_iter().map(Ok).collect(),
        };
        ProxyBody::Watched(WatchedBody {
            watched: Arc::new(Watched(Mutex::new(state))),
            ended: false,
            size_hint: SizeHint::default(),
        })
    }

    fn grpc_status(code: &'static str) -> Frame<Bytes> {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static(code));
        Frame::trailers(trailers)
    }

    fn watched(body: ProxyBody) -> WatchedBody {
        match body {
            ProxyBody::Watched(body) => body,
            other => panic!("not watched: {other:?}"),
        }
    }

    fn taken_over(body: &WatchedBody) -> bool {
        lock(&body.watched.0).finished
    }

    async fn next(body: &mut WatchedBody) -> Option<Result<Frame<Bytes>, BodyError>> {
        poll_fn(|cx| body.poll_frame(cx)).await
    }

    async fn next_trailers(body: &mut WatchedBody) -> http::HeaderMap {
        let frame = next(body).await.expect("a frame").expect("not an error");
        frame.into_trailers().expect("trailers")
    }

    /// The connection's side: sweeps as the connection's task would, until stopped.
    async fn sweeping(watch: Arc<StallWatch>) -> tokio::task::JoinHandle<()> {
        let sweeper = tokio::spawn(async move { poll_fn(|cx| watch.poll_sweep(cx)).await });
        // Parked with an empty list before anything is watched: the first watch wakes it.
        tokio::task::yield_now().await;
        sweeper
    }

    #[tokio::test(start_paused = true)]
    async fn an_unpolled_answer_past_its_deadline_is_cut_and_the_cut_handed_over() {
        let watch = Arc::new(StallWatch::default());
        let sweeper = sweeping(watch.clone()).await;
        // A gRPC answer under an idle limit of 3 s that its client never polls, whose
        // upstream has sent more than is kept and not its end.
        let big = || Frame::data(Bytes::from(vec![0u8; FINISHED_REST_LIMIT / 2 + 1]));
        let upstream = received(vec![big(), big(), grpc_status("0")]);
        let mut body = watched(watch.watch(timed(upstream, true, Duration::from_secs(3))));
        assert_eq!(watch.len.load(Ordering::Acquire), 1);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!taken_over(&body), "cut before its deadline");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(taken_over(&body), "not cut past its deadline");
        assert_eq!(watch.len.load(Ordering::Acquire), 0);
        // The client reads at last: the cut (gRPC: DEADLINE_EXCEEDED trailers), then the end.
        let trailers = next_trailers(&mut body).await;
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.is_end_stream());
        assert!(next(&mut body).await.is_none());

        // The list refills after it emptied, and the sweeps start again.
        let mut again = watched(watch.watch(timed(
            received(vec![big(), big()]),
            false,
            Duration::from_secs(1),
        )));
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(taken_over(&again));
        assert!(next(&mut again).await.unwrap().is_err(), "HTTP: a reset");
        sweeper.abort();
    }

    /// An answer the upstream has finished, whose end was not read yet when its client
    /// stalled (gRPC's last message, then its trailers), is kept whole, not cut.
    #[tokio::test(start_paused = true)]
    async fn a_finished_answer_whose_end_is_unread_is_kept_whole() {
        let watch = Arc::new(StallWatch::default());
        let sweeper = sweeping(watch.clone()).await;
        let upstream = received(vec![
            Frame::data(Bytes::from_static(b"last message")),
            grpc_status("0"),
        ]);
        let mut body = watched(watch.watch(timed(upstream, true, Duration::from_secs(1))));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(taken_over(&body));
        let data = next(&mut body).await.unwrap().unwrap();
        assert_eq!(data.into_data().unwrap(), "last message");
        assert!(!body.is_end_stream());
        let trailers = next_trailers(&mut body).await;
        assert_eq!(trailers["grpc-status"], "0", "the upstream's own status");
        assert!(body.is_end_stream());
        assert!(next(&mut body).await.is_none());
        sweeper.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_answer_is_not_cut_and_leaves_the_list() {
        let watch = Arc::new(StallWatch::default());
        let sweeper = sweeping(watch.clone()).await;
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
        assert!(!taken_over(&body));
        assert_eq!(watch.len.load(Ordering::Acquire), 0);
        assert!(next(&mut body).await.is_none());
        sweeper.abort();
    }

    #[tokio::test]
    async fn dropped_answers_are_pruned_and_live_ones_kept() {
        let watch = StallWatch::default();
        let mut live = Vec::new();
        for n in 0..400 {
            let body = watch.watch(timed(ProxyBody::Empty, false, Duration::from_secs(1)));
            if n % 10 == 0 {
                live.push(body);
            }
        }
        let list = lock(&watch.watched);
        let alive = list.entries.iter().filter(|w| w.strong_count() > 0).count();
        assert_eq!(alive, live.len(), "a live answer was dropped from the list");
        assert!(list.entries.len() <= 2 * PRUNE_FROM.max(2 * live.len()));
    }
}
