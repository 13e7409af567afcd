//! The one resend of a refused request, driven through the whole pipeline: an h2c client
//! calls a gateway in this test's runtime, whose route leads to a scripted h2 upstream
//! (raw frames) that refuses the first attempt — RST_STREAM(REFUSED_STREAM), or a GOAWAY
//! whose last stream id is below the request's. Only a stream the upstream left unprocessed
//! is safe to send again (RFC 9113 §8.7), and only a body pachgate still holds whole (up
//! to 64 KiB), so the tests check both sides: what the upstream received on each attempt
//! (headers and body, decoded here) and what the client was answered.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use pachgate_proxy_core::{ClientPolicy, Gateway, Snapshot, UpstreamProtocol};
use tokio::net::TcpListener;

mod fixture;
mod scripted_h2;
use fixture::*;
use scripted_h2::*;

/// A gateway whose `/pkg.Svc/` route leads to the scripted h2c upstream on `listener`.
async fn gateway_to_script() -> (Arc<Gateway>, SocketAddr, TcpListener) {
    gateway_to_script_logged(false).await
}

async fn gateway_to_script_logged(access_log: bool) -> (Arc<Gateway>, SocketAddr, TcpListener) {
    let (listener, upstream_addr) = listener().await;
    let snapshot = Snapshot::build(
        vec![open_route("grpc", "/pkg.Svc/", "scripted")],
        vec![upstream("scripted", upstream_addr, UpstreamProtocol::H2c)],
        None,
        None,
        ClientPolicy::default(),
    )
    .expect("a valid snapshot");
    let (gateway, addr) = serve_with_access_log(snapshot, access_log).await;
    (gateway, addr, listener)
}

/// A gRPC call with a probe header, so that each attempt can be told from the others.
fn call(probe: &str, body: TestBody) -> Request<TestBody> {
    let mut request = grpc_request("/pkg.Svc/Call", body);
    request
        .headers_mut()
        .insert("x-probe", probe.parse().unwrap());
    request
}

/// A message of `len` bytes, each byte its offset (mod 251), so a reordering or a gap
/// shows.
fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A body the client sends in `chunks`, 20 ms apart: the proxy takes it from the client
/// piece by piece, as it does a client stream.
fn streamed(chunks: Vec<Vec<u8>>) -> TestBody {
    let frames = futures_util::stream::unfold(chunks.into_iter(), |mut rest| async move {
        let chunk = rest.next()?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(chunk))), rest))
    });
    StreamBody::new(frames).boxed()
}

/// The fields both attempts must carry as the client sent them.
fn assert_same_request(first: &Received, again: &Received, probe: &str, body: &[u8]) {
    assert_eq!(again.header(":method"), Some("POST"));
    assert_eq!(again.header(":path"), Some("/pkg.Svc/Call"));
    assert_eq!(again.header("content-type"), Some("application/grpc"));
    assert_eq!(again.header("te"), Some("trailers"));
    assert_eq!(again.header("x-probe"), Some(probe));
    assert_eq!(again.body.len(), body.len());
    assert!(
        again.body == body,
        "the resent body differs from the client's"
    );
    // Whatever pachgate adds (request id, forwarding headers) is the same both times.
    assert_eq!(first.headers, again.headers);
    assert_eq!(first.body, again.body);
}

/// An answered call: the scripted upstream's whole response reached the client.
fn assert_answered(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("0"));
    assert_eq!(answer.body.as_bytes(), b"\0\0\0\0\x02hi");
}

/// A call that failed at the upstream: gRPC UNAVAILABLE, in the trailers-only form, saying
/// how the upstream ended the stream.
fn assert_unavailable(answer: &Answer, how: &str) {
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert_eq!(answer.header("grpc-status"), Some("14"));
    let message = format!("pachgate: upstream scripted: request failed: {how}");
    assert_eq!(answer.header("grpc-message"), Some(message.as_str()));
    assert_eq!(answer.body, "");
}

const REFUSED: &str = "stream refused (upstream going away)";

/// Resets the first request with `code` once it has arrived whole, answers the next one on
/// the connection (a resend, or the client's next call); returns both as received.
async fn reset_first_then_answer(listener: TcpListener, code: u32) -> (Received, Received) {
    let mut peer = Peer::accept(&listener, &[]).await;
    let first = peer.read_request().await;
    peer.reset(first.stream, code).await;
    let next = peer.read_request().await;
    peer.respond(next.stream).await;
    (first, next)
}

