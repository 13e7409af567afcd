//! Header rewriting between client and upstream: hop-by-hop headers removed (RFC 9110 §7.6.1),
//! an untrusted client's own `Forwarded` and `X-Real-IP` dropped, `X-Forwarded-*` set.
//! Edits happen in place on the request's own map; nothing is copied.

use http::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, COOKIE, FORWARDED, PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Removes hop-by-hop headers and every header the `Connection` header names.
/// `te: trailers` survives: gRPC servers require it to know the client reads trailers.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, false);
}

/// [`strip_hop_by_hop`] for a request on its way upstream. With `drop_client_claims` (the
/// peer is not a trusted proxy) the client's own claims of where it connects from go too:
/// `Forwarded` and `X-Real-IP`, which an upstream may believe as it would a proxy's, as
/// `X-Forwarded-For` is replaced ([`set_forwarded`]). Traefik removes `X-Real-Ip` from peers
/// it does not trust; `Forwarded` (RFC 7239) carries the same claim. A trusted proxy's are
/// kept.
pub fn strip_for_upstream(headers: &mut HeaderMap, drop_client_claims: bool) {
    strip(headers, drop_client_claims);
}

fn strip(headers: &mut HeaderMap, drop_client_claims: bool) {
    // One pass over the fields first: nearly every request and response has none of these
    // (HTTP/2 forbids most of them), and a look-up per name costs a hash and a probe each,
    // nine times, on both the request and the response.
    let found = headers.iter().any(|(name, value)| {
        is_always_hop_by_hop(name)
            || (name == TE && !te_is_trailers(value))
            || (drop_client_claims && (name == FORWARDED || name == X_REAL_IP))
    });
    if found {
        strip_found_hop_by_hop(headers);
        if drop_client_claims {
            headers.remove(FORWARDED);
            headers.remove(&X_REAL_IP);
        }
    }
}

