//! What the stand-in pachd's gRPC server, its HTTP server and the dex/OIDC stand-ins share:
//! the token table, OIDC logins in progress, and the record of what each call carried.
//!
//! Token checks follow pachd's auth server (`getAuthenticatedUser` and `auth.GetAuthToken`):
//! no `authn-token` value → UNAUTHENTICATED "no authentication token (try logging in)"; more
//! than one → UNKNOWN "multiple authentication token keys found in context"; an unknown one
//! (the empty string too) → UNAUTHENTICATED "provided auth token is corrupted or has expired
//! (try logging in again)"; an expired one → INTERNAL "token expiration is in the past".

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::pachd::PachdOptions;

/// gRPC status codes the stand-ins produce.
pub mod code {
    pub const UNKNOWN: i32 = 2;
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const INTERNAL: i32 = 13;
    pub const UNAVAILABLE: i32 = 14;
    pub const UNAUTHENTICATED: i32 = 16;
}

pub const NOT_SIGNED_IN: &str = "no authentication token (try logging in)";
pub const BAD_TOKEN: &str =
    "provided auth token is corrupted or has expired (try logging in again)";
pub const EXPIRED_TOKEN: &str = "token expiration is in the past";
pub const MULTIPLE_TOKENS: &str = "multiple authentication token keys found in context";
pub const NOT_ACTIVATED: &str = "the auth service is not activated";

/// The methods pachd 2.x's auth interceptor lets through without a token (the same list from
/// 2.5 to 2.12). Everything else, the stand-in's echo service included, needs one.
pub const PUBLIC_METHODS: &[&str] = &[
    "/admin_v2.API/InspectCluster",
    "/auth_v2.API/Activate",
    "/auth_v2.API/Authenticate",
    "/auth_v2.API/Authorize",
    "/auth_v2.API/WhoAmI",
    "/auth_v2.API/GetOIDCLogin",
    "/enterprise_v2.API/GetState",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/license_v2.API/Heartbeat",
    "/versionpb_v2.API/GetVersion",
    "/proxy.API/Listen",
    "/pfs_v2.API/GetFileTAR",
];

pub fn is_public(method: &str) -> bool {
    PUBLIC_METHODS.contains(&method)
}

/// A gRPC error as pachd would return it: code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PachError {
    pub code: i32,
    pub message: String,
}

impl PachError {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        PachError {
            code,
            message: message.into(),
        }
    }

    /// Go's `status.Error(...).Error()`: "rpc error: code = Unauthenticated desc = …".
    pub fn go_string(&self) -> String {
        format!(
            "rpc error: code = {} desc = {}",
            go_code_name(self.code),
            self.message
        )
    }

    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(tonic::Code::from(self.code), self.message.clone())
    }
}

/// grpc-go's names for codes, as its error strings spell them.
pub fn go_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "Canceled",
        2 => "Unknown",
        3 => "InvalidArgument",
        4 => "DeadlineExceeded",
        5 => "NotFound",
        6 => "AlreadyExists",
        7 => "PermissionDenied",
        8 => "ResourceExhausted",
        9 => "FailedPrecondition",
        10 => "Aborted",
        11 => "OutOfRange",
        12 => "Unimplemented",
        13 => "Internal",
        14 => "Unavailable",
        15 => "DataLoss",
        16 => "Unauthenticated",
        _ => "Unknown",
    }
}

/// Who a valid token belongs to.
#[derive(Debug, Clone)]
pub struct Principal {
    pub username: String,
    pub expires: SystemTime,
}

/// One call as the stand-in saw it. `token` is never the token itself: the username it maps
/// to, or `none`, `invalid`, `expired`, `multiple`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// `grpc` (pachd's gRPC port) or `http` (pachd's HTTP port).
    pub via: &'static str,
    /// gRPC method path (also for `/api/` requests), or the HTTP path for `/pfs`, `/archive`.
    pub method: String,
    pub token: String,
    /// Where the token came from: `metadata`, `header`, `query` or `none`.
    pub source: &'static str,
}

#[derive(Default)]
struct Oidc {
    /// Authorization codes dex issued → the email they stand for.
    codes: HashMap<String, String>,
    /// OIDC states the callback completed → email (or `None`: the exchange failed).
    states: HashMap<String, Option<String>>,
    /// ID tokens dex's token endpoint issued → email.
    id_tokens: HashMap<String, String>,
}

/// Most calls the record keeps.
pub const MAX_SEEN: usize = 10_000;

/// The email every stand-in dex login stands for.
pub const DEX_EMAIL: &str = "standin@example.com";

