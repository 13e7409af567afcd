//! A timed response body read by a task of its own, for HTTP/2 clients.
//!
//! hyper's HTTP/2 server polls a response body only while the client's stream has send
//! window: a client that keeps its connection alive (PINGs answered, so no keepalive cuts
//! it) but never sends WINDOW_UPDATE for a stream leaves the body unpolled for ever, and
//! with it the route's timers, which live in the body. Its upstream request (an HTTP/1.1
//! upstream's whole socket) would be held for as long as the client liked. Here the body
//! under the timers is read by a pump task and handed over through a one-frame channel: when
//! the client takes nothing, the pump waits for room with the timers still running, and when
//! they run out it drops the upstream side and queues the cut for whenever the client reads.
//!
//! Only for exchanges that have a route timer and an HTTP/2 client: a stalled HTTP/1.1
//! client stalls its socket, which the connection's write watch sees (`write_stall`).
//! Cost: a task and a channel per such exchange, and one hand-over per frame.

use std::future::poll_fn;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use tokio::sync::mpsc;

use crate::body::{BodyError, ProxyBody};
use crate::route_timeouts::TimedBody;

/// What the pump hands over.
enum Handed {
    /// A frame; more may follow.
    Frame(Frame<Bytes>),
    /// The body's last frame: its trailers, or data after which the body is at its end (so
    /// hyper puts END_STREAM on it).
    Last(Frame<Bytes>),
    /// The body ended after the frames handed over.
    End,
    Failed(BodyError),
}

/// Starts the pump for `body` on the current runtime; the body the client's stream reads.
pub(crate) fn relayed(body: Box<TimedBody>) -> ProxyBody {
    let (hand, taken) = mpsc::channel(1);
    tokio::spawn(pump(body, hand));
    ProxyBody::Relayed(RelayedBody {
        taken,
        ended: false,
    })
}

async fn pump(mut body: Box<TimedBody>, hand: mpsc::Sender<Handed>) {
    loop {
        // Room first, so no frame is ever read that could not be handed on; while there is
        // none (the client takes nothing), the timers decide.
        let room = tokio::select! {
            biased;
            room = hand.reserve() => room,
            expired = poll_fn(|cx| body.poll_expired(cx)) => {
                let cut = match body.cut(expired) {
                    Ok(frame) => Handed::Last(frame),
                    Err(error) => Handed::Failed(error),
                };
                if let Ok(room) = hand.reserve().await {
                    room.send(cut);
                }
                return;
            }
        };
        // The client's stream is gone: dropping the body drops the upstream request.
        let Ok(room) = room else { return };
        // A client that goes away while the upstream is quiet ends the upstream request at
        // once, as dropping the body did before the pump.
        let frame = tokio::select! {
            biased;
            frame = poll_fn(|cx| body.poll_frame(cx)) => frame,
            () = hand.closed() => return,
        };
        // A body known to be over is not left under the timers while its last frame waits
        // for the client: a cut then would fail an answer the upstream completed. (A cut
        // made inside `poll_frame` ends the body too.)
        match frame {
            Some(Ok(frame)) if frame.is_trailers() || body.is_end_stream() => {
                return room.send(Handed::Last(frame));
            }
            Some(Ok(frame)) => room.send(Handed::Frame(frame)),
            Some(Err(error)) => return room.send(Handed::Failed(error)),
            None => return room.send(Handed::End),
        }
    }
}

/// The client's side of a relayed body.
#[derive(Debug)]
pub struct RelayedBody {
    taken: mpsc::Receiver<Handed>,
    ended: bool,
}

impl std::fmt::Debug for Handed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Handed::Frame(_) => "Frame",
            Handed::Last(_) => "Last",
            Handed::End => "End",
            Handed::Failed(_) => "Failed",
        })
    }
}

impl RelayedBody {
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let Poll::Ready(handed) = self.taken.poll_recv(cx) else {
            return Poll::Pending;
        };
        let frame = match handed {
            Some(Handed::Frame(frame)) => return Poll::Ready(Some(Ok(frame))),
            Some(Handed::Last(frame)) => Some(Ok(frame)),
            Some(Handed::End) => None,
            Some(Handed::Failed(error)) => Some(Err(error)),
            // The pump stopped without handing over an end (it panicked, or the runtime is
            // shutting down): a truncated body must not look complete.
            None => Some(Err("the response's relay stopped before its end".into())),
        };
        self.ended = true;
        Poll::Ready(frame)
    }

    pub(crate) fn is_end_stream(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(body: &mut RelayedBody) -> Option<Result<Frame<Bytes>, BodyError>> {
        poll_fn(|cx| body.poll_frame(cx)).await
    }

    /// A body whose last frame waits for a client that takes nothing is no longer under the
    /// timers once the upstream's side is over: the answer is not cut, and it ends with that
    /// frame.
    #[tokio::test(start_paused = true)]
    async fn a_finished_answer_waiting_for_the_client_is_not_cut() {
        let limits = crate::route_timeouts::RouteTimeouts {
            total: None,
            idle: Some(std::time::Duration::from_secs(1)),
        };
        let timer = limits.start().expect("on");
        let whole = ProxyBody::Full(Some(Bytes::from_static(b"whole")));
        let ProxyBody::Relayed(mut body) = timer.response_body(whole, (false, true), "r".into())
        else {
            panic!("a timed answer to an HTTP/2 client is relayed");
        };
        tokio::time::sleep(std::time::Duration::from_secs(5)).await;
        let frame = next(&mut body).await.unwrap().expect("not cut");
        assert_eq!(frame.into_data().unwrap(), "whole");
        assert!(body.is_end_stream(), "the frame carries the end");
        assert!(next(&mut body).await.is_none());
    }

    #[tokio::test]
    async fn frames_then_the_end_pass_and_a_pump_gone_early_is_an_error() {
        let (hand, taken) = mpsc::channel(1);
        let mut body = RelayedBody {
            taken,
            ended: false,
        };
        hand.send(Handed::Frame(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        let frame = next(&mut body).await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(!body.is_end_stream());
        hand.send(Handed::End).await.unwrap();
        assert!(next(&mut body).await.is_none());
        assert!(body.is_end_stream());

        // The last frame says so at once, for hyper to end the stream with it.
        let (hand, taken) = mpsc::channel(1);
        let mut body = RelayedBody {
            taken,
            ended: false,
        };
        hand.send(Handed::Last(Frame::data(Bytes::from_static(b"z"))))
            .await
            .unwrap();
        assert!(next(&mut body).await.unwrap().is_ok());
        assert!(body.is_end_stream());
        assert!(next(&mut body).await.is_none());

        let (hand, taken) = mpsc::channel::<Handed>(1);
        let mut body = RelayedBody {
            taken,
            ended: false,
        };
        drop(hand);
        let error = next(&mut body).await.unwrap().unwrap_err();
        assert!(error.to_string().contains("before its end"), "{error}");
        assert!(next(&mut body).await.is_none());
    }
}
