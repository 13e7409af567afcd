//! The running tunnel: joins the client's upgraded connection to the upstream side, copies
//! both directions under the route's timeouts, and at the drain deadline ends each direction
//! with a close frame at a frame boundary.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::frames::{FrameTracker, GoingAway};
use crate::exchange::Exchange;
use crate::gateway::TunnelTicket;
use crate::route_timeouts::{bounded, Activity, RouteTimeouts};

/// Joins the client's upgraded connection to the upstream side (an upgraded HTTP/1.1
/// connection, or an h2 extended CONNECT stream) once both are ready.
pub(super) fn spawn_tunnel<U, S>(
    name: String,
    client_upgrade: hyper::upgrade::OnUpgrade,
    upstream: U,
    ticket: TunnelTicket,
    mut exchange: Option<Box<Exchange>>,
    timeouts: RouteTimeouts,
) where
    U: Future<Output = Result<S, hyper::Error>> + Send + 'static,
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    tokio::spawn(async move {
        let (client, server) = match tokio::try_join!(client_upgrade, upstream) {
            Ok(both) => both,
            Err(e) => {
                tracing::debug!(upstream = %name, error = %e, "websocket upgrade did not complete");
                return;
            }
        };
        let _open = ticket.open();
        let (client_read, client_write) = tokio::io::split(TokioIo::new(client));
        let (mut server_read, mut server_write) = tokio::io::split(server);
        let going_away = GoingAway::new();
        // The route's timeouts, from the switch on: `idle_timeout` for a tunnel quiet both
        // ways, `timeout` for its whole life. Cut at expiry: both sockets are closed.
        let mut timer = timeouts.start();
        let activity = timer.as_ref().map(|t| t.activity().clone());
        let (bytes_up, bytes_down) = (AtomicU64::new(0), AtomicU64::new(0));
        let pumps = async {
            let up = pump(
                client_read,
                &mut server_write,
                ticket.close_signal(),
                going_away.masked(),
                (&bytes_up, activity.as_deref()),
            );
            let down = pump(
                &mut server_read,
                client_write,
                ticket.close_signal(),
                going_away.unmasked(),
                (&bytes_down, activity.as_deref()),
            );
            tokio::pin!(up, down);
            // Once one direction has ended (and the other side was told, by its write side
            // shut), the other gets `HALF_CLOSED_LIMIT` to end too: a peer that vanished
            // without a reset would otherwise hold the tunnel, its sockets and its place
            // in the drain for good.
            tokio::select! {
                up_end = &mut up => (up_end, lingering(&mut down).await),
                down_end = &mut down => (lingering(&mut up).await, down_end),
            }
        };
        let closed_for_drain = match bounded(pumps, timer.as_mut()).await {
            Ok((up, down)) => up.closed_for_drain || down.closed_for_drain,
            Err(expired) => {
                tracing::info!(upstream = %name, "websocket tunnel closed: {}", expired.describe());
                false
            }
        };
        if closed_for_drain {
            // The backend answers our close frame and ends its side; waiting for that (a
            // moment at most) keeps the tunnel counted open until the close has left, which
            // on an h2 stream means until the connection's task wrote it, not just queued it.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(FRAME_FINISH_LIMIT, async {
                while matches!(server_read.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        }
        let (up, down) = (bytes_up.into_inner(), bytes_down.into_inner());
        tracing::debug!(
            upstream = %name,
            bytes_up = up,
            bytes_down = down,
            closed_for_drain,
            "websocket tunnel closed"
        );
        if let Some(exchange) = exchange.as_mut() {
            exchange.set_tunnel_bytes(up, down);
        }
    });
}

struct PumpEnd {
    closed_for_drain: bool,
}

/// A direction's end, or none after `HALF_CLOSED_LIMIT`.
async fn lingering(direction: impl Future<Output = PumpEnd>) -> PumpEnd {
    tokio::time::timeout(HALF_CLOSED_LIMIT, direction)
        .await
        .unwrap_or(PumpEnd {
            closed_for_drain: false,
        })
}

