//! One route's compiled matcher: the spec checked once at load, then tested against each
//! request without allocating.

use crate::request::query_has_name;
use crate::spec::{HeaderSpec, MatchSpec, RouteError};
use crate::RequestFacts;

#[derive(Debug, Clone)]
enum HostMatcher {
    Exact(String),
    /// Stored with its leading dot: `*.example.com` → `.example.com`.
    Suffix(String),
}

impl HostMatcher {
    fn compile(pattern: &str) -> Result<Self, RouteError> {
        let bad = || RouteError::BadHost(pattern.to_string());
        let lower = pattern.to_ascii_lowercase();
        let (is_wildcard, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_name = !name.is_empty()
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..")
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid_name {
            return Err(bad());
        }
        Ok(if is_wildcard {
            HostMatcher::Suffix(format!(".{name}"))
        } else {
            HostMatcher::Exact(name.to_string())
        })
    }

    fn matches(&self, host: &str) -> bool {
        // A fully qualified name may end with a dot; it names the same host.
        let host = host.strip_suffix('.').unwrap_or(host);
        match self {
            HostMatcher::Exact(name) => host.eq_ignore_ascii_case(name),
            HostMatcher::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }
}

#[derive(Debug, Clone)]
struct PathMatcher {
    /// Without a trailing slash; empty for the root prefix, which matches everything.
    prefix: String,
}

impl PathMatcher {
    fn compile(prefix: &str) -> Result<Self, RouteError> {
        if !prefix.starts_with('/') {
            return Err(RouteError::BadPathPrefix(prefix.to_string()));
        }
        Ok(PathMatcher {
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    fn matches(&self, path: &str) -> bool {
        match path.strip_prefix(self.prefix.as_str()) {
            Some(rest) => rest.is_empty() || rest.starts_with('/'),
            None => false,
        }
    }
}

#[derive(Debug, Clone)]
enum HeaderValueMatch {
    Present,
    Exact(Vec<u8>),
    Prefix(Vec<u8>),
}

#[derive(Debug, Clone)]
struct HeaderMatcher {
    name: String,
    value: HeaderValueMatch,
}

impl HeaderMatcher {
    fn compile(spec: &HeaderSpec) -> Result<Self, RouteError> {
        let valid_name = !spec.name.is_empty()
            && spec
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
        if !valid_name {
            return Err(RouteError::BadHeaderName(spec.name.clone()));
        }
        let value = match (&spec.exact, &spec.prefix) {
            (Some(_), Some(_)) => return Err(RouteError::HeaderExactAndPrefix),
            (Some(exact), None) => HeaderValueMatch::Exact(exact.as_bytes().to_vec()),
            (None, Some(prefix)) => HeaderValueMatch::Prefix(prefix.as_bytes().to_vec()),
            (None, None) => HeaderValueMatch::Present,
        };
        Ok(HeaderMatcher {
            name: spec.name.to_ascii_lowercase(),
            value,
        })
    }

    fn matches(&self, facts: &impl RequestFacts) -> bool {
        let Some(value) = facts.header(&self.name) else {
            return false;
        };
        match &self.value {
            HeaderValueMatch::Present => true,
            HeaderValueMatch::Exact(exact) => value == exact.as_slice(),
            HeaderValueMatch::Prefix(prefix) => value.starts_with(prefix),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Matcher {
    host: Option<HostMatcher>,
    path: Option<PathMatcher>,
    grpc: Option<bool>,
    header: Option<HeaderMatcher>,
    query: Vec<String>,
}

fn compile_query_name(name: &str) -> Result<String, RouteError> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"&=#?".contains(&b));
    if !valid {
        return Err(RouteError::BadQueryName(name.to_string()));
    }
    Ok(name.to_string())
}

impl Matcher {
    pub(crate) fn compile(spec: &MatchSpec) -> Result<Self, RouteError> {
        Ok(Matcher {
            host: spec.host.as_deref().map(HostMatcher::compile).transpose()?,
            path: spec
                .path_prefix
                .as_deref()
                .map(PathMatcher::compile)
                .transpose()?,
            grpc: spec.grpc,
            header: spec
                .header
                .as_ref()
                .map(HeaderMatcher::compile)
                .transpose()?,
            query: spec
                .query
                .iter()
                .map(|name| compile_query_name(name))
                .collect::<Result<_, _>>()?,
        })
    }

    pub(crate) fn matches(&self, facts: &impl RequestFacts) -> bool {
        if let Some(grpc) = self.grpc {
            if grpc != facts.is_grpc() {
                return false;
            }
        }
        if let Some(host) = &self.host {
            match facts.host() {
                Some(h) if host.matches(h) => {}
                _ => return false,
            }
        }
        if let Some(path) = &self.path {
            if !path.matches(facts.path()) {
                return false;
            }
        }
        if let Some(header) = &self.header {
            if !header.matches(facts) {
                return false;
            }
        }
        if !self.query.is_empty() {
            let Some(query) = facts.query() else {
                return false;
            };
            if !self.query.iter().all(|name| query_has_name(query, name)) {
                return false;
            }
        }
        true
    }
}
