//! Websocket tunnels: the HTTP/1.1 Upgrade handshake is forwarded to the upstream, and once
//! both sides answered 101 the two connections become one byte tunnel. Frames (ping, pong,
//! close) pass through untouched, and no request timeout applies to the tunnel.

use http::header::{
    HeaderValue, CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION,
    UPGRADE,
};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::upstream::{error_chain, Upstream};

/// Forwards an upgrade request; on 101 from the upstream, answers 101 to the client and
/// spawns the tunnel. Any other upstream answer is passed back as a normal response.
pub async fn tunnel(
    mut request: Request<Incoming>,
    upstream: &Upstream,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut sender, _endpoint) = upstream.connect_for_upgrade().await?;

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
        upstream_upgrade,
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
pub async fn tunnel_extended_connect(
    mut request: Request<Incoming>,
    upstream: &Upstream,
    authority: Option<http::uri::Authority>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut request);
    let (mut sender, endpoint) = upstream.connect_for_upgrade().await?;

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
        upstream_upgrade,
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

fn spawn_tunnel(
    name: String,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream_upgrade: hyper::upgrade::OnUpgrade,
) {
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(upstream = %name, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut server = TokioIo::new(server);
        match tokio::io::copy_bidirectional(&mut client, &mut server).await {
            Ok((up, down)) => {
                tracing::debug!(upstream = %name, bytes_up = up, bytes_down = down, "websocket tunnel closed")
            }
            Err(e) => tracing::debug!(upstream = %name, error = %e, "websocket tunnel ended"),
        }
    });
}