/// How long a direction may take, after the drain deadline, to reach the end of the frame
/// it is in before it is cut without a close frame.
const FRAME_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long a direction may go on after the other has ended: the closing handshake's
/// answer takes a moment, not more.
const HALF_CLOSED_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Copies one direction of a tunnel. On EOF it half-closes the other side (as
/// `copy_bidirectional` does); when the gateway says close, it finishes the frame in flight,
/// writes `close_frame`, and shuts the direction down. Bytes forwarded are counted in
/// `bytes` (kept outside, so a tunnel cut by its route's timeout still knows them), and
/// noted in `activity` when the route has timeouts.
async fn pump<R, W>(
    mut from: R,
    mut to: W,
    mut close_now: tokio::sync::watch::Receiver<bool>,
    close_frame: Vec<u8>,
    (bytes, activity): (&AtomicU64, Option<&Activity>),
) -> PumpEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = vec![0u8; 16 * 1024];
    let mut frames = FrameTracker::default();
    let mut end = PumpEnd {
        closed_for_drain: false,
    };
    let mut stopping = false;
    loop {
        if stopping && frames.at_boundary() {
            // Nothing may follow a Close frame (RFC 6455 §5.5.1): when one already went
            // through, the closing handshake is under way and this direction only ends.
            if !frames.close_seen && to.write_all(&close_frame).await.is_ok() {
                end.closed_for_drain = true;
            }
            let _ = to.shutdown().await;
            return end;
        }
        let read = if stopping {
            match tokio::time::timeout(FRAME_FINISH_LIMIT, from.read(&mut buffer)).await {
                Ok(read) => read,
                Err(_) => {
                    let _ = to.shutdown().await;
                    return end;
                }
            }
        } else {
            tokio::select! {
                read = from.read(&mut buffer) => read,
                _ = close_now.wait_for(|close| *close) => {
                    stopping = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(0) | Err(_) => {
                // The source ended (an h2 upstream may reset its stream as soon as it has
                // answered our close, its reply discarded): at the drain deadline the other
                // side still gets its close frame, unless one already went through.
                let draining = stopping || *close_now.borrow();
                if draining
                    && frames.at_boundary()
                    && !frames.close_seen
                    && to.write_all(&close_frame).await.is_ok()
                {
                    end.closed_for_drain = true;
                }
                let _ = to.shutdown().await;
                return end;
            }
            Ok(n) => n,
        };
        let mut forward = 0;
        while forward < n {
            forward += frames.step(&buffer[forward..n]);
            if stopping && frames.at_boundary() {
                break; // what follows would come after our close frame
            }
        }
        if let Some(activity) = activity {
            activity.note();
        }
        // Flushed, not just written: a TLS stream's write returns once rustls holds the
        // bytes, and an h2 stream's once its window let part of them out; the rest goes only
        // on a later write or a flush, and when the source now goes quiet there is no later
        // write. The flush also holds the next read back until the destination takes this.
        if to.write_all(&buffer[..forward]).await.is_err() || to.flush().await.is_err() {
            return end;
        }
        bytes.fetch_add(forward as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server and a client TLS stream joined by a link that holds 4 KiB: a slow client,
    /// whose socket is full after every few records.
    async fn tls_over_a_narrow_link() -> (
        tokio_rustls::server::TlsStream<tokio::io::DuplexStream>,
        tokio_rustls::client::TlsStream<tokio::io::DuplexStream>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![der.clone()],
                PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let (server_io, client_io) = tokio::io::duplex(4096);
        let accepting = tokio_rustls::TlsAcceptor::from(Arc::new(server)).accept(server_io);
        let connecting = tokio_rustls::TlsConnector::from(Arc::new(client))
            .connect(ServerName::try_from("localhost").unwrap(), client_io);
        let (server, client) = tokio::join!(accepting, connecting);
        (server.unwrap(), client.unwrap())
    }

    /// A write to a TLS stream can return once rustls holds the bytes, before the socket
    /// has taken them. A burst's last records, held that way when the source goes quiet,
    /// must still reach the client as its link drains, not wait for the next message.
    #[tokio::test]
    async fn the_end_of_a_burst_reaches_a_slow_tls_client() {
        let (server, mut client) = tls_over_a_narrow_link().await;
        let payload = vec![7u8; 200 * 1024];
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&(payload.len() as u64).to_be_bytes());
        frame.extend_from_slice(&payload);
        // The upstream sends one message and stays open.
        let (mut upstream, source) = tokio::io::duplex(1 << 20);
        upstream.write_all(&frame).await.unwrap();
        let (_close, close_now) = tokio::sync::watch::channel(false);
        let forwarded = AtomicU64::new(0);
        let pumping = pump(source, server, close_now, Vec::new(), (&forwarded, None));
        let reading = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut received = vec![0u8; frame.len()];
            let mut got = 0;
            let _ = tokio::time::timeout(Duration::from_secs(3), async {
                while got < received.len() {
                    match client.read(&mut received[got..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
            })
            .await;
            (got, received)
        };
        tokio::select! {
            _ = pumping => panic!("the pump ended while its source was open"),
            (got, received) = reading => {
                assert_eq!(
                    got,
                    frame.len(),
                    "the client got {got} of {} bytes; the pump forwarded {}",
                    frame.len(),
                    forwarded.load(Ordering::Relaxed)
                );
                assert!(received == frame);
            }
        }
    }

    /// RFC 6455 §5.5.1: nothing follows a Close frame. When one already went through this
    /// direction (the upstream began the closing handshake) and the drain deadline comes,
    /// the direction ends without a second Close (our 1001) after it.
    #[tokio::test]
    async fn the_drain_sends_no_close_after_one_went_through() {
        let (mut upstream, source) = tokio::io::duplex(1 << 16);
        let (destination, mut client) = tokio::io::duplex(1 << 16);
        let upstream_close = [0x88, 0x02, 0x03, 0xe8]; // Close, 1000
        upstream.write_all(&upstream_close).await.unwrap();
        let (close, close_now) = tokio::sync::watch::channel(false);
        let forwarded = AtomicU64::new(0);
        let going_away = GoingAway::new().unmasked();
        let pumping = pump(
            source,
            destination,
            close_now,
            going_away,
            (&forwarded, None),
        );
        let draining = async {
            while forwarded.load(Ordering::Relaxed) < upstream_close.len() as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            close.send_replace(true);
            std::future::pending::<()>().await
        };
        let ended = tokio::time::timeout(Duration::from_secs(3), async {
            tokio::select! {
                ended = pumping => ended,
                () = draining => unreachable!(),
            }
        })
        .await
        .expect("the direction ends at the drain deadline");
        assert!(!ended.closed_for_drain, "no close frame of ours was sent");
        let mut received = Vec::new();
        client.read_to_end(&mut received).await.unwrap();
        assert_eq!(
            received, upstream_close,
            "only the upstream's Close reached the client"
        );
    }
}
