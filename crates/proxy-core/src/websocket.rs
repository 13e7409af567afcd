//! Websocket tunnels: the HTTP/1.1 Upgrade handshake is forwarded to the upstream, and once
//! both sides answered 101 the two connections become one byte tunnel. Frames (ping, pong,
//! close) pass through untouched, and no request timeout applies to the tunnel.

use http::header::{HeaderValue, CONNECTION, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
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

    let (mut parts, _body) = request.into_parts();
    let upgrade_value = parts
        .headers
        .get(UPGRADE)
        .cloned()
        .unwrap_or(HeaderValue::from_static("websocket"));
    crate::headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, upgrade_value);
    // An HTTP/1.1 request line takes the origin form: path and query only.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .parse()
        .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    parts.version = http::Version::HTTP_11;
    let upstream_request = Request::from_parts(parts, ProxyBody::Empty);

    let mut response = sender
        .send_request(upstream_request)
        .await
        .map_err(|e| ProxyError::UpgradeFailed(error_chain(&e)))?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        return Ok(Response::from_parts(parts, ProxyBody::Stream(body)));
    }

    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let name = upstream.name().to_string();
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

    // 101 with the upstream's handshake headers (Sec-WebSocket-Accept, -Protocol, -Extensions).
    let (parts, _) = response.into_parts();
    Ok(Response::from_parts(parts, ProxyBody::Empty))
}
