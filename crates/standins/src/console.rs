//! Stand-in console: an HTTP/1.1 server with a page at `/`, a header mirror at `/headers`
//! (so tests can see what the proxy forwarded), a slow answer at
//! `/slow?head_ms=A&body_ms=B` (the head after A ms, `first` at once, `last` B ms later: for
//! timeouts), `/health` (200 "OK", or 503 while its [`Health`] switch is off) and a websocket
//! echo on any path that asks for an upgrade.

use std::convert::Infallible;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{
    HeaderValue, CONNECTION, CONTENT_TYPE, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE,
};
use http::{Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

use crate::health::Health;

const PAGE: &str = "<!doctype html><title>pachgate demo console</title>\
<h1>Stand-in console</h1><p>This page came through pachgate. A websocket echo answers on \
<code>/ws</code>.</p>\n";

/// Serves the stand-in console on `listener` forever.
pub async fn serve_console(listener: TcpListener) -> std::io::Result<()> {
    serve_console_with_health(listener, Health::default()).await
}

/// The same, with `/health` following `health`.
pub async fn serve_console_with_health(
    listener: TcpListener,
    health: Health,
) -> std::io::Result<()> {
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let health = health.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let serving = health.is_serving();
                async move {
                    let response = match request.uri().path() {
                        "/slow" => slow(&request).await,
                        "/health" if !serving => text_response(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "text/plain",
                            "not ready\n".into(),
                        )
                        .map(BodyExt::boxed_unsync),
                        _ => handle(request).await.map(BodyExt::boxed_unsync),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await;
        });
    }
}

async fn handle(mut request: Request<Incoming>) -> Response<Full<Bytes>> {
    let wants_websocket = request
        .headers()
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if wants_websocket {
        return accept_websocket(&mut request);
    }
    // Read the whole body before answering, as a well-behaved server does: answering early
    // makes hyper close the connection afterwards, racing the proxy's reuse of it.
    let (parts, body) = request.into_parts();
    let body_len = match body.collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => return text_response(StatusCode::BAD_REQUEST, "text/plain", "bad body\n".into()),
    };
    let request = Request::from_parts(parts, body_len);
    match request.uri().path() {
        "/health" => text_response(StatusCode::OK, "text/plain", "OK\n".into()),
        "/headers" => {
            let mut text = format!(
                "{} {} ({} body bytes)\n",
                request.method(),
                request.uri(),
                request.body()
            );
            for (name, value) in request.headers() {
                text.push_str(&format!(
                    "{}: {}\n",
                    name,
                    String::from_utf8_lossy(value.as_bytes())
                ));
            }
            text_response(StatusCode::OK, "text/plain", text.into())
        }
        _ => text_response(StatusCode::OK, "text/html; charset=utf-8", PAGE.into()),
    }
}

/// `/slow`: waits `head_ms` before the head, sends `first\n`, waits `body_ms`, sends `last\n`.
async fn slow(request: &Request<Incoming>) -> Response<UnsyncBoxBody<Bytes, Infallible>> {
    let wait = |name: &str| {
        let ms = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        std::time::Duration::from_millis(ms)
    };
    let (head, body) = (wait("head_ms"), wait("body_ms"));
    tokio::time::sleep(head).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(2);
    tokio::spawn(async move {
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"first\n"))))
            .await;
        tokio::time::sleep(body).await;
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"last\n"))))
            .await;
    });
    let mut response = Response::new(StreamBody::new(ReceiverStream::new(rx)).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

fn text_response(
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn accept_websocket(request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get(SEC_WEBSOCKET_KEY) else {
        return text_response(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "missing Sec-WebSocket-Key\n".into(),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let request_id = request
        .headers()
        .get(crate::pachd::ECHO_REQUEST_ID_ASKED)
        .and_then(|_| {
            let ids: Vec<&[u8]> = request
                .headers()
                .get_all("x-request-id")
                .iter()
                .map(HeaderValue::as_bytes)
                .collect();
            HeaderValue::from_bytes(&ids.join(&b", "[..])).ok()
        });
    let upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(64 << 20))
            .max_frame_size(Some(64 << 20));
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        let (mut sink, mut stream) = socket.split();
        // Echo data messages. tungstenite answers pings and close frames itself; reading on
        // after a Close is what flushes its reply, so the loop ends only when the stream does.
        while let Some(Ok(message)) = stream.next().await {
            if (message.is_text() || message.is_binary()) && sink.send(message).await.is_err() {
                break;
            }
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    if let Some(id) = request_id {
        headers.insert(crate::pachd::ECHOED_REQUEST_ID, id);
    }
    response
}
