//! Websockets to h2 and h2c upstreams: an RFC 8441 extended CONNECT stream on the upstream's
//! connection, and that stream as the tunnel's upstream byte stream.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use pachgate_h2_upstream::StreamRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::tunnel::spawn_tunnel;
use super::{copy_negotiated, take_for_tunnel, Asked};
use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::gateway::TunnelTicket;
use crate::route_timeouts::RouteTimeouts;
use crate::upstream::Upstream;

/// Request headers that belong to the client's hop only: the upstream's stream carries the
/// websocket in `:method CONNECT` / `:protocol`, and its own `:authority`.
const NOT_FORWARDED_OVER_H2: [http::header::HeaderName; 5] =
    [HOST, CONNECTION, UPGRADE, SEC_WEBSOCKET_KEY, CONTENT_LENGTH];

/// A websocket toward an `h2` or `h2c` upstream: an extended CONNECT stream there (RFC 8441)
/// with the client's websocket headers (version, subprotocols, extensions, origin, cookies);
/// on its 2xx the client is answered (101 or 200) and the stream's DATA become the tunnel.
/// Any other status is passed back as the upstream gave it, as a refused HTTP/1.1 upgrade is.
pub(super) async fn tunnel(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    asked: Asked,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    // An HTTP/1.1 client is answered 101 with the accept value for its key.
    let accept = asked
        .client_accept
        .map(|accept| HeaderValue::from_str(&accept).expect("base64 is a valid header value"));
    for name in NOT_FORWARDED_OVER_H2 {
        parts.headers.remove(name);
    }
    if !parts.headers.contains_key(SEC_WEBSOCKET_VERSION) {
        parts
            .headers
            .insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    }
    let (stream, response, label) = upstream.open_websocket_h2(parts, authority).await?;
    if let Some(exchange) = exchange.as_deref_mut() {
        exchange.set_upstream_endpoint(&label);
    }
    if !response.status().is_success() {
        let (mut parts, ()) = response.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        let body = ProxyBody::Upstream(UpstreamBody::new(stream));
        return Ok(Response::from_parts(parts, body));
    }

    let mut reply = Response::new(ProxyBody::Empty);
    let status = match accept {
        Some(accept) => {
            let headers = reply.headers_mut();
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
            headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
            StatusCode::SWITCHING_PROTOCOLS
        }
        None => StatusCode::OK,
    };
    *reply.status_mut() = status;
    copy_negotiated(response.headers(), reply.headers_mut());
    spawn_tunnel(
        upstream.name().to_string(),
        client_upgrade,
        std::future::ready(Ok(H2Tunnel::new(stream))),
        ticket,
        take_for_tunnel(exchange, status),
        timeouts,
    );
    Ok(reply)
}

/// An upstream extended CONNECT stream as a byte stream: reads are its DATA (credited back
/// to the upstream as they are read, so a slow client slows the upstream), writes go out as
/// DATA as its windows allow, shutdown is END_STREAM. Dropped unfinished, the stream is
/// reset (CANCEL).
struct H2Tunnel {
    stream: StreamRef,
    /// Received data not yet read.
    readable: Bytes,
    /// Written data the upstream's window has not let out yet: one write's worth at most,
    /// so the next write waits for it.
    unsent: Bytes,
    ended: bool,
}

impl H2Tunnel {
    fn new(stream: StreamRef) -> Self {
        H2Tunnel {
            stream,
            readable: Bytes::new(),
            unsent: Bytes::new(),
            ended: false,
        }
    }

    fn poll_unsent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unsent.is_empty() {
            return Poll::Ready(Ok(()));
        }
        match ready!(self.stream.poll_send(cx, &mut self.unsent, false)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(()) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }
}

impl AsyncRead for H2Tunnel {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.readable.is_empty() {
            match ready!(this.stream.poll_body(cx)) {
                // Trailers end a CONNECT stream no differently from END_STREAM.
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        this.readable = data;
                    }
                }
                Some(Err(error)) => return Poll::Ready(Err(io::Error::other(error))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.readable.len().min(buf.remaining());
        buf.put_slice(&this.readable.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Tunnel {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_unsent(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        this.unsent = Bytes::copy_from_slice(buf);
        // Out now as far as the windows allow; the rest waits for the next write or flush.
        if let Poll::Ready(Err(error)) = this.poll_unsent(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_unsent(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_unsent(cx))?;
        if !this.ended {
            // An error means the upstream already ended or reset its side: nothing to end.
            let _ = ready!(this.stream.poll_send(cx, &mut Bytes::new(), true));
            this.ended = true;
        }
        Poll::Ready(Ok(()))
    }
}
