//! Websocket over HTTP/2 (RFC 8441 extended CONNECT) from the client, translated by pachgate
//! into an HTTP/1.1 Upgrade toward the stand-in console's echo. The client is hyper's h2
//! client (extended CONNECT) with tungstenite framing over rustls.

mod common;

use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::*;

#[tokio::test]
async fn websocket_over_h2_extended_connect_reaches_an_http1_backend() {
    let standins = standins();
    // The tunnel is a stream in flight: a quiet spell longer than the idle timeout must not
    // close its connection. (Were it not counted, the GOAWAY at 1 s would be followed by a
    // close at 2 s, the keepalive timeout, inside the 2.5 s spell below.)
    let proxy = pachgate_with_limits(
        &standins,
        "idle_timeout = \"1s\"\nh2_keepalive_timeout = \"1s\"",
        "",
    );

    let tls = common::client_tls(&proxy.ca(), b"h2");
    let tcp = tokio::net::TcpStream::connect(proxy.https()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);

    let mut request = Request::builder()
        .method(Method::CONNECT)
        .uri(format!("https://{}/ws", proxy.target()))
        .header("sec-websocket-version", "13")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    request
        .extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let mut response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK, "{response:?}");
    let upgraded = hyper::upgrade::on(&mut response).await.unwrap();

    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    ws.send(Message::text("after a quiet spell")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("after a quiet spell")
    );
    let binary = vec![7u8; 1 << 20];
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(binary));
    ws.send(Message::Ping("p".into())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::Pong("p".into()));
    ws.close(Some(CloseFrame {
        code: CloseCode::Library(4002),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    match ws.next().await {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Library(4002));
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("expected the echoed close frame, got {other:?}"),
    }
}
