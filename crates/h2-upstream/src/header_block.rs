//! Response header blocks decoded within limits (field count, decoded size, the HPACK table
//! size we advertised).

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};
use pachgate_h2_wire::hpack_decode::Decoder;

use crate::{HeaderLimits, HEADER_TABLE_SIZE, MAX_RESPONSE_HEADERS_CAP};

/// The HPACK decoder for one upstream connection: its dynamic table may grow to what our
/// SETTINGS advertise and no further.
pub(crate) fn response_decoder() -> Decoder {
    Decoder::new(HEADER_TABLE_SIZE as usize)
}

/// A decoded response header block.
pub(crate) struct DecodedBlock {
    pub(crate) status: Option<StatusCode>,
    pub(crate) fields: HeaderMap,
    /// Why the block cannot be used: the stream is reset, the connection goes on (the HPACK
    /// table is in step, the whole block was decoded).
    pub(crate) problem: Option<(h2::Reason, &'static str)>,
}

/// Decodes a response header block within `limits`, checked field by field as the decoder
/// hands them over: past a limit nothing more is stored (what was is dropped), so an HPACK
/// bomb costs the decoding of its encoded bytes and no more. An HPACK error (a size update
/// past our table size included) is a connection error, COMPRESSION_ERROR.
pub(crate) fn decode_response_block(
    decoder: &mut Decoder,
    block: &[u8],
    limits: HeaderLimits,
) -> Result<DecodedBlock, (h2::Reason, String)> {
    let mut status: Option<StatusCode> = None;
    let mut fields = HeaderMap::new();
    let mut problem: Option<(h2::Reason, &'static str)> = None;
    let mut count = 0usize;
    let mut size = 0usize;
    let decoded = decoder.decode(block, |field| {
        let (name, value, never_indexed) = (field.name, field.value, field.never_indexed());
        if problem.is_some() {
            return;
        }
        count += 1;
        size = size.saturating_add(name.len() + value.len() + 32);
        if count > limits.max_fields.min(MAX_RESPONSE_HEADERS_CAP) || size > limits.max_bytes {
            problem = Some((
                h2::Reason::ENHANCE_YOUR_CALM,
                if size > limits.max_bytes {
                    "response header list over the size limit"
                } else {
                    "response header fields over the count limit"
                },
            ));
            fields = HeaderMap::new();
            return;
        }
        let malformed = |what| Some((h2::Reason::PROTOCOL_ERROR, what));
        if name.first() == Some(&b':') {
            if name == b":status" && status.is_none() && fields.is_empty() {
                status = StatusCode::from_bytes(value).ok();
                if status.is_none() {
                    problem = malformed("invalid :status");
                }
            } else {
                problem = malformed("unexpected pseudo-header");
            }
            return;
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            problem = malformed("uppercase header name");
            return;
        }
        // RFC 9113 §8.2.1 forbids whitespace at either end of a value, but grpc-go leaves a
        // `grpc-message` as the error said it ("not found: "), and nghttp2's reset of such
        // responses was turned off in Envoy for the errors it caused. So the value is
        // trimmed (RFC 9110 §5.5 lets a recipient do so): clients of either protocol then
        // read the same value, and the call's status survives.
        let value = trim_spaces_and_tabs(value);
        match (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
            (Ok(name), Ok(mut value)) => {
                // A field the upstream sent never indexed stays so on its way to the client
                // (RFC 7541 §6.2.3: intermediaries must keep the representation).
                value.set_sensitive(never_indexed);
                // TE is connection-specific too, allowed in requests only (§8.2.2).
                if is_connection_specific(&name) || name == http::header::TE {
                    problem = malformed("connection-specific header");
                } else if fields.try_append(name, value).is_err() {
                    problem = Some((h2::Reason::ENHANCE_YOUR_CALM, "header map full"));
                }
            }
            _ => problem = malformed("invalid header field"),
        }
    });
    if let Err(error) = decoded {
        return Err((h2::Reason::COMPRESSION_ERROR, format!("hpack: {error}")));
    }
    Ok(DecodedBlock {
        status,
        fields,
        problem,
    })
}

/// Headers RFC 9113 forbids in HTTP/2 (§8.2.2).
pub(crate) fn is_connection_specific(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection" | "keep-alive" | "proxy-connection" | "transfer-encoding" | "upgrade"
    )
}

/// A field value without the spaces and tabs at its ends (only those: a CR or LF anywhere
/// still makes the value invalid, and the response malformed).
fn trim_spaces_and_tabs(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// The head's content-length: `Ok(None)` without one; `Err` when a value is not a decimal
/// number that fits 64 bits, or two values differ (RFC 9110 §8.6; RFC 9113 §8.1.1 makes such
/// a response malformed). The values are the upstream's bytes: checked arithmetic, no panic.
pub(crate) fn content_length(fields: &HeaderMap) -> Result<Option<u64>, ()> {
    let mut length = None;
    for value in fields.get_all(http::header::CONTENT_LENGTH) {
        let bytes = value.as_bytes();
        if bytes.is_empty() {
            return Err(());
        }
        let mut parsed = 0u64;
        for &byte in bytes {
            if !byte.is_ascii_digit() {
                return Err(());
            }
            parsed = parsed
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(byte - b'0')))
                .ok_or(())?;
        }
        if length.is_some_and(|seen| seen != parsed) {
            return Err(());
        }
        length = Some(parsed);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> HeaderLimits {
        HeaderLimits::default()
    }

    #[test]
    fn a_field_the_upstream_never_indexed_stays_sensitive() {
        let mut decoder = response_decoder();
        let mut block = vec![0x88]; // :status 200
        for (pattern, name, value) in [
            (0x10, &b"set-cookie"[..], &b"session=s"[..]), // never indexed
            (0x00, b"x-plain", b"1"),                      // without indexing
            (0x40, b"x-indexed", b"2"),                    // with indexing
        ] {
            block.push(pattern);
            pachgate_h2_wire::put_string(&mut block, name);
            pachgate_h2_wire::put_string(&mut block, value);
        }
        let decoded = decode_response_block(&mut decoder, &block, limits()).unwrap();
        assert!(decoded.fields["set-cookie"].is_sensitive());
        assert!(!decoded.fields["x-plain"].is_sensitive());
        assert!(!decoded.fields["x-indexed"].is_sensitive());
    }

    #[test]
    fn huffman_coded_fields_decode_and_a_bad_code_is_a_compression_error() {
        let mut decoder = response_decoder();
        let message = b"permission denied: repo \"images\" not found";
        let mut block = vec![0x88]; // :status 200
        block.push(0x40); // literal with indexing, literal name
        let name = pachgate_h2_wire::huffman::encoded_len(b"grpc-message");
        pachgate_h2_wire::put_integer(&mut block, 0x80, 7, name);
        pachgate_h2_wire::huffman::encode(b"grpc-message", &mut block);
        let coded = pachgate_h2_wire::huffman::encoded_len(message);
        pachgate_h2_wire::put_integer(&mut block, 0x80, 7, coded);
        pachgate_h2_wire::huffman::encode(message, &mut block);
        assert_eq!(block.len(), 3 + name + 1 + coded);
        assert!(name < 12 && coded < message.len()); // shorter coded than raw
        let decoded = decode_response_block(&mut decoder, &block, limits()).unwrap();
        assert_eq!(decoded.status, Some(StatusCode::OK));
        assert!(decoded.problem.is_none());
        assert_eq!(decoded.fields["grpc-message"].as_bytes(), message);
        // The entry is in the table: the next block names it by index 62.
        let decoded = decode_response_block(&mut decoder, &[0x88, 0xbe], limits()).unwrap();
        assert_eq!(decoded.fields["grpc-message"].as_bytes(), message);

        // A value of EOS, a size update after a field: the connection's decoder is lost.
        for block in [
            &[0x88, 0x0f, 0x12, 0x84, 0xff, 0xff, 0xff, 0xff][..],
            &[0x88, 0x20],
        ] {
            let (reason, what) = decode_response_block(&mut response_decoder(), block, limits())
                .err()
                .unwrap();
            assert_eq!(reason, h2::Reason::COMPRESSION_ERROR);
            assert!(what.starts_with("hpack: "), "{what}");
        }
    }
}
