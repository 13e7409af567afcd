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
    /// The first chunk (a unary call's whole message, the common case), kept shared
    /// whatever its size: no copy and no allocation per call.
    first: Option<Bytes>,
    /// The rest, in order: chunks of SHARED_FROM bytes or more as they came (shared), runs
    /// of smaller ones copied together.
    rest: Vec<Bytes>,
    /// The run of small chunks since the last part.
    small: BytesMut,
    len: usize,
    complete: bool,
}

impl TakenBody {
    fn add(&mut self, data: &Bytes) {
        if data.is_empty() {
            return;
        }
        self.len += data.len();
        if self.first.is_none() {
            self.first = Some(data.clone());
        } else if data.len() >= SHARED_FROM {
            if !self.small.is_empty() {
                self.rest.push(self.small.split().freeze());
            }
            self.rest.push(data.clone());
        } else {
            self.small.extend_from_slice(data);
        }
    }

    fn into_body(self) -> ProxyBody {
        let Some(first) = self.first else {
            return ProxyBody::Empty;
        };
        if self.rest.is_empty() && self.small.is_empty() {
            return ProxyBody::Full(Some(first));
        }
        let mut whole = BytesMut::with_capacity(self.len);
        whole.extend_from_slice(&first);
        for part in &self.rest {
            whole.extend_from_slice(part);
        }
        whole.extend_from_slice(&self.small);
        ProxyBody::Full(Some(whole.freeze()))
    }
}

/// Chunks at least this large are kept as the client's own `Bytes`; smaller ones are
/// copied. Each kept `Bytes` holds on to the receive buffer it was cut from, so a client
/// sending one-byte DATA frames would otherwise make the kept state many times the body
/// (65,536 handles for 64 KiB); past this size a handle costs little beside its chunk, and
/// at most RESEND_LIMIT / SHARED_FROM of them are kept.
const SHARED_FROM: usize = 4096;

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
            Some(data) => taken.add(data),
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
        Some(self.taken.take()?.into_body())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The body comes back whole and in order, however it was cut; one-byte chunks are
    /// copied together instead of each kept as a handle on its receive buffer.
    #[test]
    fn a_kept_body_is_whole_and_its_small_chunks_are_copied_together() {
        let mut taken = TakenBody::default();
        let mut want = Vec::new();
        let mut chunks: Vec<Bytes> = (0..1000u32).map(|i| Bytes::from(vec![i as u8])).collect();
        chunks.insert(500, Bytes::from(vec![b'L'; 8192]));
        for chunk in &chunks {
            taken.add(chunk);
            want.extend_from_slice(chunk);
        }
        // Besides the first byte: the copied run before the large chunk and the large chunk
        // (the run after it is still being copied into).
        assert_eq!(taken.rest.len(), 2);
        let ProxyBody::Full(Some(whole)) = taken.into_body() else {
            panic!("a whole body");
        };
        assert_eq!(&whole[..], &want[..]);
    }

    /// A unary call's message, one chunk, is kept and sent again without a copy.
    #[test]
    fn a_single_chunk_is_kept_without_a_copy() {
        let message = Bytes::from_static(b"\0\0\0\0\x05hello");
        let mut taken = TakenBody::default();
        taken.add(&message);
        let ProxyBody::Full(Some(again)) = taken.into_body() else {
            panic!("a whole body");
        };
        assert_eq!(again.as_ptr(), message.as_ptr());
    }
}
