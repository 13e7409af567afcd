//! One stream: its state under the connection's lock, and [`StreamRef`], the caller's handle
//! that reads the response and sends the request body (within the send windows).

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::Frame;
use pachgate_h2_wire::{DATA, END_STREAM, FRAME_HEADER};

use crate::{
    connection::{Inner, Shared},
    failure::Failure,
    header_block::is_connection_specific,
    request_head::put_literal_field,
    BodyError, MAX_QUEUED_OUT,
};

/// Stream ids are distinct odd numbers: spread them with one multiply instead of SipHash.
#[derive(Default)]
pub(crate) struct StreamIdHasher(u64);

impl Hasher for StreamIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8 | u64::from(*byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

pub(crate) type StreamMap = HashMap<u32, Stream, BuildHasherDefault<StreamIdHasher>>;

/// The response head of a stream, as it moves from the upstream to the caller.
pub(crate) enum Head {
    Awaiting,
    Arrived(Response<()>),
    Delivered,
}

pub(crate) struct Stream {
    /// Handles alive (the response side, and the request body's pump while it runs).
    pub(crate) refs: u8,
    pub(crate) head: Head,
    /// Response data not yet handed on. A frame that arrives while the last chunk has room
    /// (up to COALESCE_LIMIT) joins it: a server stream of small messages comes one DATA
    /// frame per message, and every chunk handed on costs a frame's work downstream.
    pub(crate) data: VecDeque<BytesMut>,
    pub(crate) trailers: Option<HeaderMap>,
    /// END_STREAM received.
    pub(crate) recv_closed: bool,
    /// END_STREAM sent (or the upstream no longer wants the request body).
    pub(crate) send_closed: bool,
    pub(crate) failure: Option<Failure>,
    /// Whether the stream still counts against the upstream's concurrent-stream limit.
    pub(crate) open: bool,
    pub(crate) recv_window: i64,
    /// Bytes handed on and not yet credited back to the upstream.
    pub(crate) unacked: u32,
    pub(crate) send_window: i64,
    pub(crate) recv_waker: Option<Waker>,
    pub(crate) send_waker: Option<Waker>,
    /// The request was HEAD: the response's content-length describes a body not sent.
    pub(crate) head_request: bool,
    /// The request was CONNECT (a websocket, RFC 8441): a 2xx opens a tunnel, whose DATA
    /// no content-length describes (RFC 9110 §9.3.6: a client ignores it there).
    pub(crate) connect_request: bool,
    /// Response body bytes still due by the head's content-length (RFC 9113 §8.1.1: a
    /// response whose DATA does not add up to it is malformed and must not be passed on).
    pub(crate) length_due: Option<u64>,
}

impl Stream {
    pub(crate) fn wake(&mut self) {
        if let Some(waker) = self.recv_waker.take() {
            waker.wake();
        }
        if let Some(waker) = self.send_waker.take() {
            waker.wake();
        }
    }

    pub(crate) fn response_done(&self) -> bool {
        self.recv_closed && self.data.is_empty() && self.trailers.is_none()
    }
}

/// One stream on a [`Connection`](crate::Connection); dropping the last handle before both
/// sides have ended resets it with CANCEL.
pub struct StreamRef {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u32,
    /// The handle [`Connection::open`](crate::Connection::open) gave, which reads the
    /// response; [`clone_ref`](Self::clone_ref)'s only send.
    pub(crate) reader: bool,
}

impl StreamRef {
    /// A second handle on the same stream (for the request body's pump).
    pub fn clone_ref(&self) -> StreamRef {
        let mut inner = self.shared.lock();
        if let Some(state) = inner.streams.get_mut(&self.id) {
            state.refs += 1;
        }
        StreamRef {
            shared: self.shared.clone(),
            id: self.id,
            reader: false,
        }
    }

    /// The response head, once it arrives.
    pub fn poll_response(&mut self, cx: &mut Context<'_>) -> Poll<Result<Response<()>, Failure>> {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(Err(Failure::Reset(h2::Reason::CANCEL)));
        };
        match std::mem::replace(&mut state.head, Head::Delivered) {
            Head::Arrived(response) => return Poll::Ready(Ok(response)),
            other => state.head = other,
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Err(failure.clone()));
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The response body's next frame: data already arrived (joined up to COALESCE_LIMIT),
    /// then trailers. The stream's credit goes back to the upstream as data is handed on, so
    /// the client's pace is the upstream's pace on this stream (the connection's window is
    /// credited as data arrives: [`Inner::buffer_limit`]).
    pub fn poll_body(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return Poll::Ready(None);
        };
        if let Some(chunk) = state.data.pop_front() {
            let chunk = chunk.freeze();
            inner.credit_stream(self.id, chunk.len() as u32);
            inner.handed_on(chunk.len());
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(failure) = &state.failure {
            return Poll::Ready(Some(Err(failure.clone().into_body_error())));
        }
        if let Some(trailers) = state.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if state.recv_closed {
            return Poll::Ready(None);
        }
        state.recv_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    pub fn is_end_stream(&self) -> bool {
        let inner = self.shared.lock();
        inner
            .streams
            .get(&self.id)
            .is_none_or(|state| state.failure.is_none() && state.response_done())
    }

    /// Sends as much of `data` as both windows allow, taking it from the front; ready once
    /// all of it is queued (with END_STREAM on the last frame when `end_stream`). An error
    /// means the upstream no longer wants the request body.
    pub fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        data: &mut Bytes,
        end_stream: bool,
    ) -> Poll<Result<(), ()>> {
        if data.is_empty() && !end_stream {
            return Poll::Ready(Ok(()));
        }
        let mut inner = self.shared.lock();
        // A full queue is first written out from here, as far as the socket takes it: waiting
        // for the connection's task to write it and wake this one again cost 256 KiB
        // uploads 3-4 % of their calls/s in benches/compare.
        let mut written_here = false;
        let done = loop {
            let Inner {
                streams,
                out,
                send_window: connection_window,
                peer_max_frame,
                ..
            } = &mut *inner;
            let Some(state) = streams.get_mut(&self.id) else {
                return Poll::Ready(Err(()));
            };
            if state.send_closed || state.failure.is_some() {
                return Poll::Ready(Err(()));
            }
            let mut queue_full = false;
            loop {
                let room = state.send_window.min(*connection_window).max(0) as usize;
                let queue_room = MAX_QUEUED_OUT.saturating_sub(out.queued() + FRAME_HEADER);
                let take = data.len().min(room).min(*peer_max_frame).min(queue_room);
                if take == 0 && !data.is_empty() {
                    queue_full = queue_room == 0;
                    break;
                }
                let chunk = data.split_to(take);
                let last = data.is_empty();
                state.send_window -= take as i64;
                *connection_window -= take as i64;
                let flags = if last && end_stream { END_STREAM } else { 0 };
                out.frame_header(chunk.len(), DATA, flags, self.id);
                out.payload(chunk);
                if last {
                    break;
                }
            }
            if data.is_empty() {
                if end_stream {
                    state.send_closed = true;
                }
                break true;
            }
            if queue_full && !written_here && inner.write_out_here() {
                written_here = true;
                continue;
            }
            // Woken by a WINDOW_UPDATE, or by the queue draining (`write_out`).
            inner.body_waiting |= queue_full;
            if let Some(state) = inner.streams.get_mut(&self.id) {
                state.send_waker = Some(cx.waker().clone());
                inner.senders_parked = true;
            }
            break false;
        };
        if done && end_stream {
            inner.settle(self.id);
        }
        inner.wake_driver();
        if done {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    }

    /// Ready when the upstream no longer wants the request body (reset, or its end).
    pub fn poll_send_closed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let mut inner = self.shared.lock();
        match inner.streams.get_mut(&self.id) {
            Some(state) if !state.send_closed && state.failure.is_none() => {
                state.send_waker = Some(cx.waker().clone());
                inner.senders_parked = true;
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Ends the request body with trailers.
    pub fn send_trailers(&mut self, trailers: &HeaderMap) {
        let mut block = Vec::with_capacity(64);
        for (name, value) in trailers {
            if !is_connection_specific(name) {
                put_literal_field(&mut block, name.as_str(), value.as_bytes());
            }
        }
        let mut inner = self.shared.lock();
        match inner.streams.get_mut(&self.id) {
            Some(state) if !state.send_closed && state.failure.is_none() => {
                state.send_closed = true;
            }
            _ => return,
        }
        let mut update = Vec::new();
        inner.upstream_table.put_size_update(&mut update);
        if !update.is_empty() {
            update.extend_from_slice(&block);
            block = update;
        }
        inner.put_header_block(self.id, &block, true);
        inner.settle(self.id);
        inner.wake_driver();
    }

    /// Resets the stream (the client's own reset, passed on with its reason).
    pub fn reset(&mut self, reason: h2::Reason) {
        let mut inner = self.shared.lock();
        let live = inner.streams.get(&self.id).is_some_and(|state| {
            state.failure.is_none() && !(state.recv_closed && state.send_closed)
        });
        if live {
            inner.reset_stream(self.id, reason);
        }
    }
}

impl StreamRef {
    /// The response's reader is gone (its client left) while the request body's pump still
    /// holds the stream, waiting perhaps for send window the upstream never grants: what
    /// arrived is dropped and its credit returned, and an unfinished response is cancelled,
    /// which ends the pump too. Left alone, the stream would hold its slot and up to a
    /// window of unread data against the connection until the upstream gave up.
    fn abandon_response(&self, inner: &mut Inner) {
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return;
        };
        let buffered: usize = state.data.drain(..).map(|chunk| chunk.len()).sum();
        state.trailers = None;
        let unfinished = state.failure.is_none() && !state.recv_closed;
        inner.handed_on(buffered);
        if unfinished {
            inner.reset_stream(self.id, h2::Reason::CANCEL);
        }
    }
}

impl Drop for StreamRef {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        let Some(state) = inner.streams.get_mut(&self.id) else {
            return;
        };
        state.refs -= 1;
        if state.refs > 0 {
            if self.reader {
                self.abandon_response(&mut inner);
            }
            return;
        }
        let unfinished = state.failure.is_none() && !(state.recv_closed && state.send_closed);
        // What the upstream sent and nobody will read leaves the connection's count, and any
        // connection credit held back for it goes to the upstream.
        let buffered: usize = state.data.iter().map(BytesMut::len).sum();
        if unfinished {
            inner.reset_stream(self.id, h2::Reason::CANCEL);
        }
        inner.settle(self.id);
        inner.streams.remove(&self.id);
        inner.handed_on(buffered);
        if inner.going_away.is_some() && inner.streams.is_empty() {
            inner.wake_driver();
        }
    }
}
