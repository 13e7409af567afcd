//! Websocket tunnels: the client's handshake is forwarded to the upstream, and once both
//! sides agreed the two connections become one byte tunnel. Frames (ping, pong, close) pass
//! through untouched; only the route's own `timeout` / `idle_timeout` apply to it.
//!
//! The upstream side speaks the upstream's own protocol. `http1` and `http1-tls` upstreams
//! get an HTTP/1.1 upgrade, TLS for `http1-tls` (same CA, server name and client certificate
//! as its HTTP requests). `h2` and `h2c` upstreams get RFC 8441 extended CONNECT
//! (`:protocol websocket`) as a stream of their usual connection, when their SETTINGS enable
//! it (SETTINGS_ENABLE_CONNECT_PROTOCOL = 1): the tunnel is then the stream's DATA frames,
//! with the stream's flow control, END_STREAM for a half-close and RST_STREAM for a cut. An
//! h2 upstream that does not enable it gets no stream at all, and the client a 502.
//!
//! The tunnel follows frame boundaries (headers only, payloads are not inspected) so that at
//! the drain deadline it can end both sides cleanly: a close frame with code 1001 (going
//! away) to the client and to the backend, never cut into the middle of a frame.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::{
    HeaderValue, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use pachgate_h2_upstream::StreamRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::gateway::TunnelTicket;
use crate::route_timeouts::{bounded, Activity, RouteTimeouts};
use crate::upstream::{error_chain, Upstream};

/// Forwards an upgrade request; on 101 from the upstream, answers 101 to the client and
/// spawns the tunnel. Any other upstream answer is passed back as a normal response.
pub(crate) async fn tunnel(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<Response<ProxyBody>, ProxyError> {
    if upstream.protocol().is_h2() {
        let side = ClientSide::Upgrade;
        return tunnel_over_h2(
            request, upstream, authority, side, ticket, exchange, timeouts,
        )
        .await;
    }
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut sender, _, label) = upstream.connect_for_upgrade().await?;
    if let Some(exchange) = exchange.as_deref_mut() {
        exchange.set_upstream_endpoint(&label);
    }

    // The pipeline already stripped hop-by-hop headers (Upgrade and Connection included) and
    // checked that the client asked for `websocket`; put back exactly this hop's pair.
    let (mut parts, _body) = request.into_parts();
    set_upgrade_headers(&mut parts.headers);
    let mut response = match handshake_upstream(&mut sender, parts).await? {
        Handshake::Switched(response) => response,
        Handshake::Refused(response) => return Ok(response),
    };

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    spawn_tunnel(
        upstream.name().to_string(),
        client_upgrade,
        async move { upstream_upgrade.await.map(TokioIo::new) },
        ticket,
        take_for_tunnel(exchange, StatusCode::SWITCHING_PROTOCOLS),
        timeouts,
    );

    // 101 with the upstream's handshake headers (Sec-WebSocket-Accept, -Protocol, -Extensions).
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::Empty))
}

/// True for an RFC 8441 websocket request: CONNECT with `:protocol websocket`.
pub fn is_extended_connect_websocket<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// Serves an h2 extended CONNECT websocket from an HTTP/1.1 backend: pachgate makes the
/// HTTP/1.1 handshake (its own key, checked against the backend's accept value), answers the
/// client 200, and tunnels the h2 stream's bytes to the backend socket.
pub(crate) async fn tunnel_extended_connect(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<Response<ProxyBody>, ProxyError> {
    if upstream.protocol().is_h2() {
        let side = ClientSide::ExtendedConnect;
        return tunnel_over_h2(
            request, upstream, authority, side, ticket, exchange, timeouts,
        )
        .await;
    }
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut sender, endpoint, label) = upstream.connect_for_upgrade().await?;
    if let Some(exchange) = exchange.as_deref_mut() {
        exchange.set_upstream_endpoint(&label);
    }

    let (mut parts, _body) = request.into_parts();
    let key = tungstenite::handshake::client::generate_key();
    let headers = &mut parts.headers;
    set_upgrade_headers(headers);
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(
        SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    let host = authority.unwrap_or(endpoint);
    if let Ok(value) = HeaderValue::from_str(host.as_str()) {
        headers.insert(HOST, value);
    }
    parts.method = Method::GET;
    parts.extensions = http::Extensions::new();
    let mut response = match handshake_upstream(&mut sender, parts).await? {
        Handshake::Switched(response) => response,
        Handshake::Refused(response) => return Ok(response),
    };
    let expected_accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accepted = response
        .headers()
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected_accept.as_bytes());
    if !accepted {
        return Err(ProxyError::UpgradeFailed(
            "backend answered 101 with a wrong Sec-WebSocket-Accept".into(),
        ));
    }

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    spawn_tunnel(
        upstream.name().to_string(),
        client_upgrade,
        async move { upstream_upgrade.await.map(TokioIo::new) },
        ticket,
        take_for_tunnel(exchange, StatusCode::OK),
        timeouts,
    );

    // 200 to the h2 client, keeping the negotiated subprotocol and extensions.
    let (upstream_parts, _) = response.into_parts();
    let mut reply = Response::new(ProxyBody::Empty);
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(value) = upstream_parts.headers.get(name) {
            reply.headers_mut().insert(name, value.clone());
        }
    }
    Ok(reply)
}

