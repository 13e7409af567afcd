//! What a route asks of a request, as configured (`MatchSpec`), and why a spec is refused.

use thiserror::Error;

/// What a route asks of a request. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchSpec {
    /// `example.com` (exact) or `*.example.com` (any subdomain, at any depth).
    pub host: Option<String>,
    /// Segment-aware prefix: `/dex` matches `/dex` and `/dex/x`, never `/dexter`.
    pub path_prefix: Option<String>,
    /// `Some(true)`: only gRPC requests; `Some(false)`: only non-gRPC requests.
    pub grpc: Option<bool>,
    pub header: Option<HeaderSpec>,
    /// Query parameter names that must all be present (exact, case-sensitive, as sent:
    /// not percent-decoded), e.g. `X-Amz-Signature` for S3 presigned URLs. Empty: no test.
    pub query: Vec<String>,
}

/// The config file's spelling, e.g. `{ host = "pachd.example", grpc = true }`.
impl std::fmt::Display for MatchSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(host) = &self.host {
            parts.push(format!("host = {host:?}"));
        }
        if let Some(prefix) = &self.path_prefix {
            parts.push(format!("path_prefix = {prefix:?}"));
        }
        if let Some(grpc) = self.grpc {
            parts.push(format!("grpc = {grpc}"));
        }
        if let Some(header) = &self.header {
            let mut text = format!("header = {{ name = {:?}", header.name);
            if let Some(exact) = &header.exact {
                text.push_str(&format!(", exact = {exact:?}"));
            }
            if let Some(prefix) = &header.prefix {
                text.push_str(&format!(", prefix = {prefix:?}"));
            }
            text.push_str(" }");
            parts.push(text);
        }
        if !self.query.is_empty() {
            parts.push(format!("query = {:?}", self.query));
        }
        if parts.is_empty() {
            return f.write_str("{ } (everything)");
        }
        write!(f, "{{ {} }}", parts.join(", "))
    }
}

/// Matches one request header by name, and optionally by exact value or value prefix.
/// With neither `exact` nor `prefix`, the header only has to be present.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderSpec {
    pub name: String,
    pub exact: Option<String>,
    pub prefix: Option<String>,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RouteError {
    #[error("host pattern {0:?} is not valid: expected `name.example` or `*.example`")]
    BadHost(String),
    #[error("path_prefix {0:?} must start with `/`")]
    BadPathPrefix(String),
    #[error("header name {0:?} is not a valid HTTP header name")]
    BadHeaderName(String),
    #[error("header matcher sets both `exact` and `prefix`; choose one")]
    HeaderExactAndPrefix,
    #[error("query parameter name {0:?} is not valid: expected a non-empty name without `&`, `=`, `#`, `?`, spaces or control characters")]
    BadQueryName(String),
}