async fn refuse_once_then_answer(listener: TcpListener) -> (Received, Received) {
    reset_first_then_answer(listener, REFUSED_STREAM).await
}

#[tokio::test]
async fn a_refused_small_post_is_sent_again_whole() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(refuse_once_then_answer(listener));
    let body = message(300);
    let answer = send_h2c(addr, call("small", full(body.clone()))).await;
    assert_answered(&answer);
    let (first, again) = script.await.unwrap();
    assert_eq!(first.body, body, "the first attempt carried the body too");
    // Same connection (a refused stream does not end it), the next client stream id.
    assert_eq!((first.stream, again.stream), (1, 3));
    assert_same_request(&first, &again, "small", &body);
}

#[tokio::test]
async fn a_refused_streamed_body_is_sent_again_whole() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(refuse_once_then_answer(listener));
    let chunks = vec![
        message(1000),
        vec![7u8; 5],
        message(20_000),
        b"end".to_vec(),
    ];
    let body = chunks.concat();
    let answer = send_h2c(addr, call("streamed", streamed(chunks))).await;
    assert_answered(&answer);
    let (first, again) = script.await.unwrap();
    assert_eq!(first.body, body);
    assert_same_request(&first, &again, "streamed", &body);
}

#[tokio::test]
async fn a_stream_above_a_goaways_last_id_is_sent_again_on_a_new_connection() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        // Stream 1 is answered; stream 3 arrives whole, then a GOAWAY says the last stream
        // processed was 1: stream 3 was not, and may be sent again.
        let answered = peer.read_request().await;
        peer.respond(answered.stream).await;
        let first = peer.read_request().await;
        peer.go_away(answered.stream, NO_ERROR).await;
        let mut fresh = Peer::accept(&listener, &[]).await;
        let again = fresh.read_request().await;
        fresh.respond(again.stream).await;
        (answered, first, again, peer)
    });
    assert_answered(&send_h2c(addr, call("before", full(message(10)))).await);
    let body = message(4_000);
    let answer = send_h2c(addr, call("goaway", full(body.clone()))).await;
    assert_answered(&answer);
    let (answered, first, again, _old) = script.await.unwrap();
    assert_eq!(answered.header("x-probe"), Some("before"));
    assert_eq!((answered.stream, first.stream), (1, 3));
    assert_eq!(again.stream, 1, "a new connection's first stream");
    assert_same_request(&first, &again, "goaway", &body);
}

/// The request id pachgate made for a call: exactly one `x-request-id`, 32 hex digits.
fn made_request_id(received: &Received) -> &str {
    let ids: Vec<&str> = received
        .headers
        .iter()
        .filter(|(name, _)| name == "x-request-id")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(ids.len(), 1, "{:?}", received.headers);
    assert!(
        ids[0].len() == 32 && ids[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "{ids:?}"
    );
    ids[0]
}

/// With the access log on, a made request id travels outside the request's header map and
/// is encoded by the h2 client itself: a resend (on the same connection after
/// REFUSED_STREAM, or on a new one after a GOAWAY) carries it once again, the same id.
#[tokio::test]
async fn a_resent_call_carries_its_made_request_id_once_each_time() {
    let (_gateway, addr, listener) = gateway_to_script_logged(true).await;
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let refused = peer.read_request().await;
        peer.reset(refused.stream, REFUSED_STREAM).await;
        let resent = peer.read_request().await;
        peer.respond(resent.stream).await;
        let above_last = peer.read_request().await;
        peer.go_away(resent.stream, NO_ERROR).await;
        let mut fresh = Peer::accept(&listener, &[]).await;
        let on_fresh = fresh.read_request().await;
        fresh.respond(on_fresh.stream).await;
        (refused, resent, above_last, on_fresh, peer)
    });
    assert_answered(&send_h2c(addr, call("refused", full(message(10)))).await);
    assert_answered(&send_h2c(addr, call("goaway", full(message(10)))).await);
    let (refused, resent, above_last, on_fresh, _old) = script.await.unwrap();
    assert_eq!(made_request_id(&refused), made_request_id(&resent));
    assert_eq!(made_request_id(&above_last), made_request_id(&on_fresh));
    assert_ne!(made_request_id(&refused), made_request_id(&above_last));
    assert_eq!(on_fresh.stream, 1, "a new connection's first stream");
}