/// How the client asked for its websocket, and so how it is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientSide {
    /// An HTTP/1.1 Upgrade: 101 with the Sec-WebSocket-Accept for the client's key.
    Upgrade,
    /// An RFC 8441 CONNECT over h2: 200.
    ExtendedConnect,
}

/// Request headers that belong to the client's hop only: the upstream's stream carries the
/// websocket in `:method CONNECT` / `:protocol`, and its own `:authority`.
const NOT_FORWARDED_OVER_H2: [http::header::HeaderName; 4] =
    [HOST, CONNECTION, UPGRADE, SEC_WEBSOCKET_KEY];

/// A websocket toward an `h2` or `h2c` upstream: an extended CONNECT stream there (RFC 8441)
/// with the client's websocket headers (version, subprotocols, extensions, origin, cookies);
/// on its 2xx the client is answered (101 or 200) and the stream's DATA become the tunnel.
/// Any other status is passed back as the upstream gave it, as a refused HTTP/1.1 upgrade is.
async fn tunnel_over_h2(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    side: ClientSide,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut parts, _body) = request.into_parts();
    let accept = match side {
        ClientSide::Upgrade => {
            let key = parts
                .headers
                .get(SEC_WEBSOCKET_KEY)
                .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key\n"))?;
            let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
            Some(HeaderValue::from_str(&accept).expect("base64 is a valid header value"))
        }
        ClientSide::ExtendedConnect => None,
    };
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
    for name in ["sec-websocket-protocol", "sec-websocket-extensions"] {
        if let Some(value) = response.headers().get(name) {
            reply.headers_mut().insert(name, value.clone());
        }
    }
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

fn set_upgrade_headers(headers: &mut http::HeaderMap) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
}

enum Handshake {
    /// The backend answered 101; its connection is ready to be upgraded.
    Switched(Response<Incoming>),
    /// Any other answer, passed back to the client as an ordinary response.
    Refused(Response<ProxyBody>),
}

/// Sends the HTTP/1.1 upgrade request (origin-form target, no body) to the backend.
async fn handshake_upstream(
    sender: &mut http1::SendRequest<ProxyBody>,
    mut parts: http::request::Parts,
) -> Result<Handshake, ProxyError> {
    // An HTTP/1.1 request line takes the origin form: path and query only.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    parts.version = Version::HTTP_11;
    let response = sender
        .send_request(Request::from_parts(parts, ProxyBody::Empty))
        .await
        .map_err(|e| ProxyError::UpgradeFailed(error_chain(&e)))?;
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Handshake::Switched(response));
    }
    let (mut parts, body) = response.into_parts();
    crate::headers::strip_hop_by_hop(&mut parts.headers);
    Ok(Handshake::Refused(Response::from_parts(
        parts,
        ProxyBody::Stream(body),
    )))
}

/// The tunnel books the exchange when it closes: one access-log line per tunnel, with its
/// whole duration and byte counts.
fn take_for_tunnel(
    exchange: &mut Option<Box<Exchange>>,
    status: StatusCode,
) -> Option<Box<Exchange>> {
    let mut exchange = exchange.take()?;
    exchange.set_websocket();
    exchange.set_status(status.as_u16());
    Some(exchange)
}

