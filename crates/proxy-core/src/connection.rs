//! Connections, apart from the requests they carry: accepting on a listener, the PROXY
//! header and the listener-wide allow-list, the TLS handshake and ALPN, the HTTP server's
//! options, and a connection's lifetime (idle timeout, drain, a lingering close after an
//! error, see `closing`). Each request is handed to the pipeline (`pipeline::respond`)
//! with only a [`Caller`]: the pipeline never sees a socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::closing::{close_cleanly, Reclaimable};
use crate::connection_limit::{default_max_connections, ClientSocket, Slot};
use crate::framing_guard::{FramingGuard, FramingVerdicts};
use crate::gateway::{Gateway, WorkGuard, WorkKind};
use crate::pipeline::Caller;
use crate::proxy_protocol::read_header as read_proxy_header;
use crate::rejection::redirect_to_https;
use crate::snapshot::PlainMode;

/// Protocol limits, each set on purpose (hyper's defaults are not an ingress's defaults).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised to clients.
    pub h2_max_concurrent_streams: u32,
    /// Largest request header list accepted; larger ones are answered 431. HTTP/1: hyper's
    /// read buffer. HTTP/2: checked per request, see [`H2_HEADER_LIST_SLACK`].
    pub max_header_list_size: u32,
    /// Requests with an underscore in a header name are answered 400 (as Pachyderm's own
    /// proxy, Envoy with `headers_with_underscores_action: REJECT_REQUEST`, does).
    pub reject_underscore_headers: bool,
    /// Streams a client may open and reset before they are accepted (CVE-2023-44487).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams pachgate may reset for protocol errors before it closes the connection
    /// (CVE-2024-27316-style floods).
    pub h2_max_local_error_reset_streams: usize,
    /// PING interval toward idle clients; `None` disables pings.
    pub h2_keepalive_interval: Option<Duration>,
    /// How long a PING may go unanswered before the connection is closed.
    pub h2_keepalive_timeout: Duration,
    /// Time allowed for an HTTP/1 client to send a complete request head (slowloris).
    pub h1_header_read_timeout: Duration,
    /// Time allowed for a TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A client connection with no request in flight for this long is closed (h2: GOAWAY).
    /// `None`: never.
    pub idle_timeout: Option<Duration>,
    /// On SIGTERM, how long in-flight requests and streams may take to finish.
    pub drain_timeout: Duration,
    /// On shutdown, how long to go on serving (and accepting) after `/readyz` starts
    /// failing, before the drain: the time a load balancer or Kubernetes' endpoints take to
    /// stop sending new connections.
    pub drain_delay: Duration,
    /// h2 flow-control window per stream, in bytes.
    pub h2_stream_window: u32,
    /// h2 flow-control window per connection, in bytes. h2 also sizes its flood guard on
    /// small DATA frames from this (half of it): a 64 KiB window lets ~130 small frames be
    /// buffered before the connection is closed with ENHANCE_YOUR_CALM, which legitimate
    /// gRPC streams of small messages hit as soon as the upstream is a little slower.
    pub h2_connection_window: u32,
    /// Client connections open at once across the https and http listeners; past it new
    /// ones are closed as soon as accepted (see `connection_limit`). 0: no cap.
    pub max_connections: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            h2_max_concurrent_streams: 256,
            max_header_list_size: 64 * 1024,
            reject_underscore_headers: false,
            h2_max_pending_accept_reset_streams: 100,
            h2_max_local_error_reset_streams: 1024,
            h2_keepalive_interval: Some(Duration::from_secs(60)),
            h2_keepalive_timeout: Duration::from_secs(20),
            h1_header_read_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
            idle_timeout: Some(Duration::from_secs(180)),
            drain_timeout: Duration::from_secs(30),
            drain_delay: Duration::ZERO,
            h2_stream_window: 2 * 1024 * 1024,
            h2_connection_window: 8 * 1024 * 1024,
            max_connections: default_max_connections(),
        }
    }
}

/// Over HTTP/2 the h2 library is given this many times `max_header_list_size`, and the limit
/// itself is checked per request, answered 431 on the stream. At the library's own limit
/// the stream would be refused instead (a 431 the library sends is followed by a stream
/// reset), and clients also read the advertised SETTINGS_MAX_HEADER_LIST_SIZE: curl
/// refuses to send a larger header list and retries it on fresh connections, never seeing
/// a status. The library still stops keeping decoded headers at this size (HPACK bombs),
/// and ends the connection at four times it.
pub const H2_HEADER_LIST_SLACK: u32 = 4;