/// Shared state of one stand-in Pachyderm.
pub struct PachdState {
    pub options: PachdOptions,
    pub started: SystemTime,
    issued: Mutex<HashMap<String, Principal>>,
    oidc: Mutex<Oidc>,
    seen: Mutex<Vec<Seen>>,
    oidc_changed: tokio::sync::Notify,
    nonce: AtomicU64,
    random: RandomState,
}

/// How long a token from `Authenticate` lives (pachd's default session: 30 days).
const SESSION: Duration = Duration::from_secs(30 * 24 * 3600);

impl PachdState {
    pub fn new(options: PachdOptions) -> Self {
        PachdState {
            options,
            started: SystemTime::now(),
            issued: Mutex::default(),
            oidc: Mutex::default(),
            seen: Mutex::default(),
            oidc_changed: tokio::sync::Notify::new(),
            nonce: AtomicU64::new(0),
            random: RandomState::new(),
        }
    }

    pub fn auth_active(&self) -> bool {
        self.options.auth_active
    }

    /// A fresh unguessable-enough string (hex, 32 characters) for tokens and codes.
    pub fn random_hex(&self) -> String {
        let n = self.nonce.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut out = String::with_capacity(32);
        for salt in [0x5eed_u64, 0xfeed] {
            let mut hasher = self.random.build_hasher();
            hasher.write_u64(n);
            hasher.write_u128(now);
            hasher.write_u64(salt);
            out.push_str(&format!("{:016x}", hasher.finish()));
        }
        out
    }

    /// Looks one token up, as pachd's `getAuthenticatedUser` does once it has exactly one.
    pub fn lookup(&self, token: &str) -> Result<Principal, PachError> {
        let options = &self.options;
        if let Some((short, lifetime)) = &options.short_lived {
            if short == token {
                let expires = self.started + *lifetime;
                if SystemTime::now() >= expires {
                    return Err(PachError::new(code::INTERNAL, EXPIRED_TOKEN));
                }
                return Ok(Principal {
                    username: "robot:short-lived".into(),
                    expires,
                });
            }
        }
        if options.expired.iter().any(|t| t == token) {
            return Err(PachError::new(code::INTERNAL, EXPIRED_TOKEN));
        }
        if let Some(username) = options.tokens.get(token) {
            return Ok(Principal {
                username: username.clone(),
                expires: SystemTime::now() + Duration::from_secs(3600),
            });
        }
        let issued = self.issued.lock().unwrap().get(token).cloned();
        match issued {
            Some(principal) if SystemTime::now() >= principal.expires => {
                Err(PachError::new(code::INTERNAL, EXPIRED_TOKEN))
            }
            Some(principal) => Ok(principal),
            None => Err(PachError::new(code::UNAUTHENTICATED, BAD_TOKEN)),
        }
    }

    /// pachd's check of the `authn-token` metadata values of one call (auth active).
    pub fn authenticate(&self, values: &[&[u8]]) -> Result<Principal, PachError> {
        match values {
            [] => Err(PachError::new(code::UNAUTHENTICATED, NOT_SIGNED_IN)),
            [one] => match std::str::from_utf8(one) {
                Ok(token) => self.lookup(token),
                Err(_) => Err(PachError::new(code::UNAUTHENTICATED, BAD_TOKEN)),
            },
            _ => Err(PachError::new(code::UNKNOWN, MULTIPLE_TOKENS)),
        }
    }

    /// What the auth interceptor decides for `method` (`None`: let it through).
    pub fn intercept(&self, method: &str, values: &[&[u8]]) -> Option<PachError> {
        if !self.auth_active() || is_public(method) {
            return None;
        }
        self.authenticate(values).err()
    }

    /// The record-keeping name for the token values a call carried.
    pub fn classify(&self, values: &[&[u8]]) -> String {
        if values.is_empty() {
            return "none".into();
        }
        // The console before login, and the SDKs without a token, send an empty value.
        if values.len() == 1 && values[0].is_empty() {
            return "empty".into();
        }
        match self.authenticate(values) {
            Ok(principal) => principal.username,
            Err(e) if e.message == EXPIRED_TOKEN => "expired".into(),
            Err(e) if e.message == MULTIPLE_TOKENS => "multiple".into(),
            Err(_) => "invalid".into(),
        }
    }