/// The names that never cross a hop (`te` is judged by its value).
fn is_always_hop_by_hop(name: &HeaderName) -> bool {
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name == TRAILER
        || name == PROXY_AUTHENTICATE
        || name == PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

#[cold]
fn strip_found_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        // Names listed in Connection are hop-by-hop for this one hop only (RFC 9110 §7.6.1).
        let listed: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .filter(|name| name != TE)
            .collect();
        for name in listed {
            headers.remove(name);
        }
        headers.remove(CONNECTION);
    }
    for name in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &PROXY_AUTHENTICATE,
        &PROXY_AUTHORIZATION,
        &TRAILER,
        &TRANSFER_ENCODING,
        &UPGRADE,
    ] {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    // Found a `te` line other than `trailers` (or another hop-by-hop field): every `te` line
    // but `trailers` goes, and one `trailers` stays if any line said it.
    let te = headers.get_all(TE);
    if te.iter().any(|value| !te_is_trailers(value)) {
        let trailers = te.iter().any(te_is_trailers);
        headers.remove(TE);
        if trailers {
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
    }
}

fn te_is_trailers(value: &HeaderValue) -> bool {
    // Only `trailers` may cross a hop (RFC 9113 §8.2.2); codings are hop-local.
    value
        .as_bytes()
        .trim_ascii()
        .eq_ignore_ascii_case(b"trailers")
}

/// Appends the client's address to `X-Forwarded-For` (`keep_chain`: the peer is a trusted
/// proxy; otherwise the client's address replaces whatever it claimed) and sets
/// `X-Forwarded-Proto` and `X-Forwarded-Host` (the host the client asked for).
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    proto: &HeaderValue,
    host: Option<&str>,
    keep_chain: bool,
) {
    let chain = match keep_chain {
        true => headers.get(&X_FORWARDED_FOR),
        // Replaced whole by `insert` below.
        false => None,
    };
    let forwarded_for = match chain {
        None => client_ip.clone(),
        Some(_) => {
            // Several X-Forwarded-For lines are one comma-separated list; keep one line.
            let mut joined = Vec::with_capacity(64);
            for value in headers.get_all(&X_FORWARDED_FOR) {
                joined.extend_from_slice(value.as_bytes());
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client_ip.clone())
        }
    };
    headers.insert(X_FORWARDED_FOR.clone(), forwarded_for);
    headers.insert(X_FORWARDED_PROTO.clone(), proto.clone());
    match host.and_then(|h| HeaderValue::from_str(h).ok()) {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST.clone(), host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// Joins several `cookie` fields into one with `; `, as RFC 9113 §8.2.3 requires before a
/// request leaves HTTP/2: h2 clients (browsers) send each cookie as a field of its own, and
/// an HTTP/1.1 server may read only one `Cookie` line.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(256);
    for value in headers.get_all(COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(COOKIE, value);
    }
}

/// True when the request asks for a websocket over an HTTP/1.1 Upgrade.
pub fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    let upgrade_to_websocket = headers
        .get(UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    upgrade_to_websocket
        && headers.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .map(|v| {
                    v.split(',')
                        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
                })
                .unwrap_or(false)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn hop_by_hop_headers_are_stripped() {
        // (headers sent, header names that must survive)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (
                &[
                    ("connection", "keep-alive, x-secret"),
                    ("x-secret", "1"),
                    ("keep-alive", "timeout=5"),
                    ("content-type", "application/grpc"),
                    ("te", "trailers"),
                ],
                &["content-type", "te"],
            ),
            (&[("te", "gzip"), ("x-a", "1")], &["x-a"]),
            // Only the `trailers` line of several survives.
            (
                &[("te", "trailers"), ("te", "gzip"), ("x-a", "1")],
                &["te", "x-a"],
            ),
            (&[("te", "gzip"), ("te", "trailers")], &["te"]),
            (&[("x-a", "1"), ("keep-alive", "5")], &["x-a"]),
            (&[("x-a", "1"), ("proxy-connection", "close")], &["x-a"]),
            (&[("x-a", "1"), ("proxy-authenticate", "Basic")], &["x-a"]),
            (&[("x-a", "1"), ("connection", "x-a")], &[]),
            (&[("te", "trailers"), ("x-a", "1")], &["te", "x-a"]),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("upgrade", "h2c"),
                    ("proxy-authorization", "Basic x"),
                    ("trailer", "grpc-status"),
                    ("authn-token", "t"),
                ],
                &["authn-token"],
            ),
        ];
        for (input, kept) in cases {
            let mut headers = map(input);
            strip_hop_by_hop(&mut headers);
            if let Some(te) = headers.get("te") {
                assert_eq!(headers.get_all("te").iter().count(), 1, "input {input:?}");
                assert_eq!(te, "trailers", "input {input:?}");
            }
            let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
            names.sort();
            let mut want = kept.to_vec();
            want.sort();
            assert_eq!(names, want, "input {input:?}");
        }
    }

    #[test]
    fn an_untrusted_clients_own_forwarding_claims_are_dropped() {
        let claims = [
            ("forwarded", "for=198.51.100.7"),
            ("x-real-ip", "198.51.100.7"),
            ("x-a", "1"),
        ];
        let mut headers = map(&claims);
        strip_for_upstream(&mut headers, true);
        let names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-a"]);
        // A trusted proxy's stay, and so do they on a response.
        let mut trusted = map(&claims);
        strip_for_upstream(&mut trusted, false);
        assert_eq!(trusted.len(), 3);
        let mut response = map(&claims);
        strip_hop_by_hop(&mut response);
        assert_eq!(response.len(), 3);
    }

    #[test]
    fn forwarded_for_is_appended_to_a_kept_chain_and_replaces_another() {
        let ip = HeaderValue::from_static("10.0.0.9");
        let https = HeaderValue::from_static("https");
        let claimed = || {
            map(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2"),
                ("x-forwarded-proto", "http"),
            ])
        };
        let mut headers = claimed();
        set_forwarded(&mut headers, &ip, &https, Some("pach.example.com"), true);
        assert_eq!(headers["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(headers["x-forwarded-proto"], "https");
        assert_eq!(headers["x-forwarded-host"], "pach.example.com");

        let mut headers = claimed();
        set_forwarded(&mut headers, &ip, &https, None, false);
        let chain: Vec<_> = headers.get_all("x-forwarded-for").iter().collect();
        assert_eq!(chain, ["10.0.0.9"]);

        let mut fresh = HeaderMap::new();
        set_forwarded(&mut fresh, &ip, &https, None, true);
        assert_eq!(fresh["x-forwarded-for"], "10.0.0.9");
        assert!(!fresh.contains_key("x-forwarded-host"));
    }

    #[test]
    fn websocket_upgrade_detection() {
        assert!(is_websocket_upgrade(&map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ])));
        assert!(!is_websocket_upgrade(&map(&[("upgrade", "websocket")])));
        assert!(!is_websocket_upgrade(&map(&[
            ("connection", "upgrade"),
            ("upgrade", "h2c"),
        ])));
    }
}
