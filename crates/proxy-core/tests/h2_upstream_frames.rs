//! Frame scripts against pachgate's upstream h2 client: a loopback TcpListener plays the
//! upstream, writing exactly the frames each test scripts (h2-wire's encoder), and the
//! assertions are on what `Upstream::send` — the client's caller — sees, and on the frames
//! pachgate answers with. Each hostile case is followed by a request that must still work:
//! on the same connection after a stream error, on a new one after a connection error.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pachgate_h2_wire::{self as wire, FRAME_HEADER};
use pachgate_proxy_core::body::ProxyBody;
use pachgate_proxy_core::error::ProxyError;
use pachgate_proxy_core::upstream::{Upstream, UpstreamProtocol, UpstreamSpec};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod scripted_h2;
use scripted_h2::*;

fn spec(address: SocketAddr) -> UpstreamSpec {
    UpstreamSpec {
        name: "scripted".into(),
        endpoints: vec![address.to_string()],
        protocol: UpstreamProtocol::H2c,
        connect_timeout: Duration::from_secs(5),
        response_timeout: Some(Duration::from_secs(10)),
        h2_keepalive_interval: None,
        h2_keepalive_timeout: Duration::from_secs(20),
        tls: None,
        h2_max_response_headers: 1_000,
        h2_max_response_header_bytes: 256 * 1024,
        ..UpstreamSpec::new("scripted", Vec::new(), UpstreamProtocol::H2c)
    }
}

fn request(body: Option<&'static [u8]>) -> Request<ProxyBody> {
    Request::post("/pkg.API/Call")
        .header("content-type", "application/grpc")
        .body(match body {
            Some(bytes) => ProxyBody::Full(Some(Bytes::from_static(bytes))),
            None => ProxyBody::Empty,
        })
        .unwrap()
}

async fn send(
    upstream: &Upstream,
    body: Option<&'static [u8]>,
) -> Result<http::Response<ProxyBody>, ProxyError> {
    let mut used = None;
    upstream.send(request(body), None, None, &mut used).await
}

/// What the caller (and through it the client) gets for a hostile response: the documented
/// 502 / gRPC 14 "upstream protocol error".
fn assert_protocol_error(result: Result<http::Response<ProxyBody>, ProxyError>, what: &str) {
    let error = match result {
        Ok(response) => panic!(
            "{what}: expected an upstream protocol error, got {}",
            response.status()
        ),
        Err(error) => error,
    };
    assert!(
        matches!(error, ProxyError::UpstreamProtocol { .. }),
        "{what}: expected UpstreamProtocol, got {error:?}"
    );
    assert_eq!(error.into_response(false).status(), StatusCode::BAD_GATEWAY);
}

fn assert_grpc_14(error: ProxyError) {
    let response = error.into_response(true);
    assert_eq!(response.headers()["grpc-status"], "14");
    assert!(response.headers()["grpc-message"]
        .to_str()
        .unwrap()
        .contains("upstream protocol error"));
}

