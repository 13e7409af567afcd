//! The normal form of a request path: what routing, the gate and most upstreams see.

/// The path routing and the gate see, and the upstream receives unless its route forwards
/// the request target as sent (S3, whose signatures cover the exact path): `%2E` decoded to `.`,
/// empty segments (`//`) collapsed, `.` and `..` segments resolved (never above the root).
/// `%2F` stays encoded: it is data, not a separator, to routing and to backends alike.
/// Returns `None` when the path is already normal (the common case: no allocation).
pub fn normalize_path(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let needs_work = bytes.windows(2).any(|w| w == b"//")
        || bytes
            .windows(3)
            .any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] | 0x20) == b'e')
        || path
            .split('/')
            .any(|segment| segment == "." || segment == "..");
    if !needs_work {
        return None;
    }
    let decoded = decode_dots(path);
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

fn decode_dots(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(index) = rest.find('%') {
        out.push_str(&rest[..index]);
        let candidate = &rest[index..];
        // Compared as bytes: the two after `%` may start a multi-byte character, and a
        // `str` slice there would panic.
        if candidate
            .as_bytes()
            .get(1..3)
            .is_some_and(|digits| digits.eq_ignore_ascii_case(b"2e"))
        {
            out.push('.');
            rest = &candidate[3..];
        } else {
            out.push('%');
            rest = &candidate[1..];
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
        ] {
            assert_eq!(normalize_path(input).as_deref(), want, "{input}");
        }
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
