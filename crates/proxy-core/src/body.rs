//! One concrete body type for everything pachgate sends, so no body is boxed per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pachgate_h2_upstream::StreamRef;

use crate::metrics::ByteTally;

/// Body errors: hyper's or h2's, boxed, so hyper finds an h2 reset reason in the chain and
/// passes it on (a CANCEL from one side reaches the other as CANCEL).
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed peer body, or a small body pachgate wrote itself.
#[derive(Debug)]
pub enum ProxyBody {
    /// Frames (data and trailers) passed through from the other side, unbuffered.
    Stream(Incoming),
    /// A client's request body on its way upstream, its data bytes counted.
    Metered(Incoming, ByteTally),
    /// A response from an h2 upstream, read straight from its h2 stream.
    Upstream(UpstreamBody),
    /// A body under its route's `timeout` / `idle_timeout` (only when one is set).
    Timed(Box<crate::route_timeouts::TimedBody>),
    /// A timed response toward an HTTP/2 client, also on its connection's stall watch.
    Watched(crate::stall_watch::WatchedBody),
    /// A body pachgate produced (error text, redirect); taken on first poll.
    Full(Option<Bytes>),
    Empty,
}

impl ProxyBody {
    pub fn text(text: &'static str) -> Self {
        ProxyBody::Full(Some(Bytes::from_static(text.as_bytes())))
    }
}

impl From<Incoming> for ProxyBody {
    fn from(body: Incoming) -> Self {
        ProxyBody::Stream(body)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Stream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            ProxyBody::Metered(body, received) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        received.add(data.len() as u64);
                    }
                }
                polled.map_err(Into::into)
            }
            ProxyBody::Upstream(body) => body.poll_frame(cx),
            ProxyBody::Timed(body) => body.poll_frame(cx),
            ProxyBody::Watched(body) => body.poll_frame(cx),
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.is_end_stream(),
            ProxyBody::Upstream(body) => body.stream.is_end_stream(),
            ProxyBody::Timed(body) => body.is_end_stream(),
            ProxyBody::Watched(body) => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.size_hint(),
            ProxyBody::Upstream(_) => SizeHint::default(),
            ProxyBody::Watched(body) => body.size_hint(),
            ProxyBody::Timed(body) => body.size_hint(),
            ProxyBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            ProxyBody::Full(None) | ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An h2 upstream's response body: DATA, then trailers, read from the upstream stream by
/// the task that forwards them (`pachgate-h2-upstream` joins small frames that have already
/// arrived and credits the stream's window as data is handed on).
pub struct UpstreamBody {
    stream: StreamRef,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").finish_non_exhaustive()
    }
}

impl UpstreamBody {
    pub(crate) fn new(stream: StreamRef) -> Self {
        UpstreamBody { stream }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.stream.poll_body(cx)
    }
}

/// The answer to a HEAD request: an answer pachgate wrote itself keeps its head, with the
/// `Content-Length` its body would have had, and loses the body. hyper's HTTP/1 server
/// drops a HEAD answer's body on its own, its HTTP/2 server does not: the body went out as
/// DATA frames, which clients that check (curl) take as a protocol error. An upstream's
/// answer to a HEAD request has no body to drop.
pub(crate) fn without_own_body(response: &mut http::Response<ProxyBody>) {
    if let ProxyBody::Full(body) = response.body_mut() {
        let length = body.take().map_or(0, |body| body.len());
        response
            .headers_mut()
            .entry(http::header::CONTENT_LENGTH)
            .or_insert_with(|| http::HeaderValue::from(length));
    }
}