/// An honest response, read whole: status and trailers.
async fn assert_ok(result: Result<http::Response<ProxyBody>, ProxyError>) {
    let response = result.expect("an honest response");
    assert_eq!(response.status(), StatusCode::OK);
    let collected = response.into_body().collect().await.expect("a whole body");
    assert_eq!(collected.trailers().unwrap()["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x02hi");
}

/// Runs `hostile` (the upstream's script for the first request), then checks a second
/// request: answered on the same connection (`same_connection`, a stream error) or on a
/// fresh one (a connection error).
async fn case<F, Fut>(hostile: F, same_connection: bool, what: &str)
where
    F: FnOnce(Peer, u32) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Peer> + Send,
{
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut peer = hostile(peer, stream).await;
        if !same_connection {
            peer = Peer::accept(&listener, &[]).await;
        }
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    let result = send(&upstream, None).await;
    match result {
        Err(error @ ProxyError::UpstreamProtocol { .. }) => assert_grpc_14(error),
        other => assert_protocol_error(other, what),
    }
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn a_header_count_bomb_is_a_stream_error_not_a_crash() {
    case(
        |mut peer, stream| async move {
            // 40,000 distinct names, empty values: 240 KB encoded, past HeaderMap's 32,768.
            let mut block = literals(&[(":status", "200")]);
            let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
            for i in 0..40_000usize {
                let name = [
                    alphabet[i % 36],
                    alphabet[(i / 36) % 36],
                    alphabet[(i / 1296) % 36],
                ];
                block.push(0x00);
                wire::put_string(&mut block, &name);
                wire::put_string(&mut block, b"");
            }
            assert!(block.len() < 256 * 1024);
            let mut out = BytesMut::new();
            wire::put_header_block(&mut out, 16_384, stream, &block, true);
            peer.write(&out).await;
            assert_eq!(
                peer.error_frame(wire::RST_STREAM).await,
                (stream, ENHANCE_YOUR_CALM)
            );
            peer
        },
        true,
        "header-count bomb",
    )
    .await;
}

/// One 4,000-byte field into the dynamic table, then 16,000 one-byte references to it: a
/// 20 KB block that decodes to 64 MB.
fn hpack_bomb() -> Vec<u8> {
    let mut block = literals(&[(":status", "200")]);
    block.push(0x40); // literal with incremental indexing, new name
    wire::put_string(&mut block, b"x-bomb");
    wire::put_string(&mut block, &[b'b'; 4000]);
    block.resize(block.len() + 16_000, 0x80 | 62);
    block
}

#[tokio::test]
async fn an_hpack_bomb_is_cut_off_and_the_table_stays_in_step() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &hpack_bomb(), true);
        peer.write(&out).await;
        assert_eq!(
            peer.error_frame(wire::RST_STREAM).await,
            (stream, ENHANCE_YOUR_CALM)
        );
        // The next response names the bomb's table entry once: decoded from the same
        // table, so the connection's HPACK state survived the reset.
        let next = peer.request().await;
        let mut head = ok_head();
        head.push(0x80 | 62);
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, next, &head, true);
        peer.write(&out).await;
        peer
    });
    match send(&upstream, None).await {
        Err(error @ ProxyError::UpstreamProtocol { .. }) => assert_grpc_14(error),
        other => assert_protocol_error(other, "HPACK bomb"),
    }
    let response = send(&upstream, None).await.expect("the next response");
    assert_eq!(response.headers()["x-bomb"].len(), 4000);
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn the_upstreams_configured_limits_apply_to_decoded_size_and_count() {
    let (listener, address) = listener().await;
    let mut spec = spec(address);
    spec.h2_max_response_header_bytes = 8 * 1024;
    spec.h2_max_response_headers = 10;
    let upstream = Upstream::new(spec).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        // Within the limits: 5,000 bytes of value.
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        let big = "v".repeat(5_000);
        let head = literals(&[(":status", "200"), ("x-big", &big)]);
        wire::put_header_block(&mut out, 16_384, stream, &head, true);
        peer.write(&out).await;
        // Past the size limit: 9,000 bytes.
        let stream = peer.request().await;
        let big = "v".repeat(9_000);
        let mut out = BytesMut::new();
        let head = literals(&[(":status", "200"), ("x-big", &big)]);
        wire::put_header_block(&mut out, 16_384, stream, &head, true);
        peer.write(&out).await;
        assert_eq!(
            peer.error_frame(wire::RST_STREAM).await,
            (stream, ENHANCE_YOUR_CALM)
        );
        // Past the count limit: 11 fields.
        let stream = peer.request().await;
        let fields: Vec<(String, String)> = (0..10)
            .map(|i| (format!("x-{i}"), "1".to_string()))
            .collect();
        let mut pairs: Vec<(&str, &str)> = vec![(":status", "200")];
        pairs.extend(fields.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &literals(&pairs), true);
        peer.write(&out).await;
        assert_eq!(
            peer.error_frame(wire::RST_STREAM).await,
            (stream, ENHANCE_YOUR_CALM)
        );
        peer
    });
    let response = send(&upstream, None).await.expect("within the limits");
    assert_eq!(response.headers()["x-big"].len(), 5_000);
    assert_protocol_error(send(&upstream, None).await, "decoded size over the limit");
    assert_protocol_error(send(&upstream, None).await, "field count over the limit");
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn a_trailer_bomb_fails_the_body_not_the_connection() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &ok_head(), false);
        out.extend_from_slice(&frame(wire::DATA, 0, stream, b"\0\0\0\0\x02hi"));
        let mut trailers = hpack_bomb();
        trailers.drain(..literals(&[(":status", "200")]).len());
        wire::put_header_block(&mut out, 16_384, stream, &trailers, true);
        peer.write(&out).await;
        assert_eq!(
            peer.error_frame(wire::RST_STREAM).await,
            (stream, ENHANCE_YOUR_CALM)
        );
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    let response = send(&upstream, None).await.expect("the head is fine");
    assert!(
        response.into_body().collect().await.is_err(),
        "the trailers are refused"
    );
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn a_table_size_update_past_our_settings_is_a_compression_error() {
    case(
        |mut peer, stream| async move {
            // Size update to 1 MiB (we advertise 4,096), then :status.
            let mut block = Vec::new();
            wire::put_integer(&mut block, 0x20, 5, 1 << 20);
            block.extend(literals(&[(":status", "200")]));
            let mut out = BytesMut::new();
            wire::put_header_block(&mut out, 16_384, stream, &block, true);
            peer.write(&out).await;
            assert_eq!(peer.error_frame(wire::GOAWAY).await.1, COMPRESSION_ERROR);
            peer
        },
        false,
        "table size update",
    )
    .await;
}

