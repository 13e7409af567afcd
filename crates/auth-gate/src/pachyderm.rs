//! Pachyderm's facts: which gRPC methods work without a token, and where the token travels.

use std::borrow::Cow;

/// Which Pachyderm release line pachd runs: the public methods and package names differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PachydermLine {
    /// 2.x: `_v2` packages.
    #[default]
    V2,
    /// 1.x: packages without the `_v2` suffix.
    V1,
}

/// Methods pachd 2.x serves without a token: its auth interceptor's list, the same from 2.5
/// to 2.12. `GetFileTAR` is public there because pachd guards it with file-set capabilities
/// instead of a token.
const PUBLIC_METHODS_V2: &[&str] = &[
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
    "/pfs_v2.API/GetFileTAR",
];

/// Methods pachd 1.x serves without a token (its packages have no `_v2` suffix, and its own
/// health service is open).
const PUBLIC_METHODS_V1: &[&str] = &[
    "/admin.API/InspectCluster",
    "/auth.API/Activate",
    "/auth.API/Authenticate",
    "/auth.API/Authorize",
    "/auth.API/WhoAmI",
    "/auth.API/GetOIDCLogin",
    "/enterprise.API/GetState",
    // 1.x checks no caller here (enterprise/server/api_server.go, v1.13.4): the activation
    // code is the credential.
    "/enterprise.API/Activate",
    "/versionpb.API/GetVersion",
    "/health.Health/Health",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
];

/// pachd 2.x's methods whose response is a stream (`returns (stream …)` in its protos,
/// v2.11.6; 2.12 adds ListSnapshot). Through the grpc-gateway their errors come wrapped as
/// `{"error": {…}}`, even before the first message, and the console reads them only so.
const SERVER_STREAMING_V2: &[&str] = &[
    "/debug_v2.Debug/Binary",
    "/debug_v2.Debug/Dump",
    "/debug_v2.Debug/DumpV2",
    "/debug_v2.Debug/Profile",
    "/debug_v2.Debug/Trace",
    "/logs.API/GetLogs",
    "/pfs_v2.API/DiffFile",
    "/pfs_v2.API/FindCommits",
    "/pfs_v2.API/Fsck",
    "/pfs_v2.API/GetFile",
    "/pfs_v2.API/GetFileTAR",
    "/pfs_v2.API/GlobFile",
    "/pfs_v2.API/InspectCommitSet",
    "/pfs_v2.API/ListBranch",
    "/pfs_v2.API/ListCommit",
    "/pfs_v2.API/ListCommitSet",
    "/pfs_v2.API/ListFile",
    "/pfs_v2.API/ListProject",
    "/pfs_v2.API/ListRepo",
    "/pfs_v2.API/ListTask",
    "/pfs_v2.API/SubscribeCommit",
    "/pfs_v2.API/WalkBranchProvenance",
    "/pfs_v2.API/WalkBranchSubvenance",
    "/pfs_v2.API/WalkCommitProvenance",
    "/pfs_v2.API/WalkCommitSubvenance",
    "/pfs_v2.API/WalkFile",
    "/pps_v2.API/CheckStatus",
    "/pps_v2.API/CreateDatum",
    "/pps_v2.API/GetKubeEvents",
    "/pps_v2.API/GetLogs",
    "/pps_v2.API/InspectJobSet",
    "/pps_v2.API/ListDatum",
    "/pps_v2.API/ListJob",
    "/pps_v2.API/ListJobSet",
    "/pps_v2.API/ListPipeline",
    "/pps_v2.API/ListTask",
    "/pps_v2.API/QueryLoki",
    "/pps_v2.API/SubscribeJob",
    "/proxy.API/Listen",
    "/snapshot.API/ListSnapshot",
];

/// Whether pachd answers this method with a stream (its grpc-gateway errors are then
/// wrapped as `{"error": …}`).
pub fn is_server_streaming_method(method: &str) -> bool {
    SERVER_STREAMING_V2.contains(&method)
}

