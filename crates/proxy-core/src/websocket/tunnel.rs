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
            tokio::join!(
                pump(
                    client_read,
                    &mut server_write,
                    ticket.close_signal(),
                    going_away.masked(),
                    (&bytes_up, activity.as_deref()),
                ),
                pump(
                    &mut server_read,
                    client_write,
                    ticket.close_signal(),
                    going_away.unmasked(),
                    (&bytes_down, activity.as_deref()),
                ),
            )
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

/// How long a direction may take, after the drain deadline, to reach the end of the frame
/// it is in before it is cut without a close frame.
const FRAME_FINISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(1);

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
            if to.write_all(&close_frame).await.is_ok() {
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
        if to.write_all(&buffer[..forward]).await.is_err() {
            return end;
        }
        bytes.fetch_add(forward as u64, Ordering::Relaxed);
    }
}
