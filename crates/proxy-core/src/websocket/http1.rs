//! Websockets to HTTP/1.1 backends (`http1`, `http1-tls`): the backend's upgrade handshake,
//! for an HTTP/1.1 client's Upgrade and for an h2 client's extended CONNECT.

use http::header::{
    HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::tunnel::spawn_tunnel;
use super::{copy_negotiated, take_for_tunnel, Asked, ClientSide};
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::exchange::Exchange;
use crate::gateway::TunnelTicket;
use crate::route_timeouts::RouteTimeouts;
use crate::upstream::{error_chain, Upstream};

/// A websocket to an HTTP/1.1 backend. An HTTP/1.1 client's upgrade goes on with this hop's
/// Upgrade / Connection pair and, on 101, the client gets the backend's 101 (with its
/// handshake headers). For an h2 client's extended CONNECT pachgate makes the HTTP/1.1
/// handshake itself (its own key, checked against the backend's accept value) and answers
/// the client 200. Either way the tunnel is then spawned; any other backend answer is passed
/// back as a normal response.
pub(super) async fn tunnel(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
    asked: Asked,
    ticket: TunnelTicket,
    exchange: &mut Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) -> Result<Response<ProxyBody>, ProxyError> {
    let side = asked.side;
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut sender, endpoint, label) = upstream.connect_for_upgrade().await?;
    if let Some(exchange) = exchange.as_deref_mut() {
        exchange.set_upstream_endpoint(&label);
    }

    // The pipeline already stripped hop-by-hop headers (Upgrade and Connection included) and
    // checked that the client asked for `websocket`; put back exactly this hop's pair.
    let (mut parts, _body) = request.into_parts();
    set_upgrade_headers(&mut parts.headers);
    // The handshake goes without a body whatever the client's head said: a Content-Length
    // left on it would have the backend wait for bytes that never come.
    parts.headers.remove(CONTENT_LENGTH);
    // The accept value the backend's 101 must carry: for the client's own key, or for one
    // pachgate makes for an extended CONNECT.
    let expected_accept = match asked.client_accept {
        Some(accept) => accept,
        None => {
            let key = as_upgrade_request(&mut parts, authority.unwrap_or(endpoint));
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        }
    };
    // The backend's answer to the upgrade is its response head: `response_timeout` bounds
    // it, as it bounds the h2 way's.
    let handshake = std::pin::pin!(handshake_upstream(&mut sender, parts));
    let mut response = match upstream.within_response_timeout(handshake).await? {
        Handshake::Switched(response) => response,
        // A 2xx to an extended CONNECT means "tunnel open" to the h2 client (RFC 8441 §5),
        // which this answer is not (a single-page app's fallback page, say).
        Handshake::Refused(response)
            if side == ClientSide::ExtendedConnect && response.status().is_success() =>
        {
            return Err(ProxyError::UpgradeFailed(format!(
                "backend answered the websocket handshake with {}, not 101",
                response.status()
            )));
        }
        Handshake::Refused(response) => return Ok(response),
    };
    // A 101 is a websocket only with the upgrade token and the accept value for this key
    // (RFC 6455 §4.1). Anything else would turn the client's connection into a raw pipe to
    // the backend, whose later requests no route, path rule or gate would see.
    let headers = response.headers();
    let upgraded_to_websocket = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let accepted = headers
        .get(SEC_WEBSOCKET_ACCEPT)
        .is_some_and(|v| v.as_bytes() == expected_accept.as_bytes());
    if !(upgraded_to_websocket && accepted) {
        return Err(ProxyError::UpgradeFailed(
            "backend answered 101 without `Upgrade: websocket` and the Sec-WebSocket-Accept for the key".into(),
        ));
    }
    let status = match side {
        ClientSide::Upgrade => StatusCode::SWITCHING_PROTOCOLS,
        ClientSide::ExtendedConnect => StatusCode::OK,
    };

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    spawn_tunnel(
        upstream.name().to_string(),
        client_upgrade,
        async move { upstream_upgrade.await.map(TokioIo::new) },
        ticket,
        take_for_tunnel(exchange, status),
        timeouts,
    );

    let (upstream_parts, _) = response.into_parts();
    Ok(match side {
        // 101 with the upstream's handshake headers (Sec-WebSocket-Accept, -Protocol,
        // -Extensions).
        ClientSide::Upgrade => Response::from_parts(upstream_parts, ProxyBody::Empty),
        // 200 to the h2 client, keeping the negotiated subprotocol and extensions.
        ClientSide::ExtendedConnect => {
            let mut reply = Response::new(ProxyBody::Empty);
            copy_negotiated(&upstream_parts.headers, reply.headers_mut());
            reply
        }
    })
}

/// Turns an h2 client's extended CONNECT into an HTTP/1.1 upgrade request of pachgate's own:
/// GET, version 13, a fresh key (returned, to check the backend's accept value), and `host`.
fn as_upgrade_request(parts: &mut http::request::Parts, host: http::uri::Authority) -> String {
    let key = tungstenite::handshake::client::generate_key();
    let headers = &mut parts.headers;
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
    headers.insert(
        SEC_WEBSOCKET_KEY,
        HeaderValue::from_str(&key).expect("base64 is a valid header value"),
    );
    if let Ok(value) = HeaderValue::from_str(host.as_str()) {
        headers.insert(HOST, value);
    }
    parts.method = Method::GET;
    parts.extensions = http::Extensions::new();
    key
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
