//! Errors pachgate itself answers with, rendered in the caller's protocol in one place:
//! a gRPC caller gets a trailers-only response with `grpc-status`; an HTTP caller a status
//! code and a short text body. Never an HTML page to a gRPC client.

use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Response, StatusCode};
use thiserror::Error;

use crate::body::ProxyBody;

/// gRPC status codes pachgate produces (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            GrpcCode::DeadlineExceeded => "4",
            GrpcCode::PermissionDenied => "7",
            GrpcCode::ResourceExhausted => "8",
            GrpcCode::Unimplemented => "12",
            GrpcCode::Internal => "13",
            GrpcCode::Unavailable => "14",
            GrpcCode::Unauthenticated => "16",
        })
    }
}

#[derive(Debug, Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("upstream {upstream}: cannot connect to {endpoint}: {reason}")]
    UpstreamConnect {
        upstream: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {upstream}: TLS verification failed for {endpoint}: {reason}")]
    UpstreamTls {
        upstream: String,
        endpoint: String,
        reason: String,
    },
    #[error("upstream {upstream}: no response within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("upstream {upstream}: request failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("websocket upgrade is not possible: {0}")]
    UpgradeFailed(String),
}

impl ProxyError {
    fn grpc_code(&self) -> GrpcCode {
        match self {
            ProxyError::NoRoute => GrpcCode::Unimplemented,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamTls { .. } => GrpcCode::Unavailable,
            ProxyError::UpstreamTimeout { .. } => GrpcCode::DeadlineExceeded,
            ProxyError::BadRequest(_) => GrpcCode::Internal,
            ProxyError::UpgradeFailed(_) => GrpcCode::Unavailable,
        }
    }

    fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::UpstreamFailed { .. }
            | ProxyError::UpgradeFailed(_)
            | ProxyError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
        }
    }

    /// Short, fixed text for HTTP callers; details go to the log, not to the client.
    fn http_text(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route for this request\n",
            ProxyError::UpstreamConnect { .. } => "upstream unavailable\n",
            ProxyError::UpstreamFailed { .. } => "upstream failed\n",
            ProxyError::UpstreamTls { .. } => "upstream TLS verification failed\n",
            ProxyError::UpstreamTimeout { .. } => "upstream timed out\n",
            ProxyError::BadRequest(reason) => reason,
            ProxyError::UpgradeFailed(_) => "websocket upgrade failed\n",
        }
    }

    /// Renders the error for a gRPC caller (trailers-only) or an HTTP caller.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        if grpc {
            let message = match &self {
                ProxyError::NoRoute => "pachgate: no route for this method".to_string(),
                other => format!("pachgate: {other}"),
            };
            grpc_status_response(self.grpc_code(), &message)
        } else {
            let mut response = Response::new(ProxyBody::text(self.http_text()));
            *response.status_mut() = self.http_status();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            if matches!(self, ProxyError::BadRequest(_)) {
                // A malformed request may leave the connection's framing in doubt; end it.
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            response
        }
    }
}

/// A trailers-only gRPC response: HTTP 200, and `grpc-status` / `grpc-message` in the only
/// HEADERS frame, which carries END_STREAM because the body is empty.
pub fn grpc_status_response(code: GrpcCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Empty);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", code.header_value());
    if let Ok(value) = HeaderValue::from_str(&percent_encode_grpc_message(message)) {
        headers.insert("grpc-message", value);
    }
    response
}

/// `grpc-message` is percent-encoded: bytes outside 0x20..=0x7E and `%` itself are escaped.
pub fn percent_encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_with_status() {
        let cases = [
            (ProxyError::NoRoute, "12"),
            (
                ProxyError::UpstreamConnect {
                    upstream: "pachd".into(),
                    endpoint: "127.0.0.1:1".into(),
                    reason: "refused".into(),
                },
                "14",
            ),
            (
                ProxyError::UpstreamTimeout {
                    upstream: "pachd".into(),
                    timeout_ms: 5,
                },
                "4",
            ),
        ];
        for (error, status) in cases {
            let response = error.into_response(true);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["grpc-status"], status);
            assert_eq!(response.headers()[CONTENT_TYPE], "application/grpc");
            assert!(matches!(response.body(), ProxyBody::Empty));
        }
    }

    #[test]
    fn http_errors_have_status_and_text() {
        let cases = [
            (ProxyError::NoRoute, 404),
            (
                ProxyError::UpstreamConnect {
                    upstream: "c".into(),
                    endpoint: "e".into(),
                    reason: "r".into(),
                },
                503,
            ),
            (
                ProxyError::UpstreamFailed {
                    upstream: "c".into(),
                    reason: "r".into(),
                },
                502,
            ),
            (
                ProxyError::UpstreamTimeout {
                    upstream: "c".into(),
                    timeout_ms: 1,
                },
                504,
            ),
        ];
        for (error, status) in cases {
            let response = error.into_response(false);
            assert_eq!(response.status().as_u16(), status);
            assert!(response.headers()[CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
        }
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a b"), "a b");
        assert_eq!(percent_encode_grpc_message("50%"), "50%25");
        assert_eq!(percent_encode_grpc_message("é\n"), "%C3%A9%0A");
    }
}
