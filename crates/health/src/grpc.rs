//! `grpc.health.v1.Health/Check` over HTTP/2 with the `h2` crate, and the two protobuf
//! messages by hand:
//! - `HealthCheckRequest { string service = 1; }`
//! - `HealthCheckResponse { ServingStatus status = 1; }` with UNKNOWN 0, SERVING 1,
//!   NOT_SERVING 2, SERVICE_UNKNOWN 3.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::{MAX_BODY_BYTES, MAX_HEADER_BYTES};

const PATH: &str = "/grpc.health.v1.Health/Check";

/// `HealthCheckResponse.ServingStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServingStatus {
    Unknown,
    Serving,
    NotServing,
    ServiceUnknown,
    /// A value this proto version does not name.
    Other(u64),
}

impl ServingStatus {
    fn from_wire(value: u64) -> Self {
        match value {
            0 => ServingStatus::Unknown,
            1 => ServingStatus::Serving,
            2 => ServingStatus::NotServing,
            3 => ServingStatus::ServiceUnknown,
            other => ServingStatus::Other(other),
        }
    }

    fn name(self) -> String {
        match self {
            ServingStatus::Unknown => "UNKNOWN".into(),
            ServingStatus::Serving => "SERVING".into(),
            ServingStatus::NotServing => "NOT_SERVING".into(),
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN".into(),
            ServingStatus::Other(value) => value.to_string(),
        }
    }
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

/// A `HealthCheckRequest { service }` in a gRPC length-prefixed frame.
pub fn encode_check_request(service: &str) -> Bytes {
    let mut message = BytesMut::new();
    if !service.is_empty() {
        message.put_u8(0x0a); // field 1, length-delimited
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0); // not compressed
    frame.put_u32(message.len() as u32);
    frame.put_slice(&message);
    frame.freeze()
}

fn take_varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let Some((&byte, rest)) = buf.split_first() else {
            return Err("truncated varint".into());
        };
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("varint over 10 bytes".into())
}

fn skip(buf: &mut &[u8], n: u64) -> Result<(), String> {
    let n = usize::try_from(n).map_err(|_| "field length too large".to_string())?;
    if n > buf.len() {
        return Err("truncated field".into());
    }
    buf.advance(n);
    Ok(())
}

/// The status in a gRPC response body (length-prefixed frames, exactly one message).
/// Unknown fields are skipped; a missing status is UNKNOWN (proto3's default).
pub fn decode_check_response(body: &[u8]) -> Result<ServingStatus, String> {
    if body.len() < 5 {
        return Err(if body.is_empty() {
            "no response message".into()
        } else {
            "truncated gRPC frame".into()
        });
    }
    if body[0] != 0 {
        return Err("compressed or malformed gRPC frame".into());
    }
    let length = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    let rest = &body[5..];
    if length > rest.len() {
        return Err("truncated gRPC frame".into());
    }
    if length < rest.len() {
        return Err("more than one response message".into());
    }
    let mut message = rest;
    let mut status = ServingStatus::Unknown;
    while !message.is_empty() {
        let key = take_varint(&mut message)?;
        let (field, wire_type) = (key >> 3, key & 7);
        match wire_type {
            0 => {
                let value = take_varint(&mut message)?;
                if field == 1 {
                    status = ServingStatus::from_wire(value);
                }
            }
            1 => skip(&mut message, 8)?,
            2 => {
                let n = take_varint(&mut message)?;
                skip(&mut message, n)?;
            }
            5 => skip(&mut message, 4)?,
            _ => return Err(format!("bad protobuf wire type {wire_type}")),
        }
        if field == 0 {
            return Err("bad protobuf field number 0".into());
        }
    }
    Ok(status)
}

fn code_name(code: u32) -> &'static str {
    match code {
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "",
    }
}

/// `Some(Ok(()))` for grpc-status 0, `Some(Err(reason))` for another, `None` without one.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), String>> {
    let value = headers.get("grpc-status")?;
    let code = std::str::from_utf8(value.as_bytes())
        .ok()
        .and_then(|s| s.parse::<u32>().ok());
    Some(match code {
        Some(0) => Ok(()),
        Some(code) => {
            let name = code_name(code);
            Err(if name.is_empty() {
                format!("grpc-status {code}")
            } else {
                format!("grpc-status {code} {name}")
            })
        }
        None => Err("malformed grpc-status".into()),
    })
}

fn h2_reason(what: &str, error: h2::Error) -> String {
    format!("{what}: {error}")
}