pub(crate) fn server_builder(limits: &ServerLimits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.h1_header_read_timeout)
        .max_buf_size((limits.max_header_list_size as usize).max(8192));
    builder
        .http2()
        // Without a timer hyper's h2 keep-alive silently does nothing.
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(
            limits
                .max_header_list_size
                .saturating_mul(H2_HEADER_LIST_SLACK),
        )
        .max_pending_accept_reset_streams(limits.h2_max_pending_accept_reset_streams)
        .max_local_error_reset_streams(limits.h2_max_local_error_reset_streams)
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        .initial_stream_window_size(limits.h2_stream_window)
        .initial_connection_window_size(limits.h2_connection_window)
        .max_send_buf_size(H2_SEND_BUFFER_PER_STREAM)
        .enable_connect_protocol();
    builder
}

/// Response bytes h2 holds per stream for a client that does not take them (hyper's
/// default is 400 KiB), besides the one chunk hyper hands it whole (one upstream read). A
/// client that opens every stream it may and reads none pins this, plus those chunks,
/// times `h2_max_concurrent_streams`: 16 MiB and the chunks at the defaults, where hyper's
/// default and 1,024 streams made it 400 MiB and the chunks, and two such connections
/// would have the pod's 512 MiB limit end the process. A stream that is read needs no more
/// than this to keep its connection busy: the buffer refills as frames are written.
pub const H2_SEND_BUFFER_PER_STREAM: usize = 64 * 1024;

