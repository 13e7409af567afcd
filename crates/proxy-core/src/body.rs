//! One concrete body type for everything pachgate sends, so no body is boxed per request.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::metrics::ByteTally;

/// A streamed peer body, or a small body pachgate wrote itself.
#[derive(Debug)]
pub enum ProxyBody {
    /// Frames (data and trailers) passed through from the other side, unbuffered.
    Stream(Incoming),
    /// A client's request body on its way upstream, its data bytes counted.
    Metered(Incoming, ByteTally),
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Stream(body) => Pin::new(body).poll_frame(cx),
            ProxyBody::Metered(body, received) => {
                let polled = Pin::new(body).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        received.add(data.len() as u64);
                    }
                }
                polled
            }
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.is_end_stream(),
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Stream(body) | ProxyBody::Metered(body, _) => body.size_hint(),
            ProxyBody::Full(Some(data)) => SizeHint::with_exact(data.len() as u64),
            ProxyBody::Full(None) | ProxyBody::Empty => SizeHint::with_exact(0),
        }
    }
}
