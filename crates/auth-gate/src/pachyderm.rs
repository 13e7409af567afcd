//! Pachyderm's facts: which gRPC methods work without a token, and where the token travels.

/// Methods pachd serves without a token (2.x and 1.x package names). A route with
/// `auth = "pachyderm"` lets exactly these through unauthenticated.
const PUBLIC_METHODS: &[&str] = &[
    "/admin_v2.API/InspectCluster",
    "/auth_v2.API/Activate",
    "/auth_v2.API/Authenticate",
    "/auth_v2.API/Authorize",
    "/auth_v2.API/WhoAmI",
    "/auth_v2.API/GetOIDCLogin",
    "/enterprise_v2.API/GetState",
    "/license_v2.API/Heartbeat",
    "/versionpb_v2.API/GetVersion",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/proxy.API/Listen",
    // Pachyderm 1.x packages have no _v2 suffix.
    "/admin.API/InspectCluster",
    "/auth.API/Activate",
    "/auth.API/Authenticate",
    "/auth.API/Authorize",
    "/auth.API/WhoAmI",
    "/auth.API/GetOIDCLogin",
    "/enterprise.API/GetState",
    "/versionpb.API/GetVersion",
];

/// Exact match only: a path that merely resembles a public method is not public.
pub fn is_public_method(path: &str) -> bool {
    PUBLIC_METHODS.contains(&path)
}

/// `/package.Service/Method` and nothing else: no empty segments, no dot segments, no
/// percent-encoding, no query. Anything else is refused rather than forwarded, so a path
/// cannot look public to the gate and mean something else to pachd.
pub fn is_well_formed_grpc_path(path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else {
        return false;
    };
    let Some((service, method)) = rest.split_once('/') else {
        return false;
    };
    let service_ok = !service.is_empty()
        && !service.starts_with('.')
        && !service.ends_with('.')
        && !service.contains("..")
        && service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    let method_ok = !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    service_ok && method_ok
}

/// Where the gate looked for a token and what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenLookup<'a> {
    Missing,
    /// Several different tokens: refuse instead of guessing which one the upstream uses.
    Ambiguous,
    Found(&'a str),
}

fn as_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    (!text.is_empty()).then_some(text)
}

/// gRPC: the `authn-token` metadata values, in order.
pub fn token_from_grpc_metadata<'a>(values: impl Iterator<Item = &'a [u8]>) -> TokenLookup<'a> {
    let mut found = None;
    for value in values {
        if found.is_some() {
            return TokenLookup::Ambiguous;
        }
        found = Some(value);
    }
    match found.and_then(as_token) {
        Some(token) => TokenLookup::Found(token),
        None => TokenLookup::Missing,
    }
}

/// HTTP: an `authn-token` header, an `authn-token` cookie, or `Authorization: Bearer`.
/// Several sources carrying different tokens are ambiguous.
pub fn token_from_http<'a>(
    authn_token_headers: impl Iterator<Item = &'a [u8]>,
    cookie_headers: impl Iterator<Item = &'a [u8]>,
    authorization_headers: impl Iterator<Item = &'a [u8]>,
) -> TokenLookup<'a> {
    let mut found: Option<&str> = None;
    let mut add = |candidate: Option<&'a str>| -> bool {
        match (candidate, found) {
            (None, _) => true,
            (Some(token), None) => {
                found = Some(token);
                true
            }
            (Some(token), Some(existing)) => token == existing,
        }
    };
    for value in authn_token_headers {
        if !add(as_token(value)) {
            return TokenLookup::Ambiguous;
        }
    }
    for value in cookie_headers {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        for pair in text.split(';') {
            if let Some((name, token)) = pair.trim().split_once('=') {
                if name == "authn-token" && !add(as_token(token.as_bytes())) {
                    return TokenLookup::Ambiguous;
                }
            }
        }
    }
    for value in authorization_headers {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        let bearer = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| as_token(token.as_bytes()));
        if !add(bearer) {
            return TokenLookup::Ambiguous;
        }
    }
    match found {
        Some(token) => TokenLookup::Found(token),
        None => TokenLookup::Missing,
    }
}