    /// Notes one call (with `record_calls`); the oldest entries go beyond [`MAX_SEEN`].
    pub fn record(&self, via: &'static str, method: &str, values: &[&[u8]], source: &'static str) {
        if !self.options.record_calls {
            return;
        }
        let token = self.classify(values);
        let mut seen = self.seen.lock().unwrap();
        if seen.len() >= MAX_SEEN {
            seen.drain(..MAX_SEEN / 2);
        }
        seen.push(Seen {
            via,
            method: method.to_string(),
            token,
            source,
        });
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
    }

    /// A new pach token for `username`, valid for a session.
    pub fn issue_token(&self, username: String) -> String {
        let token = self.random_hex();
        self.issued.lock().unwrap().insert(
            token.clone(),
            Principal {
                username,
                expires: SystemTime::now() + SESSION,
            },
        );
        token
    }

    /// dex: an authorization code for the stand-in user.
    pub fn issue_code(&self) -> String {
        let code = self.random_hex();
        self.oidc
            .lock()
            .unwrap()
            .codes
            .insert(code.clone(), DEX_EMAIL.to_string());
        code
    }

    /// dex's token endpoint: trades a code for an ID token (opaque here, not a JWT).
    pub fn exchange_code(&self, code: &str) -> Option<String> {
        let mut oidc = self.oidc.lock().unwrap();
        let email = oidc.codes.remove(code)?;
        let id_token = format!("standin-id-{}", self.random_hex());
        oidc.id_tokens.insert(id_token.clone(), email);
        Some(id_token)
    }

    /// pachd's OIDC callback: ties `state` to the code's user (`false`: unknown code).
    pub fn complete_login(&self, state: &str, code: &str) -> bool {
        let mut oidc = self.oidc.lock().unwrap();
        let email = oidc.codes.remove(code);
        let known = email.is_some();
        oidc.states.insert(state.to_string(), email);
        drop(oidc);
        self.oidc_changed.notify_waiters();
        known
    }

    /// pachd's `Authenticate`: a pach token for a completed OIDC state or a dex ID token.
    /// Like pachd, it waits a little for a state whose callback has not arrived yet.
    pub async fn authenticate_oidc(
        &self,
        oidc_state: &str,
        id_token: &str,
    ) -> Result<String, PachError> {
        if !self.auth_active() {
            return Err(PachError::new(code::UNIMPLEMENTED, NOT_ACTIVATED));
        }
        if !oidc_state.is_empty() {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let changed = self.oidc_changed.notified();
                let found = self.oidc.lock().unwrap().states.remove(oidc_state);
                match found {
                    Some(Some(email)) => return Ok(self.issue_token(format!("user:{email}"))),
                    Some(None) => {
                        return Err(PachError::new(code::UNKNOWN, "authorization failed"))
                    }
                    None => {}
                }
                if tokio::time::timeout_at(deadline, changed).await.is_err() {
                    return Err(PachError::new(
                        code::UNKNOWN,
                        "error watching OIDC state token (has it expired?)",
                    ));
                }
            }
        }
        if !id_token.is_empty() {
            let email = self.oidc.lock().unwrap().id_tokens.get(id_token).cloned();
            return match email {
                Some(email) => Ok(self.issue_token(format!("user:{email}"))),
                None => Err(PachError::new(
                    code::UNKNOWN,
                    "could not verify token: oidc: malformed jwt",
                )),
            };
        }
        Err(PachError::new(
            code::UNKNOWN,
            "unrecognized authentication mechanism (old pachd?)",
        ))
    }
}

/// RFC 3339 in UTC with a `Z`, as protojson writes a Timestamp with whole seconds.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = pachgate_observe::access_writer::civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_513_200);
        assert_eq!(rfc3339(t), "2026-12-05T23:26:40Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn token_checks_follow_pachd() {
        let state = PachdState::new(PachdOptions::default());
        let e = state.authenticate(&[]).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (16, NOT_SIGNED_IN));
        let e = state.authenticate(&[b""]).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (16, BAD_TOKEN));
        let e = state
            .authenticate(&[b"demo-token", b"demo-token"])
            .unwrap_err();
        assert_eq!(e.code, 2);
        let e = state.authenticate(&[b"expired-token"]).unwrap_err();
        assert_eq!((e.code, e.message.as_str()), (13, EXPIRED_TOKEN));
        assert_eq!(state.classify(&[b"demo-token"]), "robot:demo");
        assert_eq!(state.classify(&[b"nope"]), "invalid");
        assert!(state.intercept("/auth_v2.API/WhoAmI", &[]).is_none());
        assert!(state.intercept("/pfs_v2.API/ListRepo", &[]).is_some());
        assert_eq!(
            go_code_name(16),
            "Unauthenticated",
            "Go's code names appear in pachd's HTTP error bodies"
        );
    }
}
