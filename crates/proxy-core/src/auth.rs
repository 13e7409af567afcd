//! The auth gate in the request pipeline: asks pachd's WhoAmI over the upstream's pooled
//! connection, and renders the gate's denials in the caller's protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use pachgate_auth_gate::{DenyReason, WhoAmI, WhoAmIAnswer};

use crate::body::ProxyBody;
use crate::error::{grpc_status_response, GrpcCode};
use crate::upstream::Upstream;

/// How long a WhoAmI call may take before the token counts as unverifiable.
const WHO_AM_I_TIMEOUT: Duration = Duration::from_secs(5);

/// WhoAmI over an h2c upstream (pachd's gRPC port).
pub struct UpstreamWhoAmI {
    pub upstream: Arc<Upstream>,
    /// `/auth_v2.API/WhoAmI` (2.x) or `/auth.API/WhoAmI` (1.x).
    pub method: http::uri::PathAndQuery,
}

impl WhoAmI for UpstreamWhoAmI {
    fn who_am_i(&self, token: &str) -> Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + '_>> {
        let token = HeaderValue::from_str(token);
        Box::pin(async move {
            let Ok(mut token) = token else {
                return WhoAmIAnswer::Unauthenticated("malformed authentication token".into());
            };
            token.set_sensitive(true);
            match tokio::time::timeout(WHO_AM_I_TIMEOUT, self.call(token)).await {
                Ok(answer) => answer,
                Err(_) => WhoAmIAnswer::Unavailable("pachd did not answer WhoAmI in time".into()),
            }
        })
    }
}

impl UpstreamWhoAmI {
    async fn call(&self, token: HeaderValue) -> WhoAmIAnswer {
        // An empty WhoAmIRequest: one uncompressed, zero-length gRPC message.
        let body = ProxyBody::Full(Some(Bytes::from_static(&[0, 0, 0, 0, 0])));
        let mut request = Request::post(http::Uri::from(self.method.clone()))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(body)
            .expect("static request parts");
        request.headers_mut().insert("authn-token", token);
        let response = match self.upstream.send(request, None, &mut None).await {
            Ok(response) => response,
            Err(e) => return WhoAmIAnswer::Unavailable(e.to_string()),
        };
        if response.status() != StatusCode::OK {
            return WhoAmIAnswer::Unavailable(format!(
                "WhoAmI answered HTTP {}",
                response.status()
            ));
        }
        let head_status = grpc_status(response.headers());
        let collected = match response.into_body().collect().await {
            Ok(collected) => collected,
            Err(e) => return WhoAmIAnswer::Unavailable(format!("WhoAmI response: {e}")),
        };
        let trailers = collected.trailers().cloned();
        let (code, message) = head_status
            .or_else(|| trailers.as_ref().and_then(grpc_status))
            .unwrap_or((-1, "no grpc-status".into()));
        match code {
            0 => parse_who_am_i(&collected.to_bytes())
                .unwrap_or_else(|| WhoAmIAnswer::Unavailable("unreadable WhoAmI response".into())),
            16 => WhoAmIAnswer::Unauthenticated(message),
            12 => WhoAmIAnswer::AuthNotActive,
            _ => WhoAmIAnswer::Unavailable(format!("WhoAmI failed: status {code} {message}")),
        }
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<(i32, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    let message = headers
        .get("grpc-message")
        .map(|m| percent_decode(m.as_bytes()))
        .unwrap_or_default();
    Some((code, message))
}

fn percent_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let Ok(byte) = u8::from_str_radix(&String::from_utf8_lossy(&input[i + 1..i + 3]), 16)
            {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `WhoAmIResponse { string username = 1; google.protobuf.Timestamp expiration = 2; }` from
/// one length-prefixed gRPC message.
fn parse_who_am_i(frame: &[u8]) -> Option<WhoAmIAnswer> {
    if frame.len() < 5 || frame[0] != 0 {
        return None;
    }
    let length = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let message = frame.get(5..5 + length)?;
    let mut username = String::new();
    let mut expiration = None;
    let mut fields = ProtoFields(message);
    while let Some((tag, value)) = fields.next_field()? {
        match (tag, value) {
            (1, Field::Bytes(bytes)) => username = String::from_utf8_lossy(bytes).into_owned(),
            (2, Field::Bytes(timestamp)) => {
                let mut seconds = 0i64;
                let mut inner = ProtoFields(timestamp);
                while let Some((tag, value)) = inner.next_field()? {
                    if let (1, Field::Varint(v)) = (tag, value) {
                        seconds = v as i64;
                    }
                }
                if seconds > 0 {
                    expiration = Some(UNIX_EPOCH + Duration::from_secs(seconds as u64));
                }
            }
            _ => {}
        }
    }
    Some(WhoAmIAnswer::Valid {
        username,
        expiration: expiration.filter(|e: &SystemTime| *e > UNIX_EPOCH),
    })
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Just enough protobuf to read WhoAmIResponse: varints, length-delimited, fixed 32/64.
struct ProtoFields<'a>(&'a [u8]);

impl<'a> ProtoFields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first()?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Some(value);
            }
        }
        None
    }

    /// `Some(None)` at the end, `None` on malformed input.
    fn next_field(&mut self) -> Option<Option<(u64, Field<'a>)>> {
        if self.0.is_empty() {
            return Some(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            2 => {
                let length = self.varint()? as usize;
                if length > self.0.len() {
                    return None;
                }
                let (bytes, rest) = self.0.split_at(length);
                self.0 = rest;
                Field::Bytes(bytes)
            }
            1 => {
                self.0 = self.0.get(8..)?;
                Field::Varint(0)
            }
            5 => {
                self.0 = self.0.get(4..)?;
                Field::Varint(0)
            }
            _ => return None,
        };
        Some(Some((key >> 3, value)))
    }
}