impl PachydermLine {
    pub fn public_methods(self) -> &'static [&'static str] {
        match self {
            PachydermLine::V2 => PUBLIC_METHODS_V2,
            PachydermLine::V1 => PUBLIC_METHODS_V1,
        }
    }

    /// Exact match only: a path that merely resembles a public method is not public.
    pub fn is_public_method(self, path: &str) -> bool {
        self.public_methods().contains(&path)
    }

    /// Where WhoAmI lives on this line.
    pub fn who_am_i_method(self) -> &'static str {
        match self {
            PachydermLine::V2 => "/auth_v2.API/WhoAmI",
            PachydermLine::V1 => "/auth.API/WhoAmI",
        }
    }
}

/// Which part of pachd's HTTP server (port 1659) a path reaches; each reads the token in
/// its own place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PachdHttpSurface<'a> {
    /// `/api/<package.Service>/<Method>`: the grpc-gateway. Every request header but
    /// Content-Length becomes gRPC metadata, so the token is the `authn-token` header and
    /// the method's own rules (public or not) apply. `method` is `/<package.Service>/<Method>`.
    Gateway { method: &'a str },
    /// `/pfs…`: pachd's file server (previews and downloads of one file). It reads the
    /// `authn-token` query parameter first and the header second.
    FileServer,
    /// `/archive…`: pachd's ZIP downloads, which read the token as the file server does but
    /// answer `200` before they use it, and report a refused one inside the ZIP.
    Archive,
    /// Anything else: the `authn-token` header.
    Other,
}

fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Classifies a (normalised) request path the way pachd's HTTP server routes it.
pub fn pachd_http_surface(path: &str) -> PachdHttpSurface<'_> {
    if let Some(rest) = path.strip_prefix("/api") {
        if rest.starts_with('/') {
            return PachdHttpSurface::Gateway { method: rest };
        }
    }
    if has_segment_prefix(path, "/pfs") {
        return PachdHttpSurface::FileServer;
    }
    if has_segment_prefix(path, "/archive") {
        return PachdHttpSurface::Archive;
    }
    PachdHttpSurface::Other
}

impl PachdHttpSurface<'_> {
    /// The file handlers, which take the `authn-token` query parameter before the header
    /// ([`token_for_pachd_files`]).
    pub fn reads_query_token(&self) -> bool {
        matches!(
            self,
            PachdHttpSurface::FileServer | PachdHttpSurface::Archive
        )
    }

    /// Whether pachd's file handlers answer a request on this surface before they use any
    /// token (`src/internal/fileserver`, `src/internal/archiveserver`), so the gate has
    /// nothing to stop: `/pfs` answers a method other than GET or HEAD with 405, a path too
    /// short to name a file (fewer than six `/`-separated parts) with 404, or with a 301 to
    /// the same path and a `/` when the fifth part is not empty; `/archive` answers a method
    /// other than GET with 405. `path` is the normalised path the surface was read from. A
    /// CONNECT (a websocket over HTTP/2) counts as the GET it becomes on its way to pachd's
    /// HTTP/1.1 port.
    pub fn answers_without_token(&self, method: &http::Method, path: &str) -> bool {
        let get = *method == http::Method::GET || *method == http::Method::CONNECT;
        match self {
            PachdHttpSurface::FileServer => {
                let reads = get || *method == http::Method::HEAD;
                !reads || go_path_parts(path) < 6
            }
            PachdHttpSurface::Archive => !get,
            _ => false,
        }
    }
}

/// How many parts Go's `strings.Split(r.URL.Path, "/")` makes of the path pachd sees:
/// `/pfs/p/r/b/f` is `["", "pfs", "p", "r", "b", "f"]`. pachd splits the *decoded* path,
/// in which a `%2F` (kept encoded in the normalised path) is a `/` too.
fn go_path_parts(path: &str) -> usize {
    let slashes = path.bytes().filter(|&b| b == b'/').count();
    let encoded = path
        .as_bytes()
        .windows(3)
        .filter(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'F' || w[2] == b'f'))
        .count();
    1 + slashes + encoded
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLookup<'a> {
    Missing,
    /// One gRPC `authn-token` value that holds no token (empty, spaces, or not UTF-8): the
    /// console sends an empty one before login, pachyderm-sdk without a token. pachd looks
    /// it up like any token and answers its bad-token error, unless auth is off.
    Blank,
    /// Several different tokens: refuse instead of guessing which one the upstream uses.
    Ambiguous,
    /// Borrowed from the request, or decoded from a percent-encoded query parameter.
    Found(Cow<'a, str>),
}