#[tokio::test]
async fn a_stream_refused_every_time_fails_unavailable() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let mut attempts = Vec::new();
        // The first try and four more (Pachyderm's Envoy retries 4 times), then no more.
        for _ in 0..5 {
            let attempt = peer.read_request().await;
            peer.reset(attempt.stream, REFUSED_STREAM).await;
            attempts.push(attempt);
        }
        // The next request on the connection is the client's next call, not a sixth try.
        let next = peer.read_request().await;
        peer.respond(next.stream).await;
        (attempts, next)
    });
    let body = message(64);
    let answer = send_h2c(addr, call("refused-always", full(body.clone()))).await;
    assert_unavailable(&answer, REFUSED);
    assert_answered(&send_h2c(addr, call("next", full(message(5)))).await);
    let (attempts, next) = script.await.unwrap();
    assert_eq!(attempts.len(), 5);
    for again in &attempts[1..] {
        assert_same_request(&attempts[0], again, "refused-always", &body);
    }
    assert_eq!(next.header("x-probe"), Some("next"));
}

#[tokio::test]
async fn an_http1_post_refused_every_time_is_502() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let first = peer.read_request().await;
        peer.reset(first.stream, REFUSED_STREAM).await;
        let mut again = None;
        for _ in 0..4 {
            let attempt = peer.read_request().await;
            peer.reset(attempt.stream, REFUSED_STREAM).await;
            again = Some(attempt);
        }
        (first, again.unwrap())
    });
    let body = b"form=1&twice=yes".to_vec();
    let request = Request::post("/pkg.Svc/upload")
        .header("host", "pachgate.test")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(body.clone()))
        .unwrap();
    let answer = send_http1(addr, request).await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(
        answer.body,
        "upstream connect error or disconnect/reset before headers\n"
    );
    let (first, again) = script.await.unwrap();
    assert_eq!(again.header(":path"), Some("/pkg.Svc/upload"));
    assert_eq!(first.headers, again.headers);
    assert_eq!(
        (first.body.as_slice(), again.body.as_slice()),
        (&body[..], &body[..])
    );
}

/// The upstream took the request whole, then reset it with `code`: it may have acted on
/// it, so pachgate must not send it again. The client's next call is the next request the
/// upstream sees.
async fn a_reset_after_acceptance_is_not_resent(code: u32, how: &str) {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(reset_first_then_answer(listener, code));
    let answer = send_h2c(addr, call("reset", full(message(100)))).await;
    assert_unavailable(&answer, how);
    assert_answered(&send_h2c(addr, call("next", full(message(5)))).await);
    let (first, next) = script.await.unwrap();
    assert_eq!(first.header("x-probe"), Some("reset"));
    assert_eq!(
        next.header("x-probe"),
        Some("next"),
        "the reset request was sent again"
    );
    assert_eq!(next.stream, first.stream + 2);
}

#[tokio::test]
async fn a_stream_cancelled_after_acceptance_is_not_resent() {
    a_reset_after_acceptance_is_not_resent(CANCEL, "stream reset: CANCEL").await;
}

#[tokio::test]
async fn a_stream_reset_with_internal_error_is_not_resent() {
    a_reset_after_acceptance_is_not_resent(INTERNAL_ERROR, "stream reset: INTERNAL_ERROR").await;
}

#[tokio::test]
async fn a_refused_body_over_the_resend_limit_is_not_resent() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(refuse_once_then_answer(listener));
    // 64 KiB is kept; this body is over it, streamed as a large upload is.
    let chunks: Vec<Vec<u8>> = (0..5).map(|_| message(16 * 1024)).collect();
    let body = chunks.concat();
    let answer = send_h2c(addr, call("large", streamed(chunks))).await;
    assert_unavailable(&answer, REFUSED);
    assert_answered(&send_h2c(addr, call("next", full(message(5)))).await);
    let (first, next) = script.await.unwrap();
    assert_eq!(first.body, body, "the first attempt carried the whole body");
    assert_eq!(next.header("x-probe"), Some("next"));
}

#[tokio::test]
async fn a_refused_body_just_within_the_limit_is_resent() {
    let (_gateway, addr, listener) = gateway_to_script().await;
    let script = tokio::spawn(refuse_once_then_answer(listener));
    let chunks: Vec<Vec<u8>> = (0..4).map(|_| message(16 * 1024)).collect();
    let body = chunks.concat();
    assert_eq!(body.len(), 64 * 1024);
    let answer = send_h2c(addr, call("at-limit", streamed(chunks))).await;
    assert_answered(&answer);
    let (first, again) = script.await.unwrap();
    assert_same_request(&first, &again, "at-limit", &body);
}