async fn accept(listener: &TcpListener) -> Option<(TcpStream, SocketAddr)> {
    match listener.accept().await {
        Ok((tcp, peer)) => {
            // Small h2 frames (gRPC headers, pings, window updates) must not wait for Nagle.
            let _ = tcp.set_nodelay(true);
            Some((tcp, peer))
        }
        Err(e) => {
            // Typically EMFILE: back off instead of spinning, and keep serving.
            tracing::warn!(error = %e, "accept failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// A TLS handshake failure as a metric label: what an operator would act on.
fn handshake_failure_reason(error: &std::io::Error) -> &'static str {
    use rustls::Error as Tls;
    match error.get_ref().and_then(|e| e.downcast_ref::<Tls>()) {
        Some(Tls::InvalidMessage(_) | Tls::InappropriateHandshakeMessage { .. }) => "not_tls",
        Some(Tls::InappropriateMessage { .. }) => "not_tls",
        Some(Tls::PeerIncompatible(_)) => "incompatible_client",
        Some(Tls::AlertReceived(_)) => "alert_from_client",
        Some(Tls::NoCertificatesPresented) => "client_certificate_missing",
        Some(Tls::InvalidCertificate(_)) => "client_certificate_invalid",
        Some(Tls::PeerMisbehaved(_)) => "client_misbehaved",
        Some(_) => "other",
        None => match error.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => "client_closed",
            _ => "other",
        },
    }
}

impl Gateway {
    /// A place under `limits.max_connections` for a connection just accepted; `None`: it
    /// is to be closed at once (counted, and logged at most once a second).
    fn connection_slot(&self, peer: SocketAddr) -> Option<Slot> {
        let slot = self.slots.take();
        if slot.is_none() {
            self.metrics.connection_refused("max_connections");
            if let Some(refused) = self.slots.refused() {
                tracing::warn!(
                    refused_since_last_warning = refused,
                    open = self.slots.open(),
                    max_connections = self.slots.max(),
                    last = %peer,
                    "limits.max_connections reached: new connections are closed as soon as accepted"
                );
            }
        }
        slot
    }

    /// Learns the client address (the PROXY header, when the listener expects one and the
    /// sender may send it) and applies the listener-wide allow-list. `None`: close it.
    async fn admit_connection(
        &self,
        mut tcp: TcpStream,
        peer: SocketAddr,
        slot: Slot,
    ) -> Option<(ClientSocket, SocketAddr)> {
        let snapshot = self.snapshot.load_full();
        let mut client = peer;
        if snapshot.clients.proxy_protocol {
            let trusted = &snapshot.clients.trusted_proxies;
            if !trusted.allows(peer.ip()) {
                tracing::warn!(target: "pachgate::audit", peer = %peer, reason = "untrusted_proxy", "PROXY header sender is not in trusted_proxies; connection refused");
                self.metrics.connection_refused("untrusted_proxy");
                return None;
            }
            match read_proxy_header(&mut tcp, self.limits.tls_handshake_timeout).await {
                Ok(Some(address)) => client = address,
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(target: "pachgate::audit", peer = %peer, %error, reason = "bad_proxy_header", "connection refused");
                    self.metrics.connection_refused("bad_proxy_header");
                    return None;
                }
            }
        }
        if !snapshot.clients.listener_allow.allows(client.ip()) {
            tracing::warn!(target: "pachgate::audit", client = %client, reason = "address_not_allowed", "connection refused");
            self.metrics.connection_refused("address_not_allowed");
            return None;
        }
        let socket = ClientSocket::new(tcp, slot, self.limits.idle_timeout);
        Some((socket, client))
    }

    /// Accepts TLS connections until the drain (or until the task is aborted, when a reload
    /// moves the listener). `tls` may be swapped at any time; each handshake uses the
    /// configuration current when it starts.
    pub async fn serve_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<ArcSwap<ServerConfig>>,
    ) {
        self.accept_until_drain(listener, move |gateway, tcp, peer| {
            let acceptor = TlsAcceptor::from(tls.load_full());
            async move {
                let handshake = tokio::time::timeout(
                    gateway.limits.tls_handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await;
                let stream = match handshake {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        let reason = handshake_failure_reason(&e);
                        gateway.metrics.tls_handshake_failed(reason);
                        tracing::debug!(client = %peer, error = %e, reason, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        gateway.metrics.tls_handshake_failed("timeout");
                        tracing::debug!(client = %peer, "TLS handshake timed out");
                        return;
                    }
                };
                let builder = match stream.get_ref().1.alpn_protocol() {
                    Some(b"h2") => {
                        let conn = Caller::new(peer, true, None);
                        return gateway
                            .serve_connection(&gateway.h2_only, stream, conn, true)
                            .await;
                    }
                    Some(b"http/1.1") => &gateway.h1_only,
                    _ => &gateway.auto,
                };
                let verdicts = Arc::new(FramingVerdicts::default());
                let conn = Caller::new(peer, true, Some(verdicts.clone()));
                let guarded = FramingGuard::new(stream, verdicts);
                gateway
                    .serve_connection(builder, guarded, conn, false)
                    .await;
            }
        })
        .await
    }

    /// Accepts plaintext connections: HTTP/1.1 and h2c, or redirects to https (as the
    /// current configuration says).
    pub async fn serve_plain(self: Arc<Self>, listener: TcpListener) {
        self.accept_until_drain(listener, |gateway, tcp, peer| async move {
            let mode = gateway.snapshot.load().plain_mode;
            match mode {
                PlainMode::Serve => {
                    let verdicts = Arc::new(FramingVerdicts::default());
                    let conn = Caller::new(peer, false, Some(verdicts.clone()));
                    let guarded = FramingGuard::new(tcp, verdicts);
                    gateway
                        .serve_connection(&gateway.auto, guarded, conn, false)
                        .await
                }
                PlainMode::Redirect { https_port } => {
                    let service = service_fn(move |request: http::Request<Incoming>| async move {
                        Ok::<_, Infallible>(redirect_to_https(&request, https_port))
                    });
                    let serving = gateway.auto.serve_connection(TokioIo::new(tcp), service);
                    // A connection that only ever gets redirects has no reason to stay
                    // longer than an idle one would, and a silent client (no bytes, so
                    // not even HTTP/1's head timeout starts) must not stay forever.
                    let limit = gateway
                        .limits
                        .idle_timeout
                        .unwrap_or(gateway.limits.h1_header_read_timeout);
                    if tokio::time::timeout(limit, serving).await.is_err() {
                        gateway.metrics.idle_connection_closed();
                    }
                }
            }
        })
        .await
    }

    /// Accepts until the drain starts (then returns, dropping the listener, so new
    /// connections are refused). A connection over the cap is closed at once, before any
    /// byte and without a task; the others are admitted (PROXY header, allow-list) in a task
    /// of their own and handed to `serve`.
    async fn accept_until_drain<F, Fut>(self: Arc<Self>, listener: TcpListener, serve: F)
    where
        F: Fn(Arc<Self>, ClientSocket, SocketAddr) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let serve = Arc::new(serve);
        let mut draining = self.draining.subscribe();
        loop {
            let accepted = tokio::select! {
                accepted = accept(&listener) => accepted,
                _ = draining.wait_for(|draining| *draining) => return,
            };
            let Some((tcp, peer)) = accepted else {
                continue;
            };
            let Some(slot) = self.connection_slot(peer) else {
                continue;
            };
            let gateway = self.clone();
            let serve = serve.clone();
            tokio::spawn(async move {
                let Some((socket, peer)) = gateway.admit_connection(tcp, peer, slot).await else {
                    return;
                };
                serve(gateway, socket, peer).await;
            });
        }
    }

    /// Serves one client connection. `h2_preface`: the client chose h2 by ALPN, so its first
    /// bytes must be the HTTP/2 preface (a bad one is answered GOAWAY, see `closing`).
    async fn serve_connection<I>(
        self: &Arc<Self>,
        builder: &auto::Builder<TokioExecutor>,
        io: I,
        conn: Arc<Caller>,
        h2_preface: bool,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let _open = WorkGuard::new(self.work.clone(), WorkKind::Connection);
        let gateway = self.clone();
        // Every open connection's task holds this function's state, and every byte counts:
        // the task is 7,040 bytes, and 64 bytes more cost 1 KiB of RSS per idle connection
        // (measured; likely mimalloc placing the 128-byte-aligned task in its next size
        // class). So one pointer is kept here, and the address and activity are read
        // through it.
        let info = conn.clone();
        let service = service_fn(move |request: http::Request<Incoming>| {
            let gateway = gateway.clone();
            let conn = conn.clone();
            // Boxed: the request's future is ~4 KB, and hyper and tokio move the future they
            // hold several times per request (into the stream task, through its stages).
            // With the release build unwinding, those moves are real copies (~4k
            // instructions per gRPC call, measured with callgrind); a box moves a pointer.
            Box::pin(async move { Ok::<_, Infallible>(gateway.respond(request, &conn).await) })
        });
        // hyper drops the I/O when it is done with the connection; it comes back here then
        // (unless a websocket upgrade took it), for a close that lets the last answer arrive.
        let (io, mut returned) = Reclaimable::new(io, h2_preface);
        let result = {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(connection);
            let mut draining = self.draining.subscribe();
            let mut finishing = Finishing::No;
            // Looked at when the connection may have become idle; a request since moves it on.
            // Boxed, for the same reason.
            // Without an idle timeout, the first request is still waited for only as long as
            // an HTTP/1 head (hyper's own head timer starts at the first byte, and an h2
            // client may never send its preface).
            let first_request_within = self.limits.h1_header_read_timeout;
            let mut idle_check = Some(Box::pin(tokio::time::sleep(
                self.limits.idle_timeout.unwrap_or(first_request_within),
            )));
            loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    // Timed answers this client stopped taking (never ready).
                    () = std::future::poll_fn(|cx| info.stalls.poll_sweep(cx)) => {}
                    _ = draining.wait_for(|draining| *draining), if finishing != Finishing::Drain => {
                        connection.as_mut().graceful_shutdown();
                        finishing = Finishing::Drain;
                    }
                    _ = idle_tick(&mut idle_check), if finishing != Finishing::Drain => {
                        let timeout = match self.limits.idle_timeout {
                            Some(timeout) => timeout,
                            // Off: a connection that has not begun a request is closed as an
                            // idle one would be (GOAWAY first); once served, it is kept.
                            None if info.activity.never_served() || finishing == Finishing::Idle => {
                                first_request_within
                            }
                            None => {
                                idle_check = None;
                                continue;
                            }
                        };
                        let now = tokio::time::Instant::now();
                        let deadline = info.activity.idle_deadline(timeout);
                        if finishing == Finishing::Idle && deadline.is_some() {
                            // The GOAWAY went unanswered and still nothing is in flight (a
                            // client that never finished the h2 handshake, or stopped reading):
                            // close without it. A stream that slipped in as the GOAWAY left
                            // keeps the connection until it ends.
                            tracing::debug!(client = %info.peer, "idle connection did not close after GOAWAY");
                            break Ok(());
                        }
                        let next = match deadline.map(tokio::time::Instant::from_std) {
                            _ if finishing == Finishing::Idle => now + self.limits.h2_keepalive_timeout,
                            Some(deadline) if deadline <= now => {
                                // h2: GOAWAY, and the connection ends once the client has seen
                                // it; HTTP/1: closed now, between requests.
                                tracing::debug!(client = %info.peer, "closing idle connection");
                                self.metrics.idle_connection_closed();
                                connection.as_mut().graceful_shutdown();
                                finishing = Finishing::Idle;
                                now + self.limits.h2_keepalive_timeout
                            }
                            Some(deadline) => deadline,
                            None => now + timeout,
                        };
                        if let Some(check) = idle_check.as_mut() {
                            check.as_mut().reset(next);
                        }
                    }
                }
            }
        };
        if let Err(e) = &result {
            tracing::debug!(client = %info.peer, error = %e, "connection ended with an error");
        }
        // The connection is gone, so hyper has dropped the I/O (unless a websocket took it).
        // Ended by an error (a refused head, a bad preface, a protocol error): the client may
        // still be sending. A clean end needs nothing more.
        if let Ok(returned) = returned.try_recv() {
            if result.is_err() || returned.bad_preface {
                Box::pin(close_cleanly(*returned)).await;
            }
        }
    }
}

/// The idle check's timer; never, when the idle timeout is off. A plain poll function: its
/// future is one pointer in the connection task's state.
fn idle_tick(
    check: &mut Option<Pin<Box<tokio::time::Sleep>>>,
) -> impl std::future::Future<Output = ()> + '_ {
    std::future::poll_fn(move |cx| match check {
        Some(sleep) => std::future::Future::poll(sleep.as_mut(), cx),
        None => std::task::Poll::Pending,
    })
}

/// Why a connection was told to finish, if it was.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finishing {
    No,
    /// Shutdown: the drain bounds how long it may take.
    Drain,
    /// `idle_timeout`: closed outright if the client does not end it soon.
    Idle,
}
