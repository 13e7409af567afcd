//! The normal form of a request path: what routing, the gate and most upstreams see.

/// The path routing and the gate see, and the upstream receives unless its route forwards
/// the request target as sent (S3, whose signatures cover the exact path): percent-encoded
/// unreserved characters decoded (`%2E` to `.`, `%70` to `p`: RFC 3986 §6.2.2.2, as pachd's
/// HTTP routers decode them before they route: Go's `ServeMux` unescapes each segment,
/// grpc-gateway's default mux matches on the decoded path; grpc-go takes a gRPC `:path`
/// raw, but it is sent the normal form, the method the gate judged), empty segments (`//`)
/// collapsed, `.` and `..`
/// segments resolved (never above the root). `%2F` and every other reserved or non-ASCII
/// byte stay encoded: `%2F` is data, not a separator, to routing and to backends alike.
/// Returns `None` when the path is already normal (the common case: no allocation).
///
/// A path with an invalid escape (see [`has_invalid_escape`]) is not to be routed at all:
/// its normal form would not be final.
pub fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let needs_work = bytes.windows(2).any(|w| w == b"//")
        || has_encoded_unreserved(path)
        || path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if !needs_work {
        return None;
    }
    // One round is final for a path without invalid escapes (`has_invalid_escape`, refused
    // before routing): a `%` followed by two hex digits is decoded or kept whole, so no new
    // escape can form. (`%3%31` would decode to `%31`: that path is a 400.)
    let decoded = decode_unreserved(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing_slash =
        decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut normal = String::with_capacity(decoded.len());
    for segment in &segments {
        normal.push('/');
        normal.push_str(segment);
    }
    if normal.is_empty() || (trailing_slash && !segments.is_empty()) {
        normal.push('/');
    }
    Some(normal)
}

/// Whether a `%` in `path` is not followed by two hex digits. Go's server (pachd, its S3
/// gateway) refuses such a path before it routes (`url.ParseRequestURI` fails: HTTP/1.1
/// gets 400, HTTP/2 a stream reset), and it is the one shape whose decoding makes a new
/// escape (`%3%31` → `%31`), so pachgate refuses it too.
pub fn has_invalid_escape(path: &str) -> bool {
    let bytes = path.as_bytes();
    bytes.iter().enumerate().any(|(at, &b)| {
        b == b'%'
            && !matches!(
                bytes.get(at + 1..at + 3),
                Some([high, low]) if high.is_ascii_hexdigit() && low.is_ascii_hexdigit()
            )
    })
}

fn has_encoded_unreserved(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w[0] == b'%' && encoded_unreserved(w[1], w[2]).is_some())
}

/// The unreserved character (`A-Z a-z 0-9 - . _ ~`) the two hex digits after a `%` stand
/// for, if they are hex digits and it is one.
fn encoded_unreserved(high: u8, low: u8) -> Option<char> {
    let digit = |b: u8| (b as char).to_digit(16);
    let byte = (digit(high)? * 16 + digit(low)?) as u8;
    (byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~'))
        .then_some(byte as char)
}

fn decode_unreserved(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(index) = rest.find('%') {
        out.push_str(&rest[..index]);
        let candidate = &rest[index..];
        // Compared as bytes: the two after `%` may start a multi-byte character, and a
        // `str` slice there would panic.
        let decoded = match candidate.as_bytes().get(1..3) {
            Some(&[high, low]) => encoded_unreserved(high, low),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &candidate[3..];
            }
            None => {
                out.push('%');
                rest = &candidate[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_normalized() {
        for (input, want) in [
            ("/api/v1", None),
            ("/", None),
            ("/dex/", None),
            ("//dex", Some("/dex")),
            ("/api/../dex", Some("/dex")),
            ("/api/%2e%2E/dex", Some("/dex")),
            ("/./archive/x", Some("/archive/x")),
            ("/../../etc", Some("/etc")),
            ("/a/b/..", Some("/a/")),
            ("/a/./", Some("/a/")),
            ("/..", Some("/")),
            ("/a%2Fb", None),
            ("/a%2F..%2Fb", None),
            // Unreserved characters decoded, as Go's server does; reserved ones kept.
            ("/%70fs/repo", Some("/pfs/repo")),
            (
                "/api/auth_v2.API/%41uthenticate",
                Some("/api/auth_v2.API/Authenticate"),
            ),
            ("/%7e%2D%5f%30", Some("/~-_0")),
            ("/a%2fb%3F%25%20", None),
            ("/a%zz%4", None),
            ("/x/%2e%2e%2F/y", Some("/x/..%2F/y")),
        ] {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
    }

    /// `%` without two hex digits is an invalid escape (refused before routing); long
    /// chains of them are found in one pass.
    #[test]
    fn invalid_escapes_are_found() {
        for (path, invalid) in [
            ("/a%2Fb", false),
            ("/%41%7e", false),
            ("/%", true),
            ("/%4", true),
            ("/%zz", true),
            ("/%%36%31pi", true),
            ("/%3%31", true),
            ("/%\u{20ac}", true),
        ] {
            assert_eq!(has_invalid_escape(path), invalid, "{path}");
        }
        let chain = format!("/{}%31", "%3".repeat(30_000));
        assert!(has_invalid_escape(&chain));
    }

    /// A `%` followed by a character of more than one byte (raw UTF-8 passes httparse and
    /// the `http` crate's path check) is kept as it came, not cut inside the character.
    #[test]
    fn a_percent_before_a_multibyte_character_is_kept() {
        for (input, want) in [
            ("//%a\u{20ac}", Some("/%a\u{20ac}")),
            ("//%\u{20ac}", Some("/%\u{20ac}")),
            ("/.%\u{20ac}", None),
            ("/x/%2e%\u{e9}/..", Some("/x/")),
            ("//%2\u{e9}", Some("/%2\u{e9}")),
        ] {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
    }
}