/// Joins the client's upgraded connection to the upstream side (an upgraded HTTP/1.1
/// connection, or an h2 extended CONNECT stream) once both are ready.
fn spawn_tunnel<U, S>(
    name: String,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream: U,
    ticket: TunnelTicket,
    mut exchange: Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) where
    U: Future<Output = Result<S, hyper::Error>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client_upgrade, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(upstream = %name, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let _open = ticket.open();
        let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let going_away = GoingAway::new();
        // The route's timeouts, from the switch on: `idle_timeout` for a tunnel quiet both
        // ways, `timeout` for its whole life. Cut at expiry: both sockets are closed.
        let mut timer = timeouts.start();
        let activity = timer.as_ref().map(|t| t.activity().clone());
        let (bytes_up, bytes_down) = (AtomicU64::new(0), AtomicU64::new(0));
        let pumps = async {
            tokio::join!(
                pump(
                    client_read,
                    &mut server_write,
                    ticket.close_signal(),
                    going_away.masked(),
                    (&bytes_up, activity.as_deref()),
                ),
                pump(
                    &mut server_read,
                    client_write,
                    ticket.close_signal(),
                    going_away.unmasked(),
                    (&bytes_down, activity.as_deref()),
                ),
            )
        };
        let closed_for_drain = match bounded(pumps, timer.as_mut()).await {
            Ok((up, down)) => up.closed_for_drain || down.closed_for_drain,
            Err(expired) => {
                tracing::info!(upstream = %name, "websocket tunnel closed: {}", expired.describe());
                false
            }
        };
        if closed_for_drain {
            // The backend answers our close frame and ends its side; waiting for that (a
            // moment at most) keeps the tunnel counted open until the close has left, which
            // on an h2 stream means until the connection's task wrote it, not just queued it.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(FRAME_FINISH_LIMIT, async {
                while matches!(server_read.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        let (up, down) = (bytes_up.into_inner(), bytes_down.into_inner());
        tracing::debug!(
            upstream = %name,
            bytes_up = up,
            bytes_down = down,
            closed_for_drain,
            "websocket tunnel closed"
        );
        if let Some(exchange) = exchange.as_mut() {
            exchange.set_tunnel_bytes(up, down);
        }
    });
}

struct PumpEnd {
    closed_for_drain: bool,
}

/// How long a direction may take, after the drain deadline, to reach the end of the frame
/// it is in before it is cut without a close frame.
const FRAME_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies one direction of a tunnel. On EOF it half-closes the other side (as
/// `copy_bidirectional` does); when the gateway says close, it finishes the frame in flight,
/// writes `close_frame`, and shuts the direction down. Bytes forwarded are counted in
/// `bytes` (kept outside, so a tunnel cut by its route's timeout still knows them), and
/// noted in `activity` when the route has timeouts.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut close_now: tokio::sync::watch::Receiver<bool>,
    close_frame: Vec<u8>,
    (bytes, activity): (&AtomicU64, Option<&Activity>),
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let mut frames = FrameTracker::default();
    let mut end = PumpEnd {
        closed_for_drain: false,
    };
    let mut stopping = false;
    loop {
        if stopping && frames.at_boundary() {
            if to.write_all(&close_frame).await.is_ok() {
                end.closed_for_drain = true;
            }
            let _ = to.shutdown().await;
            return end;
        }
        let read = if stopping {
            match tokio::time::timeout(FRAME_FINISH_LIMIT, from.read(&mut buffer)).await {
                Ok(read) => read,
                Err(_) => {
                    let _ = to.shutdown().await;
                    return end;
                }
            }
        } else {
            tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = close_now.wait_for(|close| *close) => {
                    stopping = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                // The source ended (an h2 upstream may reset its stream as soon as it has
                // answered our close, its reply discarded): at the drain deadline the other
                // side still gets its close frame, unless one already went through.
                let draining = stopping || *close_now.borrow();
                if draining
                    && frames.at_boundary()
                    && !frames.close_seen
                    && to.write_all(&close_frame).await.is_ok()
                {
                    end.closed_for_drain = true;
                }
                let _ = to.shutdown().await;
                return end;
            }
            Ok(n) => n,
        };
        let mut forward = 0;
        while forward < n {
            forward += frames.step(&buffer[forward..n]);
            if stopping && frames.at_boundary() {
                break; // what follows would come after our close frame
            }
        }
        if let Some(activity) = activity {
            activity.note();
        }
        if to.write_all(&buffer[..forward]).await.is_err() {
            return end;
        }
        bytes.fetch_add(forward as u64, Ordering::Relaxed);
    }
}