impl TokenLookup<'_> {
    /// The token, when exactly one was found.
    pub fn token(&self) -> Option<&str> {
        match self {
            TokenLookup::Found(token) => Some(token),
            _ => None,
        }
    }
}

fn as_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    (!text.is_empty()).then_some(text)
}

/// gRPC: the `authn-token` metadata values, in order. Also pachd's grpc-gateway (`/api/`),
/// which hands every request header on as metadata. pachd refuses more than one value
/// ("multiple authentication token keys"), so several are ambiguous; an empty value (the
/// console sends one before login) is [`TokenLookup::Blank`].
pub fn token_from_grpc_metadata<'a>(values: impl Iterator<Item = &'a [u8]>) -> TokenLookup<'a> {
    let mut found = None;
    for value in values {
        if found.is_some() {
            return TokenLookup::Ambiguous;
        }
        found = Some(value);
    }
    match found.map(as_token) {
        Some(Some(token)) => TokenLookup::Found(Cow::Borrowed(token)),
        Some(None) => TokenLookup::Blank,
        None => TokenLookup::Missing,
    }
}

/// pachd's file handlers (`/pfs`, `/archive`): the first `authn-token` query parameter if it
/// is not empty, else the first `authn-token` header — exactly the one pachd will use, so
/// other copies are not ambiguous (pachd never looks at them).
pub fn token_for_pachd_files<'a>(
    query: Option<&'a str>,
    mut authn_token_headers: impl Iterator<Item = &'a [u8]>,
) -> TokenLookup<'a> {
    if let Some(token) = query.and_then(|query| go_query_get(query, "authn-token")) {
        if !token.is_empty() {
            return TokenLookup::Found(token);
        }
    }
    match authn_token_headers.next().and_then(as_token) {
        Some(token) => TokenLookup::Found(Cow::Borrowed(token)),
        None => TokenLookup::Missing,
    }
}

/// The first value of `name`, as Go's `url.Values.Get` after `url.ParseQuery` gives it (what
/// pachd reads): pairs split on `&`; a pair holding `;` or a malformed `%` escape is skipped;
/// `+` is a space and `%XX` a byte; nothing is trimmed.
fn go_query_get<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.contains(';'))
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((query_decode(key)?, query_decode(value)?))
        })
        .find(|(key, _)| key == name)
        .map(|(_, value)| value)
}

/// `+` as a space and `%XX` as a byte; `None` for a malformed escape (Go skips the pair).
/// Borrowed when there is nothing to decode. Bytes that are not UTF-8 cannot be a pachd
/// token; they are kept visible as U+FFFD so the token is still checked (and refused).
fn query_decode(text: &str) -> Option<Cow<'_, str>> {
    if !text.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(text));
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
                let (high, low) = (hex(i + 1)?, hex(i + 2)?);
                out.push((high * 16 + low) as u8);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    Some(Cow::Owned(String::from_utf8_lossy(&out).into_owned()))
}

/// `Authorization: Bearer TOKEN` (static-token routes). Several headers with different
/// tokens are ambiguous.
pub fn bearer_token<'a>(authorization_headers: impl Iterator<Item = &'a [u8]>) -> TokenLookup<'a> {
    let mut found: Option<&'a str> = None;
    for value in authorization_headers {
        let Ok(text) = std::str::from_utf8(value) else {
            continue;
        };
        let bearer = text
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .and_then(|(_, token)| as_token(token.as_bytes()));
        match (bearer, found) {
            (None, _) => {}
            (Some(token), None) => found = Some(token),
            (Some(token), Some(existing)) if token == existing => {}
            (Some(_), Some(_)) => return TokenLookup::Ambiguous,
        }
    }
    match found {
        Some(token) => TokenLookup::Found(Cow::Borrowed(token)),
        None => TokenLookup::Missing,
    }
}
