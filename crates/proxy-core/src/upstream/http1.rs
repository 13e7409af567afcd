//! HTTP/1.1 upstreams: keep-alive pools, plain or TLS (verified against the upstream's CA).
//! Requests go to an address's own target (`10.1.2.3:4000`), so the pool keeps connections
//! per address while the `Host` header keeps what the client asked for.

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as PooledClient;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use http::{Request, Response, Version};

use super::addresses::Address;
use super::{error_chain, set_uri, Attempt, Upstream, UpstreamTls};
use crate::body::ProxyBody;
use crate::error::ProxyError;

impl Upstream {
    /// One attempt over the address's keep-alive pool.
    pub(super) async fn send_http1(
        &self,
        address: &Address,
        mut request: Request<ProxyBody>,
        may_resend: bool,
    ) -> Result<Response<ProxyBody>, Attempt> {
        // A request without a body can be sent again if the connection fails; with a body it
        // cannot (the pool has taken it).
        let copy = (may_resend && http_body::Body::is_end_stream(request.body()))
            .then(|| copy_bodiless(&request));
        // The pool connects to the URI's authority (the address itself); the Host header
        // keeps what the client asked for.
        set_uri(
            &mut request,
            self.scheme(),
            address.target_authority.clone(),
        );
        *request.version_mut() = Version::HTTP_11;
        let pool = self.http1_pool.as_ref().expect("http1 upstream has a pool");
        let result = match pool {
            Http1Pool::Plain(pool) => pool.request(request).await,
            Http1Pool::Tls(pool) => pool.request(request).await,
        };
        result.map(|r| r.map(ProxyBody::Stream)).map_err(|e| {
            if is_tls_handshake_failure(&e) {
                Attempt {
                    error: ProxyError::UpstreamTls {
                        upstream: self.spec.name.clone(),
                        endpoint: address.target.clone(),
                        reason: error_chain(&e),
                    },
                    resend: None,
                    eject: true,
                    counted: false,
                    unsent: false,
                }
            } else if e.is_connect() {
                Attempt {
                    error: self.connect_error(address, &e),
                    resend: copy,
                    eject: true,
                    counted: false,
                    unsent: true,
                }
            } else {
                Attempt::failed(self.failed(&e))
            }
        })
    }
}

/// A bodiless request's head again, for a resend after a failed connection.
fn copy_bodiless(request: &Request<ProxyBody>) -> Request<ProxyBody> {
    let mut copy = Request::new(ProxyBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Keep-alive pools for HTTP/1.1 upstreams, plain or TLS.
pub(super) enum Http1Pool {
    Plain(PooledClient<HttpConnector, ProxyBody>),
    Tls(PooledClient<TlsHttpConnector, ProxyBody>),
}

/// Connects like the plain pool, then speaks TLS (verified against the upstream's CA).
#[derive(Clone)]
pub(super) struct TlsHttpConnector {
    pub(super) http: HttpConnector,
    pub(super) tls: UpstreamTls,
    /// `connect_timeout`, for the TLS handshake too (as h2 upstreams have it): an endpoint
    /// that accepts TCP and never answers the ClientHello must not hold a request forever.
    pub(super) handshake_timeout: std::time::Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for TlsHttpConnector {
    type Response = TlsConnection;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<TlsConnection, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.http.call(uri);
        let tls = self.tls.clone();
        let limit = self.handshake_timeout;
        Box::pin(async move {
            let tcp = connecting.await?.into_inner();
            let handshake = tls.connector.connect(tls.server_name.clone(), tcp);
            let stream = tokio::time::timeout(limit, handshake)
                .await
                .map_err(|_| format!("TLS handshake timed out after {limit:?}"))?
                .map_err(TlsHandshakeFailed)?;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

/// The TLS handshake with an HTTP/1.1 upstream failed (typically verification); typed so the
/// pool's error can be told apart from a refused TCP connection.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TlsHandshakeFailed(std::io::Error);

pub(super) fn is_tls_handshake_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<TlsHandshakeFailed>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// A pooled TLS connection, as hyper's legacy client wants it.
pub(super) struct TlsConnection(TokioIo<tokio_rustls::client::TlsStream<TcpStream>>);

impl hyper_util::client::legacy::connect::Connection for TlsConnection {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for TlsConnection {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for TlsConnection {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
