//! Keeping a request body for a resend: a stream an h2 upstream refused unprocessed may be
//! sent again (to another address or connection) when its whole body is still at hand.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use pachgate_h2_upstream::StreamRef;

use crate::body::ProxyBody;

/// Request bodies up to this size are kept while they are sent, so that a stream the
/// upstream refused unprocessed can be sent again. Unary gRPC calls fit; a larger body
/// whose stream is refused fails as before.
pub(super) const RESEND_LIMIT: usize = 64 * 1024;

/// Feeds a client's request body into its upstream h2 stream: DATA as the upstream's window
/// allows (no more is pulled from the client meanwhile), then trailers or end of stream. A
/// client's reset reaches the upstream with its reason; an upstream's reset stops the feed.
pub(super) struct RequestPump {
    body: ProxyBody,
    upload: StreamRef,
    /// Data taken from the client that the upstream's window has not let out yet, and
    /// whether it ends the body.
    waiting: Option<(Bytes, bool)>,
    /// Every chunk taken from the client so far, while the body may still be sent again
    /// (`None` once it is over `RESEND_LIMIT`, has trailers or failed).
    pub(super) taken: Option<TakenBody>,
}

#[derive(Default)]
pub(super) struct TakenBody {
    /// A unary call's message is one chunk: it is kept without allocating.
    first: Option<Bytes>,
    /// Later chunks, copied: kept as shared `Bytes`, each would hold on to the receive
    /// buffer it was cut from, and a client sending one-byte DATA frames would make the
    /// kept handles (and the buffers behind them) many times the body's size.
    more: BytesMut,
    len: usize,
    complete: bool,
}

impl RequestPump {
    pub(super) fn new(body: ProxyBody, upload: StreamRef, keep_for_resend: bool) -> Self {
        RequestPump {
            body,
            upload,
            waiting: None,
            taken: keep_for_resend.then(TakenBody::default),
        }
    }

    /// Notes a chunk taken from the client; `None` data means the body ended.
    fn keep(&mut self, data: Option<&Bytes>) {
        let Some(taken) = self.taken.as_mut() else {
            return;
        };
        match data {
            None => taken.complete = true,
            Some(data) if taken.len + data.len() > RESEND_LIMIT => self.taken = None,
            Some(data) => {
                taken.len += data.len();
                if taken.first.is_none() {
                    taken.first = Some(data.clone());
                } else {
                    taken.more.extend_from_slice(data);
                }
            }
        }
    }

    /// The whole request body to send again, if the client has sent all of it (within
    /// `RESEND_LIMIT`) by now. It does not wait for more: a bidi client may be waiting for
    /// a response before it sends the rest, and a refusal must not hang it.
    pub(super) fn take_resend(&mut self, cx: &mut Context<'_>) -> Option<ProxyBody> {
        while !self.taken.as_ref()?.complete {
            match http_body::Body::poll_frame(Pin::new(&mut self.body), cx) {
                Poll::Pending => return None,
                Poll::Ready(None) => self.keep(None),
                Poll::Ready(Some(Ok(frame))) => {
                    let data = frame.into_data().ok()?; // trailers are not kept
                    self.keep(Some(&data));
                    if http_body::Body::is_end_stream(&self.body) {
                        self.keep(None);
                    }
                }
                Poll::Ready(Some(Err(_))) => return None,
            }
        }
        let taken = self.taken.take()?;
        let whole = match (taken.first, taken.more.is_empty()) {
            (None, _) => return Some(ProxyBody::Empty),
            (Some(only), true) => only,
            (Some(first), false) => {
                let mut whole = BytesMut::with_capacity(taken.len);
                whole.extend_from_slice(&first);
                whole.extend_from_slice(&taken.more);
                whole.freeze()
            }
        };
        Some(ProxyBody::Full(Some(whole)))
    }
}

impl Future for RequestPump {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        loop {
            if let Some((data, end_of_stream)) = this.waiting.as_mut() {
                let end_of_stream = *end_of_stream;
                if ready!(this.upload.poll_send(cx, data, end_of_stream)).is_err() || end_of_stream
                {
                    return Poll::Ready(());
                }
                this.waiting = None;
            }
            if this.upload.poll_send_closed(cx).is_ready() {
                tracing::debug!("upstream ended a stream mid-request");
                return Poll::Ready(());
            }
            let frame = match ready!(http_body::Body::poll_frame(Pin::new(&mut this.body), cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(error)) => {
                    this.taken = None;
                    this.upload.reset(h2_reason(&*error));
                    return Poll::Ready(());
                }
                None => {
                    this.keep(None);
                    this.waiting = Some((Bytes::new(), true));
                    continue;
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let end_of_stream = http_body::Body::is_end_stream(&this.body);
                    this.keep(Some(&data));
                    if end_of_stream {
                        this.keep(None);
                    }
                    this.waiting = Some((data, end_of_stream));
                }
                Err(frame) => {
                    this.taken = None;
                    if let Ok(trailers) = frame.into_trailers() {
                        this.upload.send_trailers(&trailers);
                    }
                    return Poll::Ready(());
                }
            }
        }
    }
}

/// The h2 reason inside an error chain (a client's CANCEL, say), else INTERNAL_ERROR.
fn h2_reason(error: &(dyn std::error::Error + 'static)) -> h2::Reason {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(reason) = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason) {
            return reason;
        }
        current = e.source();
    }
    h2::Reason::INTERNAL_ERROR
}