#[tokio::test]
async fn endless_continuation_ends_the_connection() {
    case(
        |mut peer, stream| async move {
            let mut out = BytesMut::new();
            out.extend_from_slice(&frame(wire::HEADERS, 0, stream, &ok_head()));
            for _ in 0..1_000 {
                out.extend_from_slice(&frame(wire::CONTINUATION, 0, stream, &[]));
            }
            // The client may close before reading all of it.
            let _ = peer.socket.write_all(&out).await;
            assert_eq!(peer.error_frame(wire::GOAWAY).await.1, ENHANCE_YOUR_CALM);
            peer
        },
        false,
        "endless CONTINUATION",
    )
    .await;
}

#[tokio::test]
async fn an_interleaved_continuation_is_a_protocol_error() {
    case(
        |mut peer, stream| async move {
            let mut out = BytesMut::new();
            out.extend_from_slice(&frame(wire::HEADERS, 0, stream, &ok_head()));
            out.extend_from_slice(&frame(wire::DATA, 0, stream, b"x"));
            out.extend_from_slice(&frame(wire::CONTINUATION, wire::END_HEADERS, stream, &[]));
            let _ = peer.socket.write_all(&out).await;
            assert_eq!(peer.error_frame(wire::GOAWAY).await.1, PROTOCOL_ERROR);
            peer
        },
        false,
        "interleaved CONTINUATION",
    )
    .await;
}

