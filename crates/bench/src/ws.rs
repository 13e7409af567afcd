//! Websocket echo: each connection sends a binary message and waits for it to come back.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::connect::Target;
use crate::driver::{collect, finish, spawn_progress, Labels, Plan, Recorder, Shared};
use crate::report::Report;
use crate::WsArgs;

pub async fn run(args: WsArgs) -> Result<Report, String> {
    let common = &args.common;
    let target = Target::new(common, &[b"http/1.1"], true)?;
    let url = common
        .target
        .replacen("https://", "wss://", 1)
        .replacen("http://", "ws://", 1);
    let mut sockets = Vec::with_capacity(common.connections);
    for _ in 0..common.connections {
        let stream = target
            .connect()
            .await
            .map_err(|e| format!("connect to {}: {e}", target.address))?;
        let config = WebSocketConfig::default()
            .max_message_size(None)
            .max_frame_size(None);
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .map_err(|e| format!("websocket handshake with {url}: {e}"))?;
        sockets.push(socket);
    }
    let shared = Shared::new(Plan::from(common));
    let progress = spawn_progress(shared.clone());
    let payload = bytes::Bytes::from(vec![b'w'; args.size]);
    let mut workers = Vec::new();
    for mut socket in sockets {
        let shared: Arc<Shared> = shared.clone();
        let payload = payload.clone();
        workers.push(tokio::spawn(async move {
            let mut recorder = Recorder::new(shared.clone());
            while let Some(started) = shared.next().await {
                if let Err(kind) = socket.send(Message::Binary(payload.clone())).await {
                    recorder.error(format!("send: {kind}"));
                    break;
                }
                match socket.next().await {
                    Some(Ok(Message::Binary(echo))) if echo.len() == payload.len() => {
                        recorder.ok(started, 1)
                    }
                    Some(Ok(other)) => {
                        recorder.error(format!("unexpected {} message", kind(&other)))
                    }
                    Some(Err(e)) => {
                        recorder.error(format!("receive: {e}"));
                        break;
                    }
                    None => {
                        recorder.error("closed by peer");
                        break;
                    }
                }
            }
            let _ = socket.close(None).await;
            recorder
        }));
    }
    let recorders = collect(&shared, progress, workers).await?;
    Ok(finish(
        &shared,
        recorders,
        Labels {
            workload: format!("websocket echo, {} B", args.size),
            target: common.target.clone(),
            connections: common.connections,
            streams: 1,
            units: "operations",
        },
    ))
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => "close",
        Message::Frame(_) => "raw frame",
    }
}
