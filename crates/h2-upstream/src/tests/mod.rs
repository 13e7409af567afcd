//! A connection over an in-memory pipe: what the upstream's SETTINGS say reaches the caller.

use std::time::Duration;

use bytes::BytesMut;
use pachgate_h2_wire::{
    self as wire, SETTINGS, SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_MAX_CONCURRENT_STREAMS,
};

use crate::{Connection, Failure, HeaderLimits, Settings};

/// Settings for a connection over an in-memory pipe: default windows, no keepalive.
fn pipe_settings() -> Settings {
    Settings {
        stream_window: 65_535,
        connection_window: 65_535,
        write_batch: 16,
        keepalive: None,
        settings_timeout: Duration::from_secs(5),
        header_limits: HeaderLimits::default(),
    }
}

/// What `connect_protocol_enabled` says once the upstream has sent these SETTINGS
/// frames (each a list of id/value pairs), over an in-memory pipe.
async fn connect_protocol_after(frames: &[&[(u16, u32)]]) -> Result<bool, Failure> {
    use tokio::io::AsyncWriteExt;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let settings = pipe_settings();
    let (connection, driving) = Connection::start(Box::new(ours), settings);
    tokio::spawn(driving);
    let mut bytes = BytesMut::new();
    for entries in frames {
        wire::put_frame_header(&mut bytes, entries.len() * 6, SETTINGS, 0, 0);
        for (id, value) in *entries {
            bytes.extend_from_slice(&id.to_be_bytes());
            bytes.extend_from_slice(&value.to_be_bytes());
        }
    }
    theirs.write_all(&bytes).await.unwrap();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        connection.connect_protocol_enabled(),
    )
    .await
    .expect("an answer once SETTINGS arrived");
    drop(theirs);
    answer
}

#[tokio::test]
async fn extended_connect_is_what_the_upstream_settings_say() {
    let enabled: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 1)];
    assert!(matches!(connect_protocol_after(&[enabled]).await, Ok(true)));
    let silent: &[(u16, u32)] = &[(SETTINGS_MAX_CONCURRENT_STREAMS, 100)];
    assert!(matches!(connect_protocol_after(&[silent]).await, Ok(false)));
    let off: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 0)];
    assert!(matches!(connect_protocol_after(&[off]).await, Ok(false)));
    // RFC 8441 §3: only 0 or 1, and never back to 0: the connection fails.
    let two: &[(u16, u32)] = &[(SETTINGS_ENABLE_CONNECT_PROTOCOL, 2)];
    assert!(matches!(
        connect_protocol_after(&[two]).await,
        Err(Failure::Connection(_) | Failure::Violation(_))
    ));
    assert!(matches!(
        connect_protocol_after(&[enabled, off]).await,
        Err(Failure::Connection(_) | Failure::Violation(_))
    ));
}

mod flow_control;

/// An upstream that stops reading does not get every new request's head queued for it:
/// past the output queue's limit a new stream waits for the queue to drain, as a request
/// body does.
#[tokio::test]
async fn new_streams_wait_while_the_output_queue_is_full() {
    use tokio::io::AsyncWriteExt;
    // The upstream's end takes 64 KiB and then reads nothing.
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let settings = pipe_settings();
    let (connection, driving) = Connection::start(Box::new(ours), settings);
    tokio::spawn(driving);
    let mut bytes = BytesMut::new();
    wire::put_frame_header(&mut bytes, 0, SETTINGS, 0, 0);
    theirs.write_all(&bytes).await.unwrap();
    connection.connect_protocol_enabled().await.unwrap();

    // Each head carries 16 KiB: 200 of them are over three times the queue's 1 MiB.
    let head = http::Request::post("http://upstream/pkg.API/Call")
        .header("x-big", "v".repeat(16 * 1024))
        .body(())
        .unwrap()
        .into_parts()
        .0;
    let mut opened = Vec::new();
    for _ in 0..200 {
        match tokio::time::timeout(Duration::from_millis(200), connection.open(&head, true)).await {
            Ok(stream) => opened.push(stream.unwrap()),
            Err(_) => break,
        }
    }
    let queued_at_most = crate::MAX_QUEUED_OUT + 64 * 1024 + 17 * 1024;
    assert!(
        (1..200).contains(&opened.len()) && opened.len() * 16 * 1024 <= queued_at_most,
        "{} heads of 16 KiB went out to an upstream that reads nothing",
        opened.len()
    );
    drop(theirs);
}
