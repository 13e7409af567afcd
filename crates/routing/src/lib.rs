//! The route table: compiles route specs into matchers and picks the first route that matches
//! a request's parts (host, path, gRPC-ness, headers, query parameter names).
//!
//! Pure by design: no I/O, no async, no allocation per match. It knows nothing about HTTP
//! libraries; callers hand it borrowed request parts through [`RequestFacts`].

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
        if candidate.len() >= 3 && candidate[1..3].eq_ignore_ascii_case("2e") {
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
struct Matcher {
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
    fn compile(spec: &MatchSpec) -> Result<Self, RouteError> {
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

    fn matches(&self, facts: &impl RequestFacts) -> bool {
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

/// A compiled route: its matcher and whatever the caller routes to (`T`).
#[derive(Debug, Clone)]
pub struct Route<T> {
    pub name: String,
    pub target: T,
    matcher: Matcher,
}

/// Routes in configuration order; the first that matches wins.
#[derive(Debug, Clone)]
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
}

impl<T> RouteTable<T> {
    /// Compiles specs in order. On error, returns the index of the offending spec.
    pub fn compile(
        specs: impl IntoIterator<Item = (String, MatchSpec, T)>,
    ) -> Result<Self, (usize, RouteError)> {
        let routes = specs
            .into_iter()
            .enumerate()
            .map(|(index, (name, spec, target))| {
                let matcher = Matcher::compile(&spec).map_err(|e| (index, e))?;
                Ok(Route {
                    name,
                    target,
                    matcher,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RouteTable { routes })
    }

    pub fn pick(&self, facts: &impl RequestFacts) -> Option<&Route<T>> {
        self.routes.iter().find(|r| r.matcher.matches(facts))
    }

    pub fn routes(&self) -> &[Route<T>] {
        &self.routes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Facts<'a> {
        host: Option<&'a str>,
        path: &'a str,
        grpc: bool,
        headers: &'a [(&'a str, &'a str)],
        query: Option<&'a str>,
    }

    impl RequestFacts for Facts<'_> {
        fn host(&self) -> Option<&str> {
            self.host
        }
        fn path(&self) -> &str {
            self.path
        }
        fn is_grpc(&self) -> bool {
            self.grpc
        }
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes())
        }
        fn query(&self) -> Option<&str> {
            self.query
        }
    }

    fn spec(host: Option<&str>, path: Option<&str>, grpc: Option<bool>) -> MatchSpec {
        MatchSpec {
            host: host.map(str::to_string),
            path_prefix: path.map(str::to_string),
            grpc,
            header: None,
            query: Vec::new(),
        }
    }

    fn s3_header() -> MatchSpec {
        MatchSpec {
            header: Some(HeaderSpec {
                name: "Authorization".into(),
                exact: None,
                prefix: Some("AWS4-HMAC-SHA256".into()),
            }),
            ..MatchSpec::default()
        }
    }

    fn query(names: &[&str]) -> MatchSpec {
        MatchSpec {
            query: names.iter().map(|n| n.to_string()).collect(),
            ..MatchSpec::default()
        }
    }

    /// The Pachyderm 2.x table from DESIGN.md, in its order, with pachgate's presigned-URL
    /// routes next to the signed-header one.
    fn pachyderm_table() -> RouteTable<&'static str> {
        RouteTable::compile([
            (
                "grpc".to_string(),
                spec(None, None, Some(true)),
                "pachd-grpc",
            ),
            ("s3".to_string(), s3_header(), "pachd-s3"),
            (
                "s3-presigned-v4".to_string(),
                query(&["X-Amz-Signature"]),
                "pachd-s3",
            ),
            (
                "s3-presigned-v2".to_string(),
                query(&["Signature", "AWSAccessKeyId"]),
                "pachd-s3",
            ),
            ("dex".to_string(), spec(None, Some("/dex"), None), "dex"),
            (
                "oidc".to_string(),
                spec(None, Some("/authorization-code/callback"), None),
                "oidc",
            ),
            (
                "archive".to_string(),
                spec(None, Some("/archive/"), None),
                "pachd-http",
            ),
            (
                "api".to_string(),
                spec(None, Some("/api/"), None),
                "pachd-http",
            ),
            (
                "console".to_string(),
                spec(None, Some("/"), None),
                "console",
            ),
        ])
        .unwrap()
    }

    #[test]
    fn pachyderm_preset_routes_first_match_wins() {
        let table = pachyderm_table();
        // (path[?query], is gRPC, headers, expected target)
        type Case<'a> = (&'a str, bool, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("/pfs_v2.API/ListRepo", true, &[], "pachd-grpc"),
            (
                "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
                false,
                &[],
                "pachd-s3",
            ),
            (
                "/bucket/key?AWSAccessKeyId=AK&Expires=1&Signature=abc",
                false,
                &[],
                "pachd-s3",
            ),
            // Only half of a v2 presigned URL's names: the console's.
            ("/bucket/key?Signature=abc", false, &[], "console"),
            ("/dex/auth?X-Amz-Signature", false, &[], "pachd-s3"),
            // gRPC wins over any path rule, even one that looks like another route.
            ("/dex/whatever", true, &[], "pachd-grpc"),
            (
                "/bucket/key",
                false,
                &[("authorization", "AWS4-HMAC-SHA256 Credential=x")],
                "pachd-s3",
            ),
            ("/dex", false, &[], "dex"),
            ("/dex/auth", false, &[], "dex"),
            ("/dexter", false, &[], "console"),
            ("/authorization-code/callback", false, &[], "oidc"),
            ("/archive/abc.zip", false, &[], "pachd-http"),
            ("/archive", false, &[], "pachd-http"),
            ("/archived", false, &[], "console"),
            ("/api/v1/x", false, &[], "pachd-http"),
            ("/", false, &[], "console"),
            ("/lineage/default", false, &[], "console"),
        ];
        for (target, grpc, headers, want) in cases {
            let (path, query) = match target.split_once('?') {
                Some((path, query)) => (path, Some(query)),
                None => (*target, None),
            };
            let facts = Facts {
                host: Some("pach.example.com"),
                path,
                grpc: *grpc,
                headers,
                query,
            };
            let got = table.pick(&facts).map(|r| r.target);
            assert_eq!(got, Some(*want), "target {target} grpc {grpc}");
        }
    }

    #[test]
    fn host_matching_exact_and_wildcard() {
        let table = RouteTable::compile([
            (
                "exact".into(),
                spec(Some("Console.Example.com"), None, None),
                1,
            ),
            (
                "wild".into(),
                spec(Some("*.pach.example.com"), None, None),
                2,
            ),
        ])
        .unwrap();
        let cases: &[(Option<&str>, Option<i32>)] = &[
            (Some("console.example.com"), Some(1)),
            (Some("CONSOLE.EXAMPLE.COM"), Some(1)),
            (Some("console.example.com."), Some(1)),
            (Some("a.pach.example.com"), Some(2)),
            (Some("a.b.pach.example.com"), Some(2)),
            (Some("pach.example.com"), None),
            (Some("xpach.example.com"), None),
            (Some("other.example.com"), None),
            (None, None),
        ];
        for (host, want) in cases {
            let facts = Facts {
                host: *host,
                path: "/",
                grpc: false,
                headers: &[],
                query: None,
            };
            assert_eq!(table.pick(&facts).map(|r| r.target), *want, "host {host:?}");
        }
    }

    #[test]
    fn grpc_false_excludes_grpc_and_header_presence() {
        let table = RouteTable::compile([
            ("not-grpc".into(), spec(None, None, Some(false)), 1),
            (
                "has-header".into(),
                MatchSpec {
                    header: Some(HeaderSpec {
                        name: "x-pach".into(),
                        ..HeaderSpec::default()
                    }),
                    ..MatchSpec::default()
                },
                2,
            ),
            (
                "exact".into(),
                MatchSpec {
                    header: Some(HeaderSpec {
                        name: "x-env".into(),
                        exact: Some("prod".into()),
                        prefix: None,
                    }),
                    ..MatchSpec::default()
                },
                3,
            ),
        ])
        .unwrap();
        let pick = |grpc, headers: &[(&str, &str)]| {
            table
                .pick(&Facts {
                    host: None,
                    path: "/x",
                    grpc,
                    headers,
                    query: None,
                })
                .map(|r| r.target)
        };
        assert_eq!(pick(false, &[]), Some(1));
        assert_eq!(pick(true, &[("x-pach", "")]), Some(2));
        assert_eq!(pick(true, &[("x-env", "prod")]), Some(3));
        assert_eq!(pick(true, &[("x-env", "production")]), None);
        assert_eq!(pick(true, &[]), None);
    }

    #[test]
    fn query_names_match_exactly_and_all_of_them() {
        let v2 = query(&["Signature", "AWSAccessKeyId"]);
        // (query as sent, does the v2 presigned matcher match)
        let cases: &[(Option<&str>, bool)] = &[
            (Some("AWSAccessKeyId=AK&Expires=1&Signature=s"), true),
            (Some("Signature=s&AWSAccessKeyId=AK"), true),
            // A name without `=` is still a name.
            (Some("Signature&AWSAccessKeyId"), true),
            (Some("x=1&Signature=&AWSAccessKeyId=&y"), true),
            (None, false),
            (Some(""), false),
            (Some("Signature=s"), false),
            (Some("AWSAccessKeyId=AK"), false),
            // Case-sensitive, as AWS sends them.
            (Some("signature=s&awsaccesskeyid=AK"), false),
            // A name that extends another is another name.
            (Some("SignatureX=s&AWSAccessKeyId=AK"), false),
            (Some("Signature=s&AWSAccessKeyIdX=AK"), false),
            (Some("XSignature=s&AWSAccessKeyId=AK"), false),
            // A value reading like a name is a value.
            (Some("a=Signature&b=AWSAccessKeyId"), false),
            (Some("a=Signature&AWSAccessKeyId=Signature"), false),
            // Not decoded: `%53` is not `S` to the matcher.
            (Some("%53ignature=s&AWSAccessKeyId=AK"), false),
        ];
        let table = RouteTable::compile([("v2".to_string(), v2, ())]).unwrap();
        for (query, want) in cases {
            let facts = Facts {
                host: None,
                path: "/bucket/key",
                grpc: false,
                headers: &[],
                query: *query,
            };
            assert_eq!(table.pick(&facts).is_some(), *want, "query {query:?}");
        }
    }

    #[test]
    fn compile_errors_name_the_route() {
        let bad: &[(MatchSpec, RouteError)] = &[
            (spec(Some("*"), None, None), RouteError::BadHost("*".into())),
            (
                spec(Some("a.*.com"), None, None),
                RouteError::BadHost("a.*.com".into()),
            ),
            (
                spec(Some("bad host"), None, None),
                RouteError::BadHost("bad host".into()),
            ),
            (
                spec(None, Some("dex"), None),
                RouteError::BadPathPrefix("dex".into()),
            ),
            (
                MatchSpec {
                    header: Some(HeaderSpec {
                        name: "bad name".into(),
                        ..HeaderSpec::default()
                    }),
                    ..MatchSpec::default()
                },
                RouteError::BadHeaderName("bad name".into()),
            ),
            (
                MatchSpec {
                    header: Some(HeaderSpec {
                        name: "x".into(),
                        exact: Some("a".into()),
                        prefix: Some("a".into()),
                    }),
                    ..MatchSpec::default()
                },
                RouteError::HeaderExactAndPrefix,
            ),
            (query(&[""]), RouteError::BadQueryName("".into())),
            (query(&["a=b"]), RouteError::BadQueryName("a=b".into())),
            (query(&["a b"]), RouteError::BadQueryName("a b".into())),
            (query(&["a&b"]), RouteError::BadQueryName("a&b".into())),
        ];
        for (spec, want) in bad {
            let result = RouteTable::compile([
                ("ok".to_string(), MatchSpec::default(), ()),
                ("bad".to_string(), spec.clone(), ()),
            ]);
            assert_eq!(result.err(), Some((1, want.clone())), "spec {spec:?}");
        }
    }

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