/// One Check call on a new HTTP/2 connection over `io`.
pub(crate) async fn check<IO>(
    io: IO,
    scheme: &str,
    authority: &str,
    service: &str,
) -> Result<String, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let request = Request::builder()
        .method(Method::POST)
        .uri(format!("{scheme}://{authority}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "pachgate-health")
        .body(())
        .map_err(|_| "invalid check authority".to_string())?;
    let (client, connection) = h2::client::Builder::new()
        .max_header_list_size(MAX_HEADER_BYTES)
        .initial_window_size(MAX_BODY_BYTES as u32)
        .handshake::<_, Bytes>(io)
        .await
        .map_err(|e| h2_reason("HTTP/2 handshake failed", e))?;
    let call = async move {
        let mut client = client
            .ready()
            .await
            .map_err(|e| h2_reason("HTTP/2 connection failed", e))?;
        let (response, mut send) = client
            .send_request(request, false)
            .map_err(|e| h2_reason("HTTP/2 request failed", e))?;
        send.send_data(encode_check_request(service), true)
            .map_err(|e| h2_reason("HTTP/2 request failed", e))?;
        let response = response
            .await
            .map_err(|e| h2_reason("HTTP/2 stream failed", e))?;
        let (head, mut body) = response.into_parts();
        if head.status != StatusCode::OK {
            return Err(format!("HTTP {}", head.status.as_u16()));
        }
        // Trailers-only answer: the status is in the headers.
        if let Some(status) = grpc_status(&head.headers) {
            status?;
        }
        let mut message = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| h2_reason("HTTP/2 stream failed", e))?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if message.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(format!("answer over {MAX_BODY_BYTES} bytes"));
            }
            message.extend_from_slice(&chunk);
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| h2_reason("HTTP/2 stream failed", e))?;
        match trailers.as_ref().and_then(grpc_status) {
            Some(status) => status?,
            None if grpc_status(&head.headers).is_some() => {}
            None => return Err("no grpc-status".into()),
        }
        match decode_check_response(&message)? {
            ServingStatus::Serving => Ok("status SERVING".to_string()),
            other => Err(format!("status {}", other.name())),
        }
    };
    // The connection runs beside the call; dropping the guard (the call ended, timed out or
    // was cancelled) closes it. Its errors reach the call through the stream.
    let _connection = crate::AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    call.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_encoding() {
        assert_eq!(&encode_check_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(
            &encode_check_request("pfs")[..],
            &[0, 0, 0, 0, 5, 0x0a, 3, b'p', b'f', b's']
        );
        let long = "s".repeat(200);
        let frame = encode_check_request(&long);
        assert_eq!(&frame[5..8], &[0x0a, 0xc8, 0x01]);
        assert_eq!(frame.len(), 5 + 3 + 200);
    }

    #[test]
    fn response_decoding() {
        let frame = |m: &[u8]| {
            let mut v = vec![0, 0, 0, 0, m.len() as u8];
            v.extend_from_slice(m);
            v
        };
        assert_eq!(
            decode_check_response(&frame(&[0x08, 1])),
            Ok(ServingStatus::Serving)
        );
        assert_eq!(
            decode_check_response(&frame(&[0x08, 2])),
            Ok(ServingStatus::NotServing)
        );
        assert_eq!(
            decode_check_response(&frame(&[])),
            Ok(ServingStatus::Unknown)
        );
        // Unknown fields of every wire type are skipped, the last status wins.
        assert_eq!(
            decode_check_response(&frame(&[
                0x08, 2, 0x10, 0x96, 0x01, 0x1a, 2, b'h', b'i', 0x25, 1, 2, 3, 4, 0x29, 1, 2, 3, 4,
                5, 6, 7, 8, 0x08, 1
            ])),
            Ok(ServingStatus::Serving)
        );
        assert_eq!(
            decode_check_response(&frame(&[0x08, 0x80, 0x01])),
            Ok(ServingStatus::Other(128))
        );
        for bad in [
            vec![],
            vec![0, 0, 0],
            vec![1, 0, 0, 0, 2, 0x08, 1],
            vec![0, 0xff, 0xff, 0xff, 0xff, 0x08, 1],
            frame(&[0x08]),
            frame(&[0x08, 0x80]),
            frame(&[0x0a, 5, 1]),
            frame(&[0x0b]),
            frame(&[0x00, 1]),
            frame(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
            [frame(&[0x08, 1]), frame(&[0x08, 1])].concat(),
        ] {
            assert!(decode_check_response(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A small xorshift drives random inputs, with and without a plausible frame head.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && len >= 5 {
                bytes[0] = 0;
                bytes[1..5].copy_from_slice(&((len - 5) as u32).to_be_bytes());
            }
            let _ = decode_check_response(&bytes);
        }
    }
}
