//! Sending on h2/h2c upstreams: one connection per worker and address (made on first use,
//! under a lock so a burst opens one), a request's stream opened and fed from the client's
//! task, and how each failure is classed for the retry loop (unsent, refused, failed).

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use http::uri::Authority;
use http::{Request, Response, Version};
use pachgate_h2_upstream::{self as h2_client, ExtraField, Failure};
use tokio::net::TcpStream;

use super::addresses::Address;
use super::resend::RequestPump;
use super::{
    error_chain, h2_slot, set_uri, Attempt, Upstream, UPSTREAM_CONNECTION_WINDOW,
    UPSTREAM_STREAM_WINDOW, UPSTREAM_WRITE_BATCH,
};
use crate::body::{ProxyBody, UpstreamBody};
use crate::error::ProxyError;
use crate::request_id::X_REQUEST_ID;

/// Why no h2 connection to an address could be had.
pub(super) struct NoConnection {
    pub(super) error: ProxyError,
    /// This request's own connect failed. Otherwise it waited behind another request's
    /// connect and took that one's failure, which that request counts against the address.
    pub(super) attempted: bool,
}

impl Upstream {
    pub(super) async fn send_h2(
        &self,
        address: &Address,
        mut request: Request<ProxyBody>,
        authority: &Option<Authority>,
        request_id: Option<&[u8; 32]>,
    ) -> Result<Response<ProxyBody>, Attempt> {
        let extra = request_id.map(|id| ExtraField::new(&X_REQUEST_ID, id));
        let authority = authority
            .clone()
            .unwrap_or_else(|| address.endpoint_authority.clone());
        set_uri(&mut request, self.scheme(), authority);
        *request.version_mut() = Version::HTTP_2;
        let mut connection = match self.h2_connection(address).await {
            Ok(connection) => connection,
            Err(NoConnection { error, attempted }) => {
                return Err(Attempt {
                    error,
                    resend: Some(request),
                    eject: true,
                    counted: !attempted,
                    unsent: true,
                })
            }
        };
        let (head, body) = request.into_parts();
        let end_of_stream = http_body::Body::is_end_stream(&body);
        let mut stream = match connection.open_with(&head, extra, end_of_stream).await {
            Ok(stream) => stream,
            // The connection failed before the upstream said a word (its SETTINGS never
            // came): the address is as dead for this request as for the one that opened
            // it. A strike (once per connection) and another address, not a second
            // connection to this one and another full wait.
            Err(Failure::Refused) if !connection.peer_spoke() => {
                connection.retire();
                return Err(Attempt {
                    error: self.h2_failed(address, Failure::Refused),
                    resend: Some(Request::from_parts(head, body)),
                    eject: true,
                    counted: !connection.first_to_report_failure(),
                    unsent: true,
                });
            }
            // The connection ended (closed, GOAWAY) before this request left: nothing
            // reached the upstream, so one more try on a fresh connection is safe even for
            // non-idempotent calls.
            Err(Failure::Refused) => {
                connection.retire();
                let fresh = match self.h2_connection(address).await {
                    Ok(connection) => connection,
                    Err(NoConnection { error, attempted }) => {
                        return Err(Attempt {
                            error,
                            resend: Some(Request::from_parts(head, body)),
                            eject: true,
                            counted: !attempted,
                            unsent: true,
                        })
                    }
                };
                // What follows (ejection, strikes) is judged on the connection the stream
                // is on.
                connection = fresh;
                match connection.open_with(&head, extra, end_of_stream).await {
                    Ok(stream) => stream,
                    Err(Failure::Refused) => {
                        let eject = !connection.peer_spoke();
                        return Err(Attempt {
                            error: self.h2_failed(address, Failure::Refused),
                            resend: Some(Request::from_parts(head, body)),
                            eject,
                            counted: eject && !connection.first_to_report_failure(),
                            unsent: true,
                        });
                    }
                    Err(e) => return Err(Attempt::failed(self.h2_failed(address, e))),
                }
            }
            Err(e) => return Err(Attempt::failed(self.h2_failed(address, e))),
        };
        // The request body is forwarded from this task while the response is awaited: a
        // unary call's message arrives with its headers or just after them, and needs no task
        // of its own. Only a body still going when the response headers arrive (a client or
        // bidi stream) gets one.
        let mut pump = (!end_of_stream).then(|| RequestPump::new(body, stream.clone_ref(), true));
        let mut pump_done = false;
        let response = poll_fn(|cx| {
            if let Some(running) = pump.as_mut().filter(|_| !pump_done) {
                pump_done = Pin::new(running).poll(cx).is_ready();
            }
            stream.poll_response(cx)
        })
        .await;
        match response {
            Ok(response) => {
                if let Some(mut pump) = pump.filter(|_| !pump_done) {
                    pump.taken = None; // answered: nothing will be sent again
                    tokio::spawn(pump);
                }
                Ok(response.map(|()| ProxyBody::Upstream(UpstreamBody::new(stream))))
            }
            // REFUSED_STREAM, a GOAWAY below this stream's id, or a connection that ended
            // before the upstream said a word: the upstream did not process it (RFC 9113
            // §8.7), so sending it again is safe whatever the method, if the whole body is
            // still at hand.
            Err(Failure::Refused) => {
                let again = match pump.as_mut() {
                    None => Some(ProxyBody::Empty),
                    Some(pump) => poll_fn(|cx| Poll::Ready(pump.take_resend(cx))).await,
                };
                let eject = !connection.peer_spoke();
                Err(Attempt {
                    error: self.h2_failed(address, Failure::Refused),
                    resend: again.map(|body| Request::from_parts(head, body)),
                    eject,
                    counted: eject && !connection.first_to_report_failure(),
                    unsent: false,
                })
            }
            // Every stream of a connection that fails gets this: only the first counts it.
            Err(e @ Failure::Connection(_)) => Err(Attempt {
                error: self.h2_failed(address, e),
                resend: None,
                eject: true,
                counted: !connection.first_to_report_failure(),
                unsent: false,
            }),
            Err(e) => Err(Attempt::failed(self.h2_failed(address, e))),
        }
    }

