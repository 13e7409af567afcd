//! A route's `timeout` (the whole exchange, until the response body's end) and
//! `idle_timeout` (no body bytes moved either way for that long). The timers are per
//! exchange, not per connection: one h2 connection carries many streams with lives of their
//! own, and a quiet gRPC stream must not be cut because its neighbour is busy, nor a stalled
//! download kept alive by it.
//!
//! Cost: nothing when both are off (no timer, no allocation). When on, one timer per
//! exchange, re-armed lazily: body frames only store the time they moved at, and the timer,
//! when it fires, looks at that and sleeps again until the real deadline.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{BodyError, ProxyBody};
use crate::error::{percent_encode_grpc_message, ProxyError};
use crate::stall_watch::StallWatch;

/// A route's two limits; `None` is off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteTimeouts {
    /// The whole exchange: until the response body's end (a tunnel: its whole life).
    pub total: Option<Duration>,
    /// No body bytes in either direction for this long.
    pub idle: Option<Duration>,
}

impl RouteTimeouts {
    pub fn is_off(&self) -> bool {
        self.total.is_none() && self.idle.is_none()
    }

    /// The exchange's timer, started now; `None` (and no allocation) when both are off.
    pub(crate) fn start(&self) -> Option<ExchangeTimer> {
        if self.is_off() {
            return None;
        }
        let now = Instant::now();
        let total_deadline = self.total.map(|t| now + t);
        let first = match (total_deadline, self.idle) {
            (Some(total), Some(idle)) => total.min(now + idle),
            (Some(total), None) => total,
            (None, Some(idle)) => now + idle,
            (None, None) => unreachable!("checked above"),
        };
        Some(ExchangeTimer {
            activity: Arc::new(Activity {
                base: now,
                last_ms: AtomicU64::new(0),
                limits: *self,
            }),
            sleep: Box::pin(tokio::time::sleep_until(first)),
        })
    }
}

/// When body bytes last moved, shared by both directions of one exchange.
#[derive(Debug)]
pub(crate) struct Activity {
    /// When the exchange started.
    base: Instant,
    /// Milliseconds after `base`.
    last_ms: AtomicU64,
    limits: RouteTimeouts,
}

impl Activity {
    /// Bytes moved now; returns now.
    pub(crate) fn note(&self) -> Instant {
        let now = Instant::now();
        let ms = now.saturating_duration_since(self.base).as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
        now
    }

