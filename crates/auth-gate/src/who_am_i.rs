//! pachd's WhoAmI, asked as a client: the call (an empty `WhoAmIRequest` with the token as
//! `authn-token` metadata, bounded in time) and the reading of its answer (the gRPC status,
//! and a `WhoAmIResponse` in protobuf). The bytes travel over a [`GrpcUnary`] transport the
//! caller provides (proxy-core sends them over the upstream's pooled connection); this
//! module opens no connection itself.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, TE};
use http::{HeaderMap, Request, StatusCode};

use crate::{WhoAmI, WhoAmIAnswer};

/// What pachd's WhoAmI says, with code INTERNAL, for a token past its expiration.
const EXPIRED_TOKEN_MESSAGE: &str = "token expiration is in the past";

/// How long a WhoAmI call may take before the token counts as unverifiable.
const WHO_AM_I_TIMEOUT: Duration = Duration::from_secs(5);

/// A unary gRPC call's answer as the transport received it.
pub struct UnaryReply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The response body (empty when `status` is not 200: it is not read then).
    pub body: Bytes,
    pub trailers: Option<HeaderMap>,
}

/// Sends one unary gRPC request and collects its answer. `Err`: why no answer came, as
/// the gate reports it (pachd unavailable).
pub trait GrpcUnary: Send + Sync + 'static {
    fn call(
        &self,
        request: Request<Bytes>,
    ) -> impl Future<Output = Result<UnaryReply, String>> + Send;
}

/// WhoAmI over a transport to pachd's gRPC port.
pub struct PachdWhoAmI<T> {
    transport: T,
    /// `/auth_v2.API/WhoAmI` (2.x) or `/auth.API/WhoAmI` (1.x).
    method: http::uri::PathAndQuery,
}

impl<T: GrpcUnary> PachdWhoAmI<T> {
    pub fn new(method: http::uri::PathAndQuery, transport: T) -> Self {
        PachdWhoAmI { transport, method }
    }
}

impl<T: GrpcUnary> WhoAmI for PachdWhoAmI<T> {
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

impl<T: GrpcUnary> PachdWhoAmI<T> {
    async fn call(&self, token: Option<HeaderValue>) -> WhoAmIAnswer {
        // An empty WhoAmIRequest: one uncompressed, zero-length gRPC message.
        let body = Bytes::from_static(&[0, 0, 0, 0, 0]);
        let mut request = Request::post(http::Uri::from(self.method.clone()))
            .header(CONTENT_TYPE, "application/grpc")
            .header(TE, "trailers")
            .body(body)
            .expect("static request parts");
        if let Some(token) = token {
            request.headers_mut().insert("authn-token", token);
        }
        match self.transport.call(request).await {
            Ok(reply) => read_answer(reply),
            Err(why) => WhoAmIAnswer::Unavailable(why),
        }
    }
}

/// What pachd's answer says about the token.
fn read_answer(reply: UnaryReply) -> WhoAmIAnswer {
    if reply.status != StatusCode::OK {
        return WhoAmIAnswer::Unavailable(format!("WhoAmI answered HTTP {}", reply.status));
    }
    let (code, message) = grpc_status(&reply.headers)
        .or_else(|| reply.trailers.as_ref().and_then(grpc_status))
        .unwrap_or((-1, "no grpc-status".into()));
    match code {
        0 => parse_who_am_i(&reply.body)
            .unwrap_or_else(|| WhoAmIAnswer::Unavailable("unreadable WhoAmI response".into())),
        16 => WhoAmIAnswer::Unauthenticated(message),
        // pachd keeps expired tokens for a while and says so with INTERNAL; any other
        // INTERNAL is pachd failing, which says nothing about the token.
        13 if message.contains(EXPIRED_TOKEN_MESSAGE) => WhoAmIAnswer::Expired(message),
        12 => WhoAmIAnswer::AuthNotActive,
        _ => WhoAmIAnswer::Unavailable(format!("WhoAmI failed: status {code} {message}")),
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

    fn reply(status: u16, code: &str, message: &str) -> UnaryReply {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_str(code).unwrap());
        trailers.insert("grpc-message", HeaderValue::from_str(message).unwrap());
        UnaryReply {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            trailers: Some(trailers),
        }
    }

    #[test]
    fn pachds_statuses_say_what_they_mean_for_the_token() {
        assert_eq!(
            read_answer(reply(200, "16", "bad%20token")),
            WhoAmIAnswer::Unauthenticated("bad token".into())
        );
        assert_eq!(
            read_answer(reply(200, "13", "token expiration is in the past")),
            WhoAmIAnswer::Expired("token expiration is in the past".into())
        );
        assert!(matches!(
            read_answer(reply(200, "13", "database down")),
            WhoAmIAnswer::Unavailable(_)
        ));
        assert_eq!(
            read_answer(reply(200, "12", "")),
            WhoAmIAnswer::AuthNotActive
        );
        assert_eq!(
            read_answer(reply(503, "0", "")),
            WhoAmIAnswer::Unavailable("WhoAmI answered HTTP 503 Service Unavailable".into())
        );
    }
}
