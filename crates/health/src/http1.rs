//! An HTTP/1.1 GET of a path with hyper's client connection; 2xx passes.

use bytes::Bytes;
use http::header::{CONNECTION, HOST, USER_AGENT};
use http::{Method, Request};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{MAX_BODY_BYTES, MAX_HEADER_BYTES};

pub(crate) async fn check<IO>(io: IO, authority: &str, path: &str) -> Result<String, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    if !path.starts_with('/') {
        return Err("invalid check path".into());
    }
    let request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header(HOST, authority)
        .header(USER_AGENT, "pachgate-health")
        .header(CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|_| "invalid check path or authority".to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(MAX_HEADER_BYTES as usize)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP/1.1 handshake failed: {e}"))?;
    let call = async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP/1.1 request failed: {e}"))?;
        let status = response.status();
        // Read (a bounded part of) the body so a server that sends a head and then fails
        // is seen failing; a long healthy answer is not held against it.
        let mut body = response.into_body();
        let mut read = 0usize;
        while read <= MAX_BODY_BYTES {
            match body.frame().await {
                None => break,
                Some(Ok(frame)) => read += frame.data_ref().map_or(0, |d| d.len()),
                Some(Err(e)) => return Err(format!("HTTP/1.1 body failed: {e}")),
            }
        }
        if status.is_success() {
            Ok(format!("HTTP {}", status.as_u16()))
        } else {
            Err(format!("HTTP {}", status.as_u16()))
        }
    };
    // The connection runs beside the call; dropping the guard (the call ended, timed out or
    // was cancelled) closes it. Its errors reach the call through `send_request`.
    let _connection = crate::AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    call.await
}