    fn last(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Which limit ran out.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expired {
    Total(Duration),
    Idle(Duration),
}

impl Expired {
    pub(crate) fn describe(self) -> String {
        match self {
            Expired::Total(limit) => format!("route timeout ({} ms) reached", limit.as_millis()),
            Expired::Idle(limit) => format!(
                "route idle_timeout: no bytes moved for {} ms",
                limit.as_millis()
            ),
        }
    }

    /// Before the response head: answered as gRPC 4 / HTTP 504.
    pub(crate) fn into_error(self, upstream: &str) -> ProxyError {
        let limit = match self {
            Expired::Total(limit) | Expired::Idle(limit) => limit,
        };
        ProxyError::UpstreamTimeout {
            upstream: upstream.to_string(),
            timeout_ms: limit.as_millis(),
        }
    }
}

/// One exchange's timer: a single sleep, moved from the wait for the response head into
/// the response body. Two pointers: it sits in every request's state.
pub(crate) struct ExchangeTimer {
    activity: Arc<Activity>,
    sleep: Pin<Box<Sleep>>,
}

impl ExchangeTimer {
    pub(crate) fn activity(&self) -> &Arc<Activity> {
        &self.activity
    }

    /// The earlier of the two deadlines as they stand now, and which one it is.
    fn deadline(&self) -> (Instant, Expired) {
        let activity = &self.activity;
        let idle = activity
            .limits
            .idle
            .map(|idle| (activity.last() + idle, Expired::Idle(idle)));
        let total = activity
            .limits
            .total
            .map(|limit| (activity.base + limit, Expired::Total(limit)));
        match (total, idle) {
            (Some(t), Some(i)) => {
                if t.0 <= i.0 {
                    t
                } else {
                    i
                }
            }
            (Some(one), None) | (None, Some(one)) => one,
            (None, None) => unreachable!("a timer exists only with a limit"),
        }
    }

    /// Ready once a deadline has passed. The sleep is re-armed only when it fires early
    /// (bytes moved since it was set).
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let (deadline, which) = self.deadline();
            if Instant::now() >= deadline {
                return Poll::Ready(which);
            }
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// True when the whole-exchange deadline has passed at `now` (checked as frames flow,
    /// since a body that is never pending never polls the sleep).
    fn total_passed(&self, now: Instant) -> Option<Expired> {
        match self.activity.limits.total {
            Some(limit) if now >= self.activity.base + limit => Some(Expired::Total(limit)),
            _ => None,
        }
    }

    /// The request body on its way upstream: its data frames count as activity.
    pub(crate) fn request_body(&self, body: ProxyBody) -> ProxyBody {
        if self.activity.limits.idle.is_none() {
            return body;
        }
        ProxyBody::Timed(Box::new(TimedBody {
            inner: body,
            side: Side::Request(self.activity.clone()),
        }))
    }

    /// The response body toward the client, bounded by this timer. `stalls`: the client's
    /// connection's watch, for an HTTP/2 client, whose streams can stall with the body
    /// unpolled ([`crate::stall_watch`]).
    pub(crate) fn response_body(
        self,
        body: ProxyBody,
        grpc: bool,
        route: Arc<str>,
        stalls: Option<&StallWatch>,
    ) -> ProxyBody {
        let stalls = stalls.filter(|_| !body.is_end_stream());
        let timed = self.timed_response(body, grpc, route);
        match stalls {
            Some(stalls) => stalls.watch(timed),
            None => ProxyBody::Timed(timed),
        }
    }

    pub(crate) fn timed_response(
        self,
        body: ProxyBody,
        grpc: bool,
        route: Arc<str>,
    ) -> Box<TimedBody> {
        Box::new(TimedBody {
            inner: body,
            side: Side::Response {
                timer: self,
                grpc,
                route,
            },
        })
    }
}

/// Runs `future` until it completes or, with a timer, until the timer expires (dropping
/// the future: for a request, that drops the upstream request). A plain future rather than
/// an `async fn`, so `future` is held once, inline, and nothing else: it sits in every
/// request's state, which hyper moves into each stream's task.
pub(crate) fn bounded<F: Future>(future: F, timer: Option<&mut ExchangeTimer>) -> Bounded<'_, F> {
    Bounded { future, timer }
}

pin_project_lite::pin_project! {
    pub(crate) struct Bounded<'t, F> {
        #[pin]
        future: F,
        timer: Option<&'t mut ExchangeTimer>,
    }
}

impl<F: Future> Future for Bounded<'_, F> {
    type Output = Result<F::Output, Expired>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(output) = this.future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.timer.as_deref_mut() {
            Some(timer) => timer.poll_expired(cx).map(Err),
            None => Poll::Pending,
        }
    }
}

/// A body under a route's timeouts (see [`ExchangeTimer`]).
pub struct TimedBody {
    inner: ProxyBody,
    side: Side,
}

