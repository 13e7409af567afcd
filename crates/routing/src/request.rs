//! What the table reads of a request (`RequestFacts`), and the two tests on its parts that
//! callers share with it: query parameter names and gRPC content types.

/// Borrowed parts of one request, as the table needs them.
pub trait RequestFacts {
    /// Host without port, as sent (`:authority` or `Host`).
    fn host(&self) -> Option<&str>;
    /// The (already normalised) path, without the query.
    fn path(&self) -> &str;
    fn is_grpc(&self) -> bool;
    /// First value of a header; `name` is lower case.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The query as sent (after `?`, not decoded); `None` without one.
    fn query(&self) -> Option<&str> {
        None
    }
}

/// True when `query` (`a=1&b&c=3`, as sent) has a parameter named exactly `name`. Names are
/// compared as sent, byte for byte: `X-Amz-Signature` is not `x-amz-signature`, nor
/// `X-Amz-SignatureX`, nor a value that happens to read `X-Amz-Signature`.
pub fn query_has_name(query: &str, name: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.split_once('=').map_or(pair, |(n, _)| n) == name)
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc-web…`: the content types
/// gRPC clients send. Matching is on the prefix, as gRPC's own spec words it.
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    value.len() >= GRPC.len() && value[..GRPC.len()].eq_ignore_ascii_case(GRPC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        for (value, want) in [
            ("application/grpc", true),
            ("application/grpc+proto", true),
            ("Application/GRPC", true),
            ("application/json", false),
            ("application/grp", false),
            ("", false),
        ] {
            assert_eq!(is_grpc_content_type(value.as_bytes()), want, "{value}");
        }
    }
}
