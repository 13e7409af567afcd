//! Errors pachgate itself answers with, what each means in gRPC and HTTP terms, and the
//! response shapes refusals are written in (trailers-only gRPC, grpc-gateway JSON, short
//! text). Which shape a caller gets is decided in one place, `rejection`. Never an HTML
//! page to a gRPC client.

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Response, StatusCode};
use thiserror::Error;

use crate::body::ProxyBody;

/// gRPC status codes pachgate produces (grpc/doc/statuscodes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum GrpcCode {
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

impl GrpcCode {
    /// The HTTP status grpc-gateway answers for this code (its `HTTPStatusFromCode`).
    fn gateway_http_status(self) -> StatusCode {
        match self {
            GrpcCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
            GrpcCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            GrpcCode::PermissionDenied => StatusCode::FORBIDDEN,
            GrpcCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            GrpcCode::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            GrpcCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            GrpcCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            GrpcCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// grpc-go's name for the code, as its error strings spell it (`rpc error: code = …`).
    pub(crate) fn go_name(self) -> &'static str {
        match self {
            GrpcCode::Unknown => "Unknown",
            GrpcCode::DeadlineExceeded => "DeadlineExceeded",
            GrpcCode::PermissionDenied => "PermissionDenied",
            GrpcCode::ResourceExhausted => "ResourceExhausted",
            GrpcCode::Unimplemented => "Unimplemented",
            GrpcCode::Internal => "Internal",
            GrpcCode::Unavailable => "Unavailable",
            GrpcCode::Unauthenticated => "Unauthenticated",
        }
    }

    fn header_value(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            GrpcCode::Unknown => "2",
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

#[derive(Debug, Clone, Error)]
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
    /// The upstream has `limit` requests waiting for their response head already: new ones
    /// are refused at once rather than queued without bound.
    #[error("upstream {upstream}: {limit} requests pending already; refused")]
    UpstreamOverloaded { upstream: String, limit: usize },
    #[error("upstream {upstream}: no response within {timeout_ms} ms")]
    UpstreamTimeout { upstream: String, timeout_ms: u128 },
    #[error("upstream {upstream}: request failed: {reason}")]
    UpstreamFailed { upstream: String, reason: String },
    /// The upstream broke HTTP/2 or pachgate's limits on what it sends (header count or
    /// size, flow control, endless CONTINUATION): its stream was reset or its connection
    /// ended. Logged with the endpoint; the client hears only "upstream protocol error".
    #[error("upstream {upstream} at {endpoint}: upstream protocol error: {detail}")]
    UpstreamProtocol {
        upstream: String,
        endpoint: String,
        detail: String,
    },
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("websocket upgrade is not possible: {0}")]
    UpgradeFailed(String),
    /// A CONNECT that is not an RFC 8441 websocket: pachgate is no forward proxy, and an
    /// upstream would get a CONNECT it never asked for.
    #[error("CONNECT other than a websocket")]
    ConnectNotSupported,
}

impl ProxyError {
    pub(crate) fn grpc_code(&self) -> GrpcCode {
        match self {
            ProxyError::NoRoute => GrpcCode::Unimplemented,
            ProxyError::UpstreamConnect { .. }
            | ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpstreamOverloaded { .. }
            | ProxyError::UpstreamTls { .. } => GrpcCode::Unavailable,
            ProxyError::UpstreamTimeout { .. } => GrpcCode::DeadlineExceeded,
            ProxyError::BadRequest(_) => GrpcCode::Internal,
            ProxyError::UpgradeFailed(_) => GrpcCode::Unavailable,
            ProxyError::ConnectNotSupported => GrpcCode::Unimplemented,
        }
    }