enum Side {
    Request(Arc<Activity>),
    Response {
        timer: ExchangeTimer,
        grpc: bool,
        route: Arc<str>,
    },
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl TimedBody {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &mut self.side {
            Side::Request(activity) => {
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                        activity.note();
                    }
                }
                polled
            }
            Side::Response { timer, .. } => {
                // After a cut the inner body is Empty, which ends the body here.
                let expired = match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        let moved = frame.data_ref().is_some_and(|d| !d.is_empty());
                        if !moved {
                            return polled;
                        }
                        let now = timer.activity.note();
                        match timer.total_passed(now) {
                            None => return polled,
                            Some(expired) => expired,
                        }
                    }
                    Poll::Ready(_) => return polled,
                    Poll::Pending => match timer.poll_expired(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(expired) => expired,
                    },
                };
                Poll::Ready(Some(self.cut(expired)))
            }
        }
    }

    /// Which limit has run out at `now`, if one has and the answer is neither finished nor
    /// cut already (the request side has no timer).
    pub(crate) fn overdue(&self, now: Instant) -> Option<Expired> {
        let Side::Response { timer, .. } = &self.side else {
            return None;
        };
        if self.inner.is_end_stream() {
            return None;
        }
        let (deadline, which) = timer.deadline();
        (now >= deadline).then_some(which)
    }

    /// The rest of the answer, when the upstream has already sent all of it: the frames read
    /// without waiting, up to `limit` data bytes, ending with its trailers or its end. `None`
    /// when more is still to come (or more than `limit`): the frames read are then dropped
    /// with the body, which is about to be cut. For a body nobody polls (the client's
    /// stream has no window), so the waker given to the upstream's side does not matter.
    pub(crate) fn rest_if_finished(
        &mut self,
        limit: usize,
    ) -> Option<VecDeque<Result<Frame<Bytes>, BodyError>>> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let mut rest = VecDeque::new();
        let mut bytes = 0;
        loop {
            match Pin::new(&mut self.inner).poll_frame(&mut cx) {
                Poll::Ready(None) => return Some(rest),
                Poll::Ready(Some(Ok(frame))) => {
                    let last = frame.is_trailers();
                    bytes += frame.data_ref().map_or(0, Bytes::len);
                    if bytes > limit {
                        return None;
                    }
                    rest.push_back(Ok(frame));
                    if last || self.inner.is_end_stream() {
                        return Some(rest);
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    rest.push_back(Err(error));
                    return Some(rest);
                }
                Poll::Pending => return None,
            }
        }
    }

    /// Ends the response for `expired`: drops the upstream's side (its request is
    /// abandoned, and the body ends here after this) and says how the client is told.
    pub(crate) fn cut(&mut self, expired: Expired) -> Result<Frame<Bytes>, BodyError> {
        self.inner = ProxyBody::Empty;
        let message = expired.describe();
        let (grpc, route) = match &self.side {
            Side::Response { grpc, route, .. } => (*grpc, &**route),
            Side::Request(_) => (false, ""),
        };
        tracing::warn!(route = %route, "response cut: {message}");
        if grpc {
            // The stream ends as a gRPC call does, with DEADLINE_EXCEEDED.
            let mut trailers = HeaderMap::with_capacity(2);
            trailers.insert("grpc-status", HeaderValue::from_static("4"));
            if let Ok(value) = HeaderValue::from_str(&percent_encode_grpc_message(&format!(
                "pachgate: {message}"
            ))) {
                trailers.insert("grpc-message", value);
            }
            Ok(Frame::trailers(trailers))
        } else {
            // HTTP/2: the stream is reset; HTTP/1: the connection closes before the body's
            // end.
            Err(message.into())
        }
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    pub(crate) fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_idle_deadline_follows_the_last_activity() {
        let limits = RouteTimeouts {
            total: Some(Duration::from_secs(10)),
            idle: Some(Duration::from_secs(3)),
        };
        let mut timer = limits.start().expect("on");
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(2)).await;
        timer.activity().note();
        let expired = bounded(std::future::pending::<()>(), Some(&mut timer))
            .await
            .unwrap_err();
        assert!(matches!(expired, Expired::Idle(_)));
        assert_eq!(Instant::now() - start, Duration::from_secs(5));
        assert!(RouteTimeouts::default().start().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn the_total_deadline_holds_however_busy() {
        let limits = RouteTimeouts {
            total: Some(Duration::from_secs(4)),
            idle: Some(Duration::from_secs(3)),
        };
        let mut timer = limits.start().expect("on");
        let start = Instant::now();
        let activity = timer.activity().clone();
        let busy = async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                activity.note();
            }
        };
        let expired = bounded(busy, Some(&mut timer)).await.unwrap_err();
        assert!(matches!(expired, Expired::Total(_)));
        assert_eq!(Instant::now() - start, Duration::from_secs(4));
    }
}