    /// This worker's live h2 connection to the address, or a new one.
    pub(super) async fn h2_connection(
        &self,
        address: &Address,
    ) -> Result<Arc<h2_client::Connection>, NoConnection> {
        if let Some(connection) = h2_slot(address).connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        // Boxed: connecting (TCP, TLS, the h2 start) is rare, and inline its state would be
        // part of every request's future.
        Box::pin(self.connect_h2(address)).await
    }

    /// Makes this worker's h2 connection to the address, unless a request that waited for
    /// the same slot already has, or already failed to: requests queued behind a connect
    /// that fails (an address that drops SYNs: each try takes `connect_timeout`) get its
    /// error at once, not one full timeout each in turn.
    pub(super) async fn connect_h2(
        &self,
        address: &Address,
    ) -> Result<Arc<h2_client::Connection>, NoConnection> {
        let slot = h2_slot(address);
        let queued = std::time::Instant::now();
        let _connecting = slot.connecting.lock().await;
        if let Some(connection) = slot.connection.load_full() {
            if connection.is_open() {
                return Ok(connection);
            }
        }
        if let Some(error) = slot.failed_since(queued) {
            return Err(NoConnection {
                error,
                attempted: false,
            });
        }
        let io = match self.connect_io(address).await {
            Ok(io) => io,
            Err(error) => {
                slot.note_failed(&error);
                return Err(NoConnection {
                    error,
                    attempted: true,
                });
            }
        };
        let (connection, driving) = h2_client::Connection::start(
            io,
            h2_client::Settings {
                stream_window: UPSTREAM_STREAM_WINDOW,
                connection_window: UPSTREAM_CONNECTION_WINDOW,
                write_batch: UPSTREAM_WRITE_BATCH,
                keepalive: self
                    .spec
                    .h2_keepalive_interval
                    .map(|every| (every, self.spec.h2_keepalive_timeout)),
                settings_timeout: self.spec.connect_timeout,
                header_limits: h2_client::HeaderLimits {
                    max_fields: self.spec.h2_max_response_headers,
                    max_bytes: self.spec.h2_max_response_header_bytes,
                },
            },
        );
        let name = self.spec.name.clone();
        let label = address.label.clone();
        tokio::spawn(async move {
            match driving.await {
                Err(error @ Failure::Violation(_)) => {
                    tracing::warn!(upstream = %name, endpoint = %label, %error, "upstream h2 connection ended");
                }
                Err(error) => {
                    tracing::debug!(upstream = %name, endpoint = %label, %error, "upstream h2 connection ended");
                }
                Ok(()) => {}
            }
        });
        let connection = Arc::new(connection);
        // An address that stopped being listed while this connected takes no new streams.
        if address.draining.load(Ordering::Relaxed) {
            connection.retire();
        } else {
            slot.connection.store(Some(connection.clone()));
        }
        Ok(connection)
    }

    pub(super) async fn connect_tcp(&self, address: &Address) -> Result<TcpStream, ProxyError> {
        let connecting = async {
            match address.socket {
                Some(socket) => TcpStream::connect(socket).await,
                None => TcpStream::connect(address.target.as_str()).await,
            }
        };
        let tcp = tokio::time::timeout(self.spec.connect_timeout, connecting)
            .await
            .map_err(|_| ProxyError::UpstreamConnect {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: format!("timed out after {:?}", self.spec.connect_timeout),
            })?
            .map_err(|e| self.connect_error(address, &e))?;
        tcp.set_nodelay(true)
            .map_err(|e| self.connect_error(address, &e))?;
        Ok(tcp)
    }

    /// TCP, then TLS when the upstream is configured for it. A certificate problem is
    /// reported as what it is: a TLS verification failure.
    pub(super) async fn connect_io(
        &self,
        address: &Address,
    ) -> Result<Box<dyn h2_client::Transport>, ProxyError> {
        let tcp = self.connect_tcp(address).await?;
        let Some(tls) = &self.spec.tls else {
            return Ok(Box::new(tcp));
        };
        let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
        match tokio::time::timeout(self.spec.connect_timeout, handshake).await {
            Ok(Ok(stream)) => Ok(Box::new(stream)),
            Ok(Err(e)) => Err(ProxyError::UpstreamTls {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: error_chain(&e),
            }),
            Err(_) => Err(ProxyError::UpstreamConnect {
                upstream: self.spec.name.clone(),
                endpoint: address.target.clone(),
                reason: "TLS handshake timed out".into(),
            }),
        }
    }
}