    pub(crate) fn http_status(&self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::UpstreamConnect { .. } | ProxyError::UpstreamOverloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::UpstreamFailed { .. }
            | ProxyError::UpstreamProtocol { .. }
            | ProxyError::UpgradeFailed(_)
            | ProxyError::UpstreamTls { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::ConnectNotSupported => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    /// Short, fixed text for HTTP callers; details go to the log, not to the client. The
    /// upstream failures use the words Pachyderm's console looks for ("upstream connect
    /// error", "no healthy upstream", what its own Envoy proxy says) to show its "cannot
    /// reach the cluster" screen instead of a blank page.
    pub(crate) fn http_text(&self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no route for this request\n",
            ProxyError::UpstreamConnect { .. } => {
                "upstream connect error: no healthy upstream (pachgate cannot connect to it)\n"
            }
            ProxyError::UpstreamFailed { .. } => {
                "upstream connect error or disconnect/reset before headers\n"
            }
            ProxyError::UpstreamTls { .. } => {
                "upstream connect error: upstream TLS verification failed\n"
            }
            ProxyError::UpstreamProtocol { .. } => {
                "upstream connect error or disconnect/reset before headers: upstream protocol error\n"
            }
            ProxyError::UpstreamOverloaded { .. } => {
                "upstream connect error or disconnect/reset before headers: overflow (too many pending requests)\n"
            }
            ProxyError::UpstreamTimeout { .. } => "upstream request timeout\n",
            ProxyError::BadRequest(reason) => reason,
            ProxyError::UpgradeFailed(_) => "websocket upgrade failed\n",
            ProxyError::ConnectNotSupported => {
                "CONNECT is served here for websockets only (RFC 8441)\n"
            }
        }
    }

    /// Renders the error for a gRPC caller (trailers-only) or an HTTP caller, as
    /// `rejection` writes every refusal.
    pub fn into_response(self, grpc: bool) -> Response<ProxyBody> {
        crate::rejection::render_error(self, grpc)
    }
}

/// A short text answer. `Content-Type` is exactly `text/plain`: Pachyderm's console compares
/// the whole header and reads nothing else as text (`text/plain; charset=utf-8` is not).
pub fn text_response(status: StatusCode, text: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::Full(Some(text.into())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// grpc-gateway's error: `{"code": N, "message": "…", "details": []}` with the HTTP status
/// grpc-gateway uses for the code and `Content-Type` exactly `application/json` (the console
/// parses nothing else as JSON).
/// A server-streaming method's error is wrapped as `{"error": {…}}` and ends with a newline
/// (`streaming`), as grpc-gateway's stream forwarder writes it.
pub fn gateway_error_response(
    code: GrpcCode,
    message: &str,
    streaming: bool,
) -> Response<ProxyBody> {
    let mut body = String::with_capacity(message.len() + 64);
    if streaming {
        body.push_str("{\"error\":");
    }
    body.push_str("{\"code\":");
    body.push_str(code.header_value().to_str().unwrap_or("2"));
    body.push_str(",\"message\":");
    push_json_string(&mut body, message);
    body.push_str(",\"details\":[]}");
    if streaming {
        body.push_str("}\n");
    }
    let mut response = Response::new(ProxyBody::Full(Some(Bytes::from(body))));
    *response.status_mut() = code.gateway_http_status();
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn push_json_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
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
            assert_eq!(response.headers()[CONTENT_TYPE], "text/plain");
        }
    }

    fn body_text(response: Response<ProxyBody>) -> String {
        match response.into_body() {
            ProxyBody::Full(Some(bytes)) => String::from_utf8(bytes.to_vec()).unwrap(),
            _ => panic!("expected a full body"),
        }
    }

    #[test]
    fn upstream_failures_use_the_words_the_console_looks_for() {
        for error in [
            ProxyError::UpstreamConnect {
                upstream: "console".into(),
                endpoint: "e".into(),
                reason: "refused".into(),
            },
            ProxyError::UpstreamFailed {
                upstream: "pachd-http".into(),
                reason: "reset".into(),
            },
            ProxyError::UpstreamTls {
                upstream: "console".into(),
                endpoint: "e".into(),
                reason: "bad".into(),
            },
        ] {
            let text = body_text(error.into_response(false));
            assert!(text.contains("upstream connect error"), "{text}");
        }
    }

    #[test]
    fn gateway_errors_are_grpc_gateway_json() {
        let response = gateway_error_response(GrpcCode::Unauthenticated, "say \"hi\"\n\\", false);
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body: serde_json::Value = serde_json::from_str(&body_text(response)).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"code": 16, "message": "say \"hi\"\n\\", "details": []})
        );
        for (code, status) in [
            (GrpcCode::Internal, 500),
            (GrpcCode::Unimplemented, 501),
            (GrpcCode::PermissionDenied, 403),
            (GrpcCode::Unavailable, 503),
            (GrpcCode::ResourceExhausted, 429),
            (GrpcCode::DeadlineExceeded, 504),
        ] {
            assert_eq!(
                gateway_error_response(code, "m", false).status().as_u16(),
                status
            );
        }
    }

    #[test]
    fn streaming_gateway_errors_are_wrapped() {
        let response = gateway_error_response(GrpcCode::Internal, "gone", true);
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let text = body_text(response);
        assert!(text.ends_with('\n'), "{text:?}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": 13, "message": "gone", "details": []}})
        );
    }

    #[test]
    fn upstream_protocol_errors_are_502_and_unavailable_without_the_detail() {
        let error = || ProxyError::UpstreamProtocol {
            upstream: "pachd".into(),
            endpoint: "10.0.0.7:1650".into(),
            detail: "response header fields over the count limit".into(),
        };
        // The log line (the error's Display) names the endpoint and says what happened.
        let logged = error().to_string();
        assert!(logged.contains("10.0.0.7:1650") && logged.contains("count limit"));
        let response = error().into_response(true);
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-status"], "14");
        let message = response.headers()["grpc-message"].to_str().unwrap();
        assert!(message.contains("upstream protocol error"), "{message}");
        assert!(!message.contains("10.0.0.7") && !message.contains("limit"));
        let response = error().into_response(false);
        assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        let text = body_text(response);
        assert!(text.contains("upstream protocol error"), "{text}");
        assert!(text.contains("upstream connect error"), "{text}");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_grpc_message("a b"), "a b");
        assert_eq!(percent_encode_grpc_message("50%"), "50%25");
        assert_eq!(percent_encode_grpc_message("é\n"), "%C3%A9%0A");
    }
}
