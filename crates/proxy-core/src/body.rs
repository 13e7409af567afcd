//! One concrete body type for everything pachgate sends, so no body is boxed per request.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.is_end_stream(),
            ProxyBody::Upstream(body) => body.stream.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.size_hint(),
            ProxyBody::Upstream(_) => SizeHint::default(),
            ProxyBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            ProxyBody::Full(None) | ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// Small DATA frames already waiting are passed on as one frame of up to this many bytes.
const COALESCE_LIMIT: usize = 16 * 1024;

/// An h2 upstream's response body: DATA frames, then trailers. Flow-control credit goes back
/// to the upstream as each frame is handed on, so the client's pace (hyper polls this only
/// when the client's window has room) is the upstream's pace.
///
/// Small frames that have already arrived are joined (never waited for): a server stream of
/// small gRPC messages comes one DATA frame per message, and every frame forwarded costs a
/// frame's bookkeeping on both sides.
#[derive(Debug)]
pub struct UpstreamBody {
    stream: h2::RecvStream,
    data_done: bool,
    /// An error met while joining frames, reported after the data before it.
    failed: Option<h2::Error>,
}

impl UpstreamBody {
    pub(crate) fn new(stream: h2::RecvStream) -> Self {
        UpstreamBody {
            stream,
            data_done: false,
            failed: None,
        }
    }

    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(error) = self.failed.take() {
            return Poll::Ready(Some(Err(error.into())));
        }
        if !self.data_done {
            match ready!(self.stream.poll_data(cx)) {
                Some(Ok(data)) => {
                    let data = self.join_waiting(data, cx);
                    let _ = self.stream.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                None => self.data_done = true,
            }
        }
        match ready!(self.stream.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(e) => Poll::Ready(Some(Err(e.into()))),
        }
    }

    /// `first`, followed by the DATA frames that have already arrived, up to COALESCE_LIMIT.
    fn join_waiting(&mut self, first: Bytes, cx: &mut Context<'_>) -> Bytes {
        if first.len() >= COALESCE_LIMIT {
            return first;
        }
        let mut joined: Option<BytesMut> = None;
        while joined.as_ref().map_or(first.len(), BytesMut::len) < COALESCE_LIMIT {
            match self.stream.poll_data(cx) {
                Poll::Ready(Some(Ok(more))) => joined
                    .get_or_insert_with(|| {
                        let mut buffer = BytesMut::with_capacity(COALESCE_LIMIT);
                        buffer.extend_from_slice(&first);
                        buffer
                    })
                    .extend_from_slice(&more),
                Poll::Ready(Some(Err(error))) => {
                    self.failed = Some(error);
                    break;
                }
                Poll::Ready(None) => {
                    self.data_done = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        joined.map_or(first, BytesMut::freeze)
    }
}
