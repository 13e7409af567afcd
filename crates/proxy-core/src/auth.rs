//! The auth gate in the request pipeline: asks pachd's WhoAmI over the upstream's pooled
//! connection, and renders the gate's denials in the caller's protocol.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pachgate_auth_gate::{
    bearer_token, pachd_http_surface, token_for_pachd_files, token_from_grpc_metadata, AllowReason,
    Decision, DenyReason, PachdHttpSurface, PachydermGate, RateLimiter, StaticTokens, WhoAmI,
    WhoAmIAnswer,
};

use crate::body::ProxyBody;
use crate::upstream::Upstream;

/// What pachd's WhoAmI says, with code INTERNAL, for a token past its expiration.
const EXPIRED_TOKEN_MESSAGE: &str = "token expiration is in the past";

/// How long a WhoAmI call may take before the token counts as unverifiable.
const WHO_AM_I_TIMEOUT: Duration = Duration::from_secs(5);

/// WhoAmI over an h2c upstream (pachd's gRPC port).
pub struct UpstreamWhoAmI {
    pub upstream: Arc<Upstream>,
    /// `/auth_v2.API/WhoAmI` (2.x) or `/auth.API/WhoAmI` (1.x).
    pub method: http::uri::PathAndQuery,
}

impl WhoAmI for UpstreamWhoAmI {
    fn who_am_i(
        &self,
        token: Option<&str>,
    ) -> Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + '_>> {
        let token = token.map(HeaderValue::from_str).transpose();
        Box::pin(async move {
            let Ok(mut token) = token else {
                return WhoAmIAnswer::Unauthenticated("malformed authentication token".into());
            };
            if let Some(token) = &mut token {
                token.set_sensitive(true);
            }
            match tokio::time::timeout(WHO_AM_I_TIMEOUT, self.call(token)).await {
                Ok(answer) => answer,
                Err(_) => WhoAmIAnswer::Unavailable("pachd did not answer WhoAmI in time".into()),
            }
        })
    }
}

impl UpstreamWhoAmI {
    async fn call(&self, token: Option<HeaderValue>) -> WhoAmIAnswer {
        // An empty WhoAmIRequest: one uncompressed, zero-length gRPC message.
        let body = ProxyBody::Full(Some(Bytes::from_static(&[0, 0, 0, 0, 0])));
        let mut request = Request::post(http::Uri::from(self.method.clone()))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(body)
            .expect("static request parts");
        if let Some(token) = token {
            request.headers_mut().insert("authn-token", token);
        }
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
            // pachd keeps expired tokens for a while and says so with INTERNAL; any other
            // INTERNAL is pachd failing, which says nothing about the token.
            13 if message.contains(EXPIRED_TOKEN_MESSAGE) => WhoAmIAnswer::Expired(message),
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

static AUTHN_TOKEN: http::HeaderName = http::HeaderName::from_static("authn-token");

/// The gate stage of the pipeline: the route's gate, and the failed-authentication limiter.
pub(crate) struct AuthGates<'a> {
    pub gate: RouteGate<'a>,
    pub failed_auth: Option<&'a RateLimiter>,
}

/// Which gate a route with edge authentication has.
pub(crate) enum RouteGate<'a> {
    Pachyderm(&'a PachydermGate),
    StaticTokens(&'a StaticTokens),
}

impl AuthGates<'_> {
    /// Takes the token where the upstream will read it, applies the failed-authentication
    /// limiter, and asks the route's gate.
    pub(crate) async fn check<B>(
        &self,
        request: &Request<B>,
        grpc: bool,
        client: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<AllowReason, DenyReason> {
        let headers = request.headers();
        let path = request.uri().path();
        let authn_tokens = || headers.get_all(&AUTHN_TOKEN).iter().map(|v| v.as_bytes());
        let token = match self.gate {
            RouteGate::StaticTokens(_) => bearer_token(
                headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            RouteGate::Pachyderm(_)
                if !grpc && pachd_http_surface(path) == PachdHttpSurface::Files =>
            {
                token_for_pachd_files(request.uri().query(), authn_tokens())
            }
            // gRPC metadata, and pachd's grpc-gateway, which turns headers into metadata.
            RouteGate::Pachyderm(_) => token_from_grpc_metadata(authn_tokens()),
        };
        if let Some(limiter) = self.failed_auth {
            // Brute force: an address out of failed attempts gets no more token checks. A
            // Pachyderm token already known to be valid still passes, so one client with a
            // broken token behind a NAT cannot lock out everyone behind the same address;
            // pachd's tokens are random 128-bit values, so this answer helps no guesser. A
            // public method tests no token at all. Static tokens get no such exemption: they
            // may be weak, and checking them is free, so exempting the valid ones would let
            // a locked-out address go on guessing at line rate.
            if let Err(wait) = limiter.check(client, now) {
                let exempt = match self.gate {
                    RouteGate::Pachyderm(gate) => {
                        gate.is_public_call(path, grpc)
                            || token.token().is_some_and(|token| gate.knows_valid(token))
                    }
                    RouteGate::StaticTokens(_) => false,
                };
                if !exempt {
                    return Err(DenyReason::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    });
                }
            }
        }
        let decision = match self.gate {
            RouteGate::StaticTokens(tokens) => tokens.check(token),
            RouteGate::Pachyderm(gate) if grpc => gate.check_grpc(path, token).await,
            RouteGate::Pachyderm(gate) => gate.check_http(path, token).await,
        };
        match decision {
            Decision::Allow { reason, .. } => Ok(reason),
            Decision::Deny(reason) => {
                // Only rejected tokens count: an expired session (the console polls every
                // few seconds) is not someone guessing.
                if matches!(reason, DenyReason::InvalidToken(_)) {
                    if let Some(limiter) = self.failed_auth {
                        let _ = limiter.take(client, now);
                    }
                }
                Err(reason)
            }
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
