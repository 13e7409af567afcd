//! The request head as an HPACK block of literals: no encoder state to keep in step.

use pachgate_h2_wire as wire;

use crate::{connection::ConnectProtocol, header_block::is_connection_specific};

/// The request head as an HPACK block of literals that never enter the upstream's table
/// (names from the static table where it has them). No encoder state, so no table to keep
/// in step; values that carry credentials are marked never-indexed for any intermediary.
pub(crate) fn encode_request_head(head: &http::request::Parts, out: &mut Vec<u8>) {
    match head.method {
        http::Method::GET => out.push(0x80 | 2),
        http::Method::POST => out.push(0x80 | 3),
        ref other => put_indexed_name(out, 0x00, 2, other.as_str().as_bytes()),
    }
    match head.uri.scheme_str() {
        Some("https") => out.push(0x80 | 7),
        _ => out.push(0x80 | 6),
    }
    if let Some(authority) = head.uri.authority() {
        put_indexed_name(out, 0x00, 1, authority.as_str().as_bytes());
    }
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    if path == "/" {
        out.push(0x80 | 4);
    } else {
        put_indexed_name(out, 0x00, 4, path.as_bytes());
    }
    if head.method == http::Method::CONNECT {
        if let Some(ConnectProtocol(protocol)) = head.extensions.get::<ConnectProtocol>() {
            out.push(0x00);
            wire::put_string(out, b":protocol");
            wire::put_string(out, protocol.as_bytes());
        }
    }
    for (name, value) in &head.headers {
        if is_connection_specific(name) || (name == http::header::TE && value != "trailers") {
            continue;
        }
        put_literal_field(out, name.as_str(), value.as_bytes());
    }
}

pub(crate) fn put_literal_field(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    let pattern = if matches!(name, "authorization" | "cookie" | "authn-token") {
        0x10 // never indexed
    } else {
        0x00 // without indexing
    };
    match static_name_index(name) {
        Some(index) => put_indexed_name(out, pattern, index, value),
        None => {
            out.push(pattern);
            wire::put_string(out, name.as_bytes());
            wire::put_string(out, value);
        }
    }
}

pub(crate) fn put_indexed_name(out: &mut Vec<u8>, pattern: u8, index: usize, value: &[u8]) {
    wire::put_integer(out, pattern, 4, index);
    wire::put_string(out, value);
}

/// Names in HPACK's static table (RFC 7541 appendix A) that requests commonly carry.
pub(crate) fn static_name_index(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept" => 19,
        "authorization" => 23,
        "cache-control" => 24,
        "content-encoding" => 26,
        "content-length" => 28,
        "content-type" => 31,
        "cookie" => 32,
        "host" => 38,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "referer" => 51,
        "user-agent" => 58,
        "via" => 60,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(block: &[u8]) -> Vec<(String, String)> {
        let mut fields = Vec::new();
        loona_hpack::Decoder::new()
            .decode_with_cb(block, |name, value| {
                fields.push((
                    String::from_utf8(name.to_vec()).unwrap(),
                    String::from_utf8(value.to_vec()).unwrap(),
                ))
            })
            .expect("a valid HPACK block");
        fields
    }

    #[test]
    fn request_heads_decode_to_what_was_asked_without_connection_headers() {
        let long_path = format!("/pfs_v2.API/{}", "x".repeat(300));
        let request = http::Request::builder()
            .method("PUT")
            .uri(format!("https://pachd.example:1650{long_path}?q=1"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("authorization", "Bearer secret")
            .header("x-custom", "v".repeat(200))
            .header("connection", "keep-alive")
            .header("transfer-encoding", "chunked")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        let expected: Vec<(String, String)> = [
            (":method", "PUT".to_string()),
            (":scheme", "https".to_string()),
            (":authority", "pachd.example:1650".to_string()),
            (":path", format!("{long_path}?q=1")),
            ("content-type", "application/grpc".to_string()),
            ("te", "trailers".to_string()),
            ("authorization", "Bearer secret".to_string()),
            ("x-custom", "v".repeat(200)),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
        assert_eq!(decode(&block), expected);
    }

    #[test]
    fn an_extended_connect_head_carries_its_protocol_after_the_pseudo_headers() {
        let request = http::Request::builder()
            .method("CONNECT")
            .uri("http://pachd:1650/ws?x=1")
            .header("sec-websocket-version", "13")
            .extension(ConnectProtocol("websocket"))
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        assert_eq!(
            decode(&block),
            [
                (":method", "CONNECT"),
                (":scheme", "http"),
                (":authority", "pachd:1650"),
                (":path", "/ws?x=1"),
                (":protocol", "websocket"),
                ("sec-websocket-version", "13"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // Only CONNECT takes it.
        let (mut head, ()) = http::Request::get("http://pachd/")
            .body(())
            .unwrap()
            .into_parts();
        head.extensions.insert(ConnectProtocol("websocket"));
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        assert!(!decode(&block).iter().any(|(name, _)| name == ":protocol"));
    }

    #[test]
    fn common_pseudo_headers_are_single_bytes_and_credentials_are_never_indexed() {
        let request = http::Request::builder()
            .method("GET")
            .uri("http://console/")
            .header("authorization", "Bearer secret")
            .header("te", "gzip")
            .body(())
            .unwrap();
        let (head, ()) = request.into_parts();
        let mut block = Vec::new();
        encode_request_head(&head, &mut block);
        // GET, http and "/" come from the static table; `te` other than "trailers" is
        // dropped (HTTP/2 forbids it).
        assert_eq!(&block[..2], &[0x80 | 2, 0x80 | 6]);
        assert_eq!(
            decode(&block),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "console"),
                (":path", "/"),
                ("authorization", "Bearer secret"),
            ]
            .map(|(n, v)| (n.to_string(), v.to_string()))
        );
        // The authorization field's representation: literal never indexed (0x10), name
        // index 23 (15 in the 4-bit prefix, 8 after it), then the value's length.
        let at = block.len() - "Bearer secret".len() - 3;
        assert_eq!(block[at], 0x10 | 0x0f);
        assert_eq!(block[at + 1], 23 - 15);
    }
}
