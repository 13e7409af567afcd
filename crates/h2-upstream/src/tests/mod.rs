//! A connection over an in-memory pipe: what the upstream's SETTINGS say reaches the caller.

use std::time::Duration;

use bytes::BytesMut;
use pachgate_h2_wire::{
    self as wire, SETTINGS, SETTINGS_ENABLE_CONNECT_PROTOCOL, SETTINGS_MAX_CONCURRENT_STREAMS,
};

use crate::{Connection, Failure, HeaderLimits, Settings};

/// What `connect_protocol_enabled` says once the upstream has sent these SETTINGS
/// frames (each a list of id/value pairs), over an in-memory pipe.
async fn connect_protocol_after(frames: &[&[(u16, u32)]]) -> Result<bool, Failure> {
    use tokio::io::AsyncWriteExt;
    let (ours, mut theirs) = tokio::io::duplex(64 * 1024);
    let settings = Settings {
        stream_window: 65_535,
        connection_window: 65_535,
        write_batch: 16,
        keepalive: None,
        settings_timeout: Duration::from_secs(5),
        header_limits: HeaderLimits::default(),
    };
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
