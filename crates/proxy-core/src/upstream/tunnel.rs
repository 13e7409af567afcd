//! Websocket tunnels toward an upstream: a dedicated HTTP/1.1 connection for an Upgrade, or
//! an RFC 8441 extended CONNECT stream on an h2/h2c upstream's connection. A tunnel is not
//! replayed, so there are no retries here; a failed connection still ejects its address.

use std::future::poll_fn;
use std::sync::Arc;

use http::uri::Authority;
use http::{Response, Uri, Version};
use hyper::client::conn::http1 as hyper_http1;
use hyper_util::rt::TokioIo;
use pachgate_h2_upstream::{self as h2_client, StreamRef};

use super::addresses::{Address, Tried};
use super::h2::NoConnection;
use super::Upstream;
use crate::body::ProxyBody;
use crate::error::ProxyError;

impl Upstream {
    /// An address for a websocket tunnel (no retries: a tunnel is not replayed).
    pub(super) fn pick_for_tunnel(&self) -> Result<Arc<Address>, ProxyError> {
        self.pick(&Tried::default()).ok_or_else(|| {
            ProxyError::UpgradeFailed(format!("upstream {} has no address", self.spec.name))
        })
    }

    /// A dedicated HTTP/1.1 connection for one websocket upgrade; it leaves the pool's
    /// accounting because after the upgrade it is a byte tunnel, not an HTTP connection.
    /// On an `http1-tls` upstream it is TLS, made with the same client configuration (CA,
    /// server name, client certificate) as the upstream's pool. h2 and h2c upstreams never get
    /// an HTTP/1.1 handshake (on `h2` it would be cleartext to a TLS port): their websockets
    /// go through [`Upstream::open_websocket_h2`], and this refuses them as a safeguard.
    /// Also returns the endpoint's authority and the address's label (for the access log).
    pub async fn connect_for_upgrade(
        &self,
    ) -> Result<(hyper_http1::SendRequest<ProxyBody>, Authority, Arc<str>), ProxyError> {
        if self.spec.protocol.is_h2() {
            return Err(ProxyError::UpgradeFailed(format!(
                "upstream {} speaks {}: its websockets take extended CONNECT, not an \
                 HTTP/1.1 upgrade",
                self.spec.name,
                self.spec.protocol.name()
            )));
        }
        let address = self.pick_for_tunnel()?;
        // TCP, then TLS for http1-tls (connect_io reports a certificate problem as such).
        let io = match self.connect_io(&address).await {
            Ok(io) => io,
            Err(error) => {
                address.note_connection_failure();
                return Err(error);
            }
        };
        let (sender, connection) = hyper_http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.connect_error(&address, &e))?;
        tokio::spawn(async move {
            let _ = connection.with_upgrades().await;
        });
        Ok((
            sender,
            address.endpoint_authority.clone(),
            address.label.clone(),
        ))
    }

    /// Opens an RFC 8441 extended CONNECT stream (`:protocol websocket`) on an h2 or h2c
    /// upstream, on the same connections its requests use, and waits for the response head
    /// (within `response_timeout`). `head` carries the path and the websocket headers to
    /// forward; `authority` becomes `:authority`. Where the upstream's SETTINGS do not enable
    /// extended CONNECT no stream is opened: the caller gets a 502 that says why. Also
    /// returns the address's label (for the access log).
    pub(crate) async fn open_websocket_h2(
        &self,
        mut head: http::request::Parts,
        authority: Option<Authority>,
    ) -> Result<(StreamRef, Response<()>, Arc<str>), ProxyError> {
        let address = self.pick_for_tunnel()?;
        let authority = authority.unwrap_or_else(|| address.endpoint_authority.clone());
        let path = head
            .uri
            .path_and_query()
            .map_or("/", |pq| pq.as_str())
            .to_string();
        head.uri = Uri::builder()
            .scheme(self.scheme())
            .authority(authority)
            .path_and_query(path)
            .build()
            .map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
        head.method = http::Method::CONNECT;
        head.version = Version::HTTP_2;
        head.extensions = http::Extensions::new();
        head.extensions
            .insert(h2_client::ConnectProtocol("websocket"));
        let open = async {
            let connection = match self.h2_connection(&address).await {
                Ok(connection) => connection,
                Err(NoConnection { error, attempted }) => {
                    if attempted {
                        address.note_connection_failure();
                    }
                    return Err(error);
                }
            };
            let enabled = connection
                .connect_protocol_enabled()
                .await
                .map_err(|e| self.h2_failed(&address, e))?;
            if !enabled {
                return Err(ProxyError::UpgradeFailed(format!(
                    "upstream {} ({}) does not support websockets over HTTP/2: its SETTINGS \
                     do not enable extended CONNECT (RFC 8441)",
                    self.spec.name,
                    self.spec.protocol.name()
                )));
            }
            let mut stream = connection
                .open(&head, false)
                .await
                .map_err(|e| self.h2_failed(&address, e))?;
            let response = poll_fn(|cx| stream.poll_response(cx))
                .await
                .map_err(|e| self.h2_failed(&address, e))?;
            Ok((stream, response))
        };
        let (stream, response) = self.within_response_timeout(std::pin::pin!(open)).await?;
        Ok((stream, response, address.label.clone()))
    }
}
