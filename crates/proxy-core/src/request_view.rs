//! What the pipeline's stages read off a request, and the rewrites `sanitize` and `route`
//! make: the host and authority the client asked for, the path's normal form, the HTTP/2
//! header list size, the client address behind trusted proxies, whether the host and path
//! a request names can be routed at all, and the head checks that refuse a request first.

use std::net::IpAddr;

use http::header::HOST;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Version};
use hyper::body::Incoming;
use pachgate_client_policy::CidrSet;
use pachgate_routing::{normalize_path, RequestFacts};

use crate::connection::ServerLimits;
use crate::error::ProxyError;
use crate::rejection::Rejection;

/// The client address behind trusted proxies: walking `X-Forwarded-For` from the right,
/// the first address that is not a trusted proxy. Untrusted peers' headers are ignored.
pub(crate) fn forwarded_client(
    headers: &http::HeaderMap,
    peer: IpAddr,
    trusted: &CidrSet,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let values: Vec<&str> = headers
        .get_all(&crate::headers::X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for entry in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let Some(address) = forwarded_address(entry.trim()) else {
            break; // garbage: trust nothing further left
        };
        client = address;
        if !trusted.contains(address) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, or an address with a port (`203.0.113.7:5555`,
/// `[2001:db8::7]:443`), as some load balancers write them.
fn forwarded_address(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// Why the host or path a request names cannot be routed as sent, if it cannot:
/// - userinfo (`user:pass@`) in the target's authority or in Host: routing would match the
///   whole text against a host rule while the upstream and `X-Forwarded-Host` get the host
///   alone, and the credentials would be forwarded and logged. RFC 9110 §4.2.4 makes it an
///   error, RFC 9113 §8.3.1 forbids it in `:authority`;
/// - a Host that is not an authority (RFC 9112 §3.2: 400); an empty one is allowed, as the
///   RFC asks of a client whose target has no authority;
/// - a `%` in the path without two hex digits after it: Go's server (pachd) refuses it
///   (400 on HTTP/1.1, a stream reset on HTTP/2), and
///   it is the one shape whose normal form would not be final (`%3%31` decodes to `%31`);
/// - the asterisk form (`GET * HTTP/1.1`) on anything but OPTIONS (RFC 9112 §3.2.4): no
///   path rule matches it, so it could only reach a route chosen by host or header, and
///   travel upstream as it came. (h2 refuses a `:path` without its `/` itself.)
pub(crate) fn misnamed_target<B>(request: &Request<B>) -> Option<&'static str> {
    match request.uri().authority() {
        Some(authority) => {
            if authority.as_str().contains('@') {
                return Some("userinfo in the request target's authority\n");
            }
        }
        None => {
            if let Some(host) = request.headers().get(HOST) {
                let host = host.as_bytes();
                if host.contains(&b'@') {
                    return Some("userinfo in Host\n");
                }
                if !host.is_empty() && Authority::try_from(host).is_err() {
                    return Some("Host is not host[:port]\n");
                }
            }
        }
    }
    let path = request.uri().path();
    if pachgate_routing::has_invalid_escape(path) {
        return Some("invalid percent-encoding in the path\n");
    }
    let method = request.method();
    if !path.starts_with('/')
        && method != http::Method::CONNECT
        && !(path == "*" && method == http::Method::OPTIONS)
    {
        return Some("the request path must start with /\n");
    }
    None
}

/// Rewrites the request path to its normal form (see `normalize_path`), keeping the query.
/// Returns the target as sent when it changed it (a cheap clone: the bytes are shared).
pub(crate) fn normalize_request_path<B>(
    request: &mut Request<B>,
) -> Result<Option<PathAndQuery>, ProxyError> {
    let Some(path_and_query) = request.uri().path_and_query() else {
        return Ok(None);
    };
    let Some(path) = normalize_path(path_and_query.path()) else {
        return Ok(None);
    };
    let original = path_and_query.clone();
    let target = match path_and_query.query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.path_and_query = Some(
        target
            .parse()
            .map_err(|_| ProxyError::BadRequest("bad request target\n"))?,
    );
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    Ok(Some(original))
}

/// Puts back the target `normalize_request_path` replaced.
pub(crate) fn restore_request_target<B>(
    request: &mut Request<B>,
    original: PathAndQuery,
) -> Result<(), ProxyError> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.path_and_query = Some(original);
    *request.uri_mut() =
        http::Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("bad request target\n"))?;
    Ok(())
}

/// A request's header list size as RFC 9113 §6.5.2 counts it (name + value + 32 each,
/// pseudo-headers included), for HTTP/2 requests.
pub(crate) fn h2_header_list_size<B>(request: &Request<B>) -> usize {
    const ENTRY: usize = 32;
    let uri = request.uri();
    let mut size = ":method".len() + request.method().as_str().len() + ENTRY;
    if let Some(path) = uri.path_and_query() {
        size += ":path".len() + path.as_str().len() + ENTRY;
    }
    if let Some(scheme) = uri.scheme() {
        size += ":scheme".len() + scheme.as_str().len() + ENTRY;
    }
    if let Some(authority) = uri.authority() {
        size += ":authority".len() + authority.as_str().len() + ENTRY;
    }
    request.headers().iter().fold(size, |size, (name, value)| {
        size + name.as_str().len() + value.len() + ENTRY
    })
}

/// Borrowed request parts for the route table.
pub(crate) struct Facts<'a> {
    request: &'a Request<Incoming>,
    host: Option<&'a str>,
    grpc: bool,
}