#[tokio::test]
async fn a_settings_window_change_that_overflows_a_stream_is_a_connection_error() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        // The stream's send window to 2^31-1 exactly (legal), then an initial window one
        // byte larger than the default: the stream's window would pass 2^31-1.
        let increment = 0x7fff_ffffu32 - 65_535;
        peer.write(&frame(
            wire::WINDOW_UPDATE,
            0,
            stream,
            &increment.to_be_bytes(),
        ))
        .await;
        let mut setting = Vec::new();
        setting.extend_from_slice(&wire::SETTINGS_INITIAL_WINDOW_SIZE.to_be_bytes());
        setting.extend_from_slice(&65_536u32.to_be_bytes());
        peer.write(&frame(wire::SETTINGS, 0, 0, &setting)).await;
        assert_eq!(peer.error_frame(wire::GOAWAY).await.1, FLOW_CONTROL_ERROR);
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    // The stream waits for its response; its send window is still counted.
    assert_protocol_error(send(&upstream, None).await, "SETTINGS overflow");
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn window_update_overflow_is_a_stream_error_on_a_stream_and_fatal_on_the_connection() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        peer.write(&frame(
            wire::WINDOW_UPDATE,
            0,
            stream,
            &0x7fff_ffffu32.to_be_bytes(),
        ))
        .await;
        assert_eq!(
            peer.error_frame(wire::RST_STREAM).await,
            (stream, FLOW_CONTROL_ERROR)
        );
        let stream = peer.request().await;
        peer.write(&frame(
            wire::WINDOW_UPDATE,
            0,
            0,
            &0x7fff_ffffu32.to_be_bytes(),
        ))
        .await;
        assert_eq!(peer.error_frame(wire::GOAWAY).await.1, FLOW_CONTROL_ERROR);
        let _ = stream;
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    assert_protocol_error(send(&upstream, None).await, "stream WINDOW_UPDATE overflow");
    assert_protocol_error(
        send(&upstream, None).await,
        "connection WINDOW_UPDATE overflow",
    );
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn rst_stream_mid_body_fails_that_body_and_the_connection_goes_on() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &ok_head(), false);
        out.extend_from_slice(&frame(wire::DATA, 0, stream, b"\0\0\0\0\x05part"));
        out.extend_from_slice(&frame(wire::RST_STREAM, 0, stream, &2u32.to_be_bytes()));
        peer.write(&out).await;
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    let response = send(&upstream, None).await.expect("the head arrived");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err());
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn goaway_mid_body_finishes_streams_below_it_and_fails_the_rest() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &ok_head(), false);
        out.extend_from_slice(&frame(wire::DATA, 0, stream, b"\0\0\0\0\x02hi"));
        let mut goaway = stream.to_be_bytes().to_vec();
        goaway.extend_from_slice(&NO_ERROR.to_be_bytes());
        out.extend_from_slice(&frame(wire::GOAWAY, 0, 0, &goaway));
        wire::put_header_block(
            &mut out,
            16_384,
            stream,
            &literals(&[("grpc-status", "0")]),
            true,
        );
        peer.write(&out).await;
        // The next request goes to a new connection; its GOAWAY mid-body names stream 0,
        // so the rest of its body is not coming: it fails (not as a refusal: it was
        // answered).
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let mut out = BytesMut::new();
        wire::put_header_block(&mut out, 16_384, stream, &ok_head(), false);
        out.extend_from_slice(&frame(wire::DATA, 0, stream, b"\0\0\0\0\x05part"));
        let mut goaway = 0u32.to_be_bytes().to_vec();
        goaway.extend_from_slice(&NO_ERROR.to_be_bytes());
        out.extend_from_slice(&frame(wire::GOAWAY, 0, 0, &goaway));
        peer.write(&out).await;
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    assert_ok(send(&upstream, None).await).await;
    let response = send(&upstream, None).await.expect("the head arrived");
    assert!(response.into_body().collect().await.is_err());
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn ping_and_settings_floods_are_answered_without_harm_to_the_stream() {
    let (listener, address) = listener().await;
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        let (reader, mut writer) = peer.socket.into_split();
        // Flood while reading the acknowledgements on the side.
        let counting = tokio::spawn(async move {
            let mut peer_reader = reader;
            let mut acks = 0u32;
            let mut header = [0u8; FRAME_HEADER];
            while acks < 20_000 {
                peer_reader.read_exact(&mut header).await.unwrap();
                let mut payload = vec![0u8; wire::frame_length(&header)];
                peer_reader.read_exact(&mut payload).await.unwrap();
                if (header[3] == wire::PING || header[3] == wire::SETTINGS)
                    && header[4] & wire::ACK != 0
                {
                    acks += 1;
                }
            }
            (peer_reader, acks)
        });
        let mut out = BytesMut::new();
        for i in 0..10_000u64 {
            out.extend_from_slice(&frame(wire::PING, 0, 0, &i.to_be_bytes()));
            out.extend_from_slice(&frame(wire::SETTINGS, 0, 0, &[]));
        }
        writer.write_all(&out).await.unwrap();
        let (reader, acks) = counting.await.unwrap();
        assert_eq!(acks, 20_000);
        let mut peer = Peer::new(reader.reunite(writer).unwrap());
        peer.respond(stream).await;
        peer
    });
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