/// A denial in the caller's protocol. The token never appears in it.
pub fn deny_response(reason: &DenyReason, grpc: bool) -> Response<ProxyBody> {
    let message = reason.message();
    if grpc {
        let code = match reason {
            DenyReason::MissingToken | DenyReason::AmbiguousToken | DenyReason::InvalidToken(_) => {
                GrpcCode::Unauthenticated
            }
            DenyReason::AuthNotActive => GrpcCode::PermissionDenied,
            DenyReason::CheckUnavailable(_) => GrpcCode::Unavailable,
            DenyReason::MalformedMethod => GrpcCode::Unimplemented,
            DenyReason::AddressNotAllowed => GrpcCode::PermissionDenied,
            DenyReason::RateLimited { .. } => GrpcCode::ResourceExhausted,
        };
        let mut response = grpc_status_response(code, &message);
        add_retry_after(reason, &mut response);
        return response;
    }
    let status = match reason {
        DenyReason::MissingToken | DenyReason::AmbiguousToken | DenyReason::InvalidToken(_) => {
            StatusCode::UNAUTHORIZED
        }
        DenyReason::AuthNotActive => StatusCode::FORBIDDEN,
        DenyReason::CheckUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        DenyReason::MalformedMethod => StatusCode::NOT_FOUND,
        DenyReason::AddressNotAllowed => StatusCode::FORBIDDEN,
        DenyReason::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
    };
    let mut response = Response::new(ProxyBody::Full(Some(Bytes::from(format!("{message}\n")))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    add_retry_after(reason, &mut response);
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"pachyderm\""),
        );
    }
    response
}

fn add_retry_after(reason: &DenyReason, response: &mut Response<ProxyBody>) {
    if let DenyReason::RateLimited { retry_after_secs } = reason {
        if let Ok(value) = HeaderValue::from_str(&retry_after_secs.to_string()) {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_am_i_response_is_parsed() {
        // username "robot:demo", expiration { seconds: 2000000000 }
        let mut message = vec![0x0a, 10];
        message.extend_from_slice(b"robot:demo");
        message.extend_from_slice(&[0x12, 6, 0x08, 0x80, 0xa8, 0xd6, 0xb9, 0x07]);
        let mut frame = vec![0, 0, 0, 0, message.len() as u8];
        frame.extend_from_slice(&message);
        assert_eq!(
            parse_who_am_i(&frame),
            Some(WhoAmIAnswer::Valid {
                username: "robot:demo".into(),
                expiration: Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000)),
            })
        );
        assert_eq!(parse_who_am_i(&[0, 0, 0, 0, 3, 0x0a, 9, b'x']), None);
    }

    #[test]
    fn grpc_message_is_percent_decoded() {
        assert_eq!(percent_decode(b"50%25 %C3%A9"), "50% é");
        assert_eq!(percent_decode(b"trailing %"), "trailing %");
    }
}
