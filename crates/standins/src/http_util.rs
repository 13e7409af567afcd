//! Small HTTP helpers shared by the pachd HTTP, dex and OIDC stand-ins: response building in
//! the shapes Go's net/http produces, and Go's query parsing.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed_unsync()
}

pub fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Go's `http.Error`: text/plain with nosniff, the message and a newline.
pub fn go_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = response(status, "text/plain; charset=utf-8", format!("{message}\n"));
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Go's ServeMux answer for a path nothing handles.
pub fn go_not_found() -> Response<Body> {
    go_error(StatusCode::NOT_FOUND, "404 page not found")
}

/// The request as the handlers see it: head and the whole (bounded) body.
pub type Request = http::Request<Bytes>;

/// Biggest request body the stand-ins read.
const MAX_BODY: usize = 4 << 20;

/// Serves HTTP/1.1 on `listener` forever, handing each request (body read) to `handler`.
pub async fn serve<S, H, F>(listener: TcpListener, state: Arc<S>, handler: H) -> std::io::Result<()>
where
    S: Send + Sync + 'static,
    H: Fn(Arc<S>, Request) -> F + Copy + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request: http::Request<Incoming>| {
                let state = state.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let limited = http_body_util::Limited::new(body, MAX_BODY);
                    let bytes = match limited.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(_) => {
                            return Ok::<_, Infallible>(go_error(
                                StatusCode::BAD_REQUEST,
                                "request body unreadable or too large",
                            ))
                        }
                    };
                    Ok(handler(state, http::Request::from_parts(parts, bytes)).await)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; a bad escape is an error.
pub fn query_unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let text = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(text, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Go's `req.URL.Query().Get(key)`: the first value of `key` among the pairs that parse
/// (pairs with a bad escape or a `;` are dropped, as Go's `url.ParseQuery` does).
/// `None` when no pair has that key; the value may be empty.
pub fn go_query_get(query: Option<&str>, key: &str) -> Option<Vec<u8>> {
    for pair in query?.split('&') {
        if pair.is_empty() || pair.contains(';') {
            continue;
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let Some(k) = query_unescape(k) else {
            continue;
        };
        if k != key.as_bytes() {
            continue;
        }
        let Some(v) = query_unescape(v) else {
            continue;
        };
        return Some(v);
    }
    None
}

/// `%`-encodes everything but unreserved characters (for query values we write).
pub fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing_follows_go() {
        let q = Some("a=1&authn-token=x%2By+z&authn-token=second");
        assert_eq!(go_query_get(q, "authn-token").unwrap(), b"x+y z");
        assert_eq!(
            go_query_get(Some("authn%2Dtoken=k"), "authn-token").unwrap(),
            b"k"
        );
        // A bad escape drops the pair; the next one is the first value.
        assert_eq!(
            go_query_get(Some("authn-token=%zz&authn-token=ok"), "authn-token").unwrap(),
            b"ok"
        );
        assert_eq!(go_query_get(Some("authn-token=a;b"), "authn-token"), None);
        assert_eq!(
            go_query_get(Some("authn-token"), "authn-token").unwrap(),
            b""
        );
        assert_eq!(go_query_get(None, "authn-token"), None);
    }
}