#[tokio::test]
async fn a_ping_flood_the_upstream_does_not_read_ends_its_connection() {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = socket.local_addr().unwrap();
    let listener = socket.listen(16).unwrap();
    let upstream = Upstream::new(spec(address)).unwrap();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[]).await;
        let _stream = peer.request().await;
        // PINGs until pachgate stops reading them (it ended the connection): acks pile up
        // unread behind a full socket.
        let ping = frame(wire::PING, 0, 0, b"flooding");
        let mut batch = BytesMut::new();
        for _ in 0..1_000 {
            batch.extend_from_slice(&ping);
        }
        for _ in 0..2_000 {
            if peer.socket.write_all(&batch).await.is_err() {
                break;
            }
        }
        let mut peer = Peer::accept(&listener, &[]).await;
        let stream = peer.request().await;
        peer.respond(stream).await;
        peer
    });
    assert_protocol_error(send(&upstream, None).await, "unread PING flood");
    assert_ok(send(&upstream, None).await).await;
    let _peer = script.await.unwrap();
}

/// Accepts connections on `listener` and never says a word on them, counting them.
fn silent_connections(
    listener: tokio::net::TcpListener,
    accepted: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(socket);
        }
    });
}

fn quick_spec(address: SocketAddr) -> UpstreamSpec {
    UpstreamSpec {
        connect_timeout: Duration::from_millis(300),
        ..spec(address)
    }
}

/// Requests queued behind a connection whose upstream never speaks (a blackholed pod, a
/// port that is not h2) fail with it and go elsewhere: one connection, one strike, not a
/// second connection to the same dead address and a second full wait for each of them.
#[tokio::test]
async fn requests_queued_on_a_connection_that_never_spoke_do_not_reconnect_to_it() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (listener, address) = listener().await;
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    silent_connections(listener, accepted.clone());
    let upstream = Upstream::new(quick_spec(address)).unwrap();
    let (a, b, c) = tokio::join!(
        send(&upstream, None),
        send(&upstream, None),
        send(&upstream, None)
    );
    for result in [a, b, c] {
        assert!(result.is_err(), "a silent upstream answered");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "connections to the dead address"
    );
    assert_eq!(upstream.address_summaries()[0].ejections, 1);
    assert_eq!(upstream.counts().retries, 0);
}

/// A request refused by a graceful GOAWAY goes to a fresh connection; when that one never
/// speaks, the strike is judged on it (the connection the stream was on), not on the one
/// that sent the GOAWAY: the address is ejected once, and the request is not sent a third
/// time to it.
#[tokio::test]
async fn after_a_goaway_the_fresh_connection_decides_the_strike() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (listener, address) = listener().await;
    let upstream = Upstream::new(quick_spec(address)).unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let (go_away, going) = tokio::sync::oneshot::channel::<()>();
    let counted = accepted.clone();
    let script = tokio::spawn(async move {
        let mut peer = Peer::accept(&listener, &[(wire::SETTINGS_MAX_CONCURRENT_STREAMS, 1)]).await;
        counted.fetch_add(1, Ordering::SeqCst);
        let first = peer.request().await;
        let _ = going.await;
        peer.go_away(first, NO_ERROR).await;
        silent_connections(listener, counted);
        peer
    });
    let long = send(&upstream, None);
    tokio::pin!(long);
    // The first call holds the only stream slot; the second waits for it.
    let waiting = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = send(&upstream, None);
        tokio::pin!(second);
        let _ = tokio::time::timeout(Duration::from_millis(100), &mut second).await;
        let _ = go_away.send(());
        second.await
    };
    let second = tokio::select! {
        second = waiting => second,
        _ = &mut long => panic!("the first call was answered"),
    };
    assert!(second.is_err(), "a silent upstream answered");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "connections to the address"
    );
    assert_eq!(upstream.address_summaries()[0].ejections, 1);
    assert_eq!(upstream.counts().retries, 0);
    drop(script);
}