/// Where a byte stream of websocket frames is: in a frame header, in a payload, or exactly
/// between two frames. Only headers are read (RFC 6455 §5.2).
#[derive(Default)]
struct FrameTracker {
    header: [u8; 14],
    header_len: usize,
    payload_left: u64,
    /// A close frame has passed.
    close_seen: bool,
}

impl FrameTracker {
    fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// Consumes `data` up to the end of the current frame (or all of it); returns how many
    /// bytes were consumed.
    fn step(&mut self, data: &[u8]) -> usize {
        let mut used = 0;
        while used < data.len() {
            if self.payload_left > 0 {
                let take = self.payload_left.min((data.len() - used) as u64);
                used += take as usize;
                self.payload_left -= take;
                if self.payload_left == 0 {
                    return used;
                }
                continue;
            }
            self.header[self.header_len] = data[used];
            self.header_len += 1;
            used += 1;
            if self.header_len < 2 || self.header_len < self.header_size() {
                continue;
            }
            self.payload_left = self.payload_size();
            self.close_seen |= self.header[0] & 0x0f == 0x8;
            self.header_len = 0;
            if self.payload_left == 0 {
                return used;
            }
        }
        used
    }

    fn header_size(&self) -> usize {
        let masked = self.header[1] & 0x80 != 0;
        let length_bytes = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + length_bytes + if masked { 4 } else { 0 }
    }

    fn payload_size(&self) -> u64 {
        match self.header[1] & 0x7f {
            126 => u16::from_be_bytes([self.header[2], self.header[3]]) as u64,
            127 => u64::from_be_bytes(self.header[2..10].try_into().expect("eight bytes")),
            short => short as u64,
        }
    }
}

/// Close frames with status 1001 (going away), as a server sends them (unmasked) and as a
/// client must (masked, RFC 6455 §5.3).
struct GoingAway {
    payload: Vec<u8>,
}

impl GoingAway {
    fn new() -> Self {
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"pachgate is shutting down");
        GoingAway { payload }
    }

    fn unmasked(&self) -> Vec<u8> {
        let mut frame = vec![0x88, self.payload.len() as u8];
        frame.extend_from_slice(&self.payload);
        frame
    }

    fn masked(&self) -> Vec<u8> {
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_usize(self.payload.len());
        let key = (hasher.finish() as u32).to_be_bytes();
        let mut frame = vec![0x88, 0x80 | self.payload.len() as u8];
        frame.extend_from_slice(&key);
        frame.extend(self.payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries_are_found_across_reads() {
        // A masked 3-byte text frame, an unmasked 300-byte binary frame (16-bit length),
        // then an empty ping.
        let mut stream = vec![0x81, 0x83, 1, 2, 3, 4, b'a' ^ 1, b'b' ^ 2, b'c' ^ 3];
        stream.extend_from_slice(&[0x82, 126, 0x01, 0x2c]);
        stream.extend(std::iter::repeat_n(7u8, 300));
        stream.extend_from_slice(&[0x89, 0x00]);
        let mut boundaries = Vec::new();
        let mut tracker = FrameTracker::default();
        let mut offset = 0;
        for chunk in stream.chunks(5) {
            let mut used = 0;
            while used < chunk.len() {
                used += tracker.step(&chunk[used..]);
                if tracker.at_boundary() {
                    boundaries.push(offset + used);
                }
            }
            offset += chunk.len();
        }
        assert_eq!(boundaries, vec![9, 9 + 4 + 300, stream.len()]);
        assert!(!tracker.close_seen);
        tracker.step(&GoingAway::new().unmasked());
        assert!(tracker.close_seen && tracker.at_boundary());
    }

    #[test]
    fn close_frames_carry_1001_and_the_client_one_is_masked() {
        let going_away = GoingAway::new();
        let plain = going_away.unmasked();
        assert_eq!(&plain[..4], &[0x88, 27, 0x03, 0xe9]);
        let masked = going_away.masked();
        assert_eq!(masked[1], 0x80 | 27);
        let key = &masked[2..6];
        let unmasked: Vec<u8> = masked[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, plain[2..]);
    }
}
