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
//!
//! This module sends the handshake down the path its upstream's protocol takes: `http1`
//! (HTTP/1.1 backends) or `h2` (RFC 8441 streams); `tunnel` runs the tunnel once both sides
//! switched, and `frames` reads the frame headers it follows.

mod frames;
mod h2;
mod http1;
mod tunnel;

use http::header::{SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::gateway::TunnelTicket;
use crate::route_timeouts::{bounded, ExchangeTimer, RouteTimeouts};
use crate::upstream::Upstream;

/// Forwards a websocket handshake, an HTTP/1.1 upgrade or an RFC 8441 extended CONNECT as
/// `side` says; once the upstream agreed, answers the client (101 or 200) and spawns the
/// tunnel. Any other upstream answer is passed back as a normal response.
pub(crate) async fn tunnel(
    request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    side: ClientSide,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<(Response<ProxyBody>, Option<ExchangeTimer>), ProxyError> {
    // The handshake (connect, request, the upstream's answer) is bounded by the route's
    // timeouts as any request's wait for its response head is: an upstream that accepts
    // and never answers gets the client a 504 instead of holding it, and a connection, for
    // good (`response_timeout` is off by default). The tunnel's own timer starts at the
    // switch; the handshake's goes back with the answer, for the body of a refusal.
    let mut timer = timeouts.start();
    // An HTTP/1.1 client's key, read once for either way upstream and before any connection
    // is opened: a handshake without one is the client's error whatever the upstream's state.
    let client_accept = match side {
        ClientSide::Upgrade => Some(tungstenite::handshake::derive_accept_key(
            request
                .headers()
                .get(SEC_WEBSOCKET_KEY)
                .ok_or(ProxyError::BadRequest("missing Sec-WebSocket-Key\n"))?
                .as_bytes(),
        )),
        ClientSide::ExtendedConnect => None,
    };
    let asked = Asked {
        side,
        client_accept,
    };
    let handshake = async {
        if upstream.protocol().is_h2() {
            h2::tunnel(
                request, upstream, authority, asked, ticket, exchange, timeouts,
            )
            .await
        } else {
            http1::tunnel(
                request, upstream, authority, asked, ticket, exchange, timeouts,
            )
            .await
        }
    };
    let answer = bounded(handshake, timer.as_mut())
        .await
        .map_err(|expired| expired.into_error(upstream.name()))??;
    Ok((answer, timer))
}

/// True for an RFC 8441 websocket request: CONNECT with `:protocol websocket`.
pub fn is_extended_connect_websocket<B>(request: &Request<B>) -> bool {
    request.method() == Method::CONNECT
        && request
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

/// How the client asked for its websocket, with what its answer needs.
struct Asked {
    side: ClientSide,
    /// For an HTTP/1.1 upgrade, the `Sec-WebSocket-Accept` its key calls for.
    client_accept: Option<String>,
}

/// How the client asked for its websocket, and so how it is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientSide {
    /// An HTTP/1.1 Upgrade: 101 with the Sec-WebSocket-Accept for the client's key.
    Upgrade,
    /// An RFC 8441 CONNECT over h2: 200.
    ExtendedConnect,
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

/// Copies what the upstream's handshake negotiated (subprotocol, extensions) to the reply,
/// every line of it: extensions may come as several lines (RFC 6455 §9.1), and a client
/// told of only the first would fail on the RSV bits of another.
fn copy_negotiated(upstream: &http::HeaderMap, reply: &mut http::HeaderMap) {
    for name in [SEC_WEBSOCKET_PROTOCOL, SEC_WEBSOCKET_EXTENSIONS] {
        for value in upstream.get_all(&name) {
            reply.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every line of what the handshake negotiated reaches the reply; nothing else does.
    #[test]
    fn every_negotiated_line_is_copied() {
        let mut upstream = http::HeaderMap::new();
        for (name, value) in [
            ("sec-websocket-extensions", "permessage-deflate"),
            ("sec-websocket-extensions", "x-webkit-deflate-frame"),
            ("sec-websocket-protocol", "graphql-ws"),
            ("set-cookie", "s=1"),
        ] {
            upstream.append(name, value.parse().unwrap());
        }
        let mut reply = http::HeaderMap::new();
        copy_negotiated(&upstream, &mut reply);
        let extensions: Vec<_> = reply.get_all(SEC_WEBSOCKET_EXTENSIONS).iter().collect();
        assert_eq!(extensions, ["permessage-deflate", "x-webkit-deflate-frame"]);
        assert_eq!(reply[SEC_WEBSOCKET_PROTOCOL], "graphql-ws");
        assert_eq!(reply.len(), 3);
    }
}