impl<'a> Facts<'a> {
    pub(crate) fn of(request: &'a Request<Incoming>, grpc: bool) -> Self {
        let authority = request
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| request.headers().get(HOST).and_then(|v| v.to_str().ok()));
        Facts {
            request,
            host: authority.map(strip_port),
            grpc,
        }
    }

    /// The authority the client asked for (`host[:port]`), for `:authority` / `Host` upstream.
    pub(crate) fn authority(&self) -> Option<Authority> {
        if let Some(authority) = self.request.uri().authority() {
            return Some(authority.clone());
        }
        self.request
            .headers()
            .get(HOST)
            .and_then(|v| Authority::try_from(v.as_bytes()).ok())
    }
}

impl RequestFacts for Facts<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn path(&self) -> &str {
        self.request.uri().path()
    }
    fn is_grpc(&self) -> bool {
        self.grpc
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.request.headers().get(name).map(|v| v.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.request.uri().query()
    }
}

/// `host:port` → `host`; `[::1]:443` → `::1`.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    }
}

/// Whether pachgate refuses the request's head before routing it: a CONNECT that is no
/// websocket, a header list over `max_header_list_size` (HTTP/2; hyper answers HTTP/1 heads
/// itself), more than one Host, a target no route can name ([`misnamed_target`]), or an
/// underscore in a header name when configured. `None`: go on.
pub(crate) fn refuse_head<B>(request: &Request<B>, limits: &ServerLimits) -> Option<Rejection> {
    if request.method() == http::Method::CONNECT
        && !crate::websocket::is_extended_connect_websocket(request)
    {
        return Some(Rejection::Error(ProxyError::ConnectNotSupported));
    }
    if request.version() == Version::HTTP_2
        && h2_header_list_size(request) > limits.max_header_list_size as usize
    {
        return Some(Rejection::HeadersTooLarge);
    }
    // RFC 9112 §3.2: more than one Host line is a 400. Routing and the gate would read the
    // first, an upstream perhaps the last.
    let mut hosts = request.headers().get_all(HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Some(Rejection::Error(ProxyError::BadRequest(
            "more than one Host header\n",
        )));
    }
    if let Some(reason) = misnamed_target(request) {
        return Some(Rejection::Error(ProxyError::BadRequest(reason)));
    }
    if limits.reject_underscore_headers
        && request
            .headers()
            .keys()
            .any(|name| name.as_str().contains('_'))
    {
        return Some(Rejection::UnderscoreInHeaderName);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{forwarded_client, strip_port};

    /// Entries with ports are read as their addresses: the client behind a balancer that
    /// writes `ip:port` is that ip, not the balancer itself.
    #[test]
    fn forwarded_entries_with_ports_are_addresses() {
        let trusted = pachgate_client_policy::CidrSet::new(vec!["10.0.0.0/8".parse().unwrap()]);
        let peer = "10.0.0.1".parse().unwrap();
        for (chain, want) in [
            ("203.0.113.7:5555", "203.0.113.7"),
            ("[2001:db8::7]:443, 10.0.0.2", "2001:db8::7"),
            ("198.51.100.1, 203.0.113.7", "203.0.113.7"),
            ("garbage, 10.0.0.9", "10.0.0.9"),
            ("garbage", "10.0.0.1"),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-forwarded-for", chain.parse().unwrap());
            let client = forwarded_client(&headers, peer, &trusted);
            assert_eq!(client.to_string(), want, "{chain}");
        }
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        for (input, want) in [
            ("example.com", "example.com"),
            ("example.com:8443", "example.com"),
            ("[::1]:8443", "::1"),
            ("[::1]", "::1"),
            ("127.0.0.1:1", "127.0.0.1"),
        ] {
            assert_eq!(strip_port(input), want);
        }
    }
}
