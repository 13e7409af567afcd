//! Edge authentication for routes in front of pachd. It decides — allow (with the username
//! when known) or deny with a reason — and renders nothing: proxy-core turns a decision into
//! a gRPC status or an HTTP response.
//!
//! It owns the Pachyderm facts (which methods are public, where the token travels, what
//! pachd's WhoAmI answers mean) and the token cache (single flight, bounded, keyed by token
//! hashes), and pachd's WhoAmI client ([`PachdWhoAmI`]: the call and the reading of its
//! answer). It opens no connection: the WhoAmI bytes travel over a [`GrpcUnary`] transport
//! the caller provides.

mod cache;
mod pachyderm;
mod static_tokens;
mod who_am_i;

pub use cache::TokenCache;
pub use pachyderm::{
    bearer_token, is_server_streaming_method, is_well_formed_grpc_path, pachd_http_surface,
    token_for_pachd_files, token_from_grpc_metadata, PachdHttpSurface, PachydermLine, TokenLookup,
};
pub use static_tokens::{parse_hash_file, StaticTokens};
pub use who_am_i::{GrpcUnary, PachdWhoAmI, UnaryReply};

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// pachd's answer to a token it does not know (`auth.ErrBadToken`, code 16).
const PACHD_BAD_TOKEN: &str =
    "provided auth token is corrupted or has expired (try logging in again)";

/// What pachd's `/auth_v2.API/WhoAmI` said about a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WhoAmIAnswer {
    /// The token is valid; `expiration` is when pachd says it stops being valid.
    Valid {
        username: String,
        expiration: Option<SystemTime>,
    },
    /// UNAUTHENTICATED, with pachd's own message.
    Unauthenticated(String),
    /// INTERNAL "token expiration is in the past": pachd keeps expired tokens for a while
    /// and answers this for them (the console logs the user out on it).
    Expired(String),
    /// UNIMPLEMENTED: auth is not activated on this cluster.
    AuthNotActive,
    /// pachd could not be asked (down, refused, timed out); never treated as valid.
    Unavailable(String),
}

/// Asks pachd about a token, or with `None` about no token at all (which tells whether auth
/// is active: UNIMPLEMENTED when it is off, UNAUTHENTICATED when it is on). Implemented by
/// proxy-core over its pooled upstream connection.
pub trait WhoAmI: Send + Sync {
    fn who_am_i(
        &self,
        token: Option<&str>,
    ) -> Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + '_>>;
}

/// What to do when pachd says auth is not activated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenAuthDisabled {
    Deny,
    Allow,
}

/// Settings of `[auth.pachyderm]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PachydermAuthSettings {
    pub cache_ttl: Duration,
    pub negative_cache_ttl: Duration,
    pub cache_capacity: usize,
    pub when_auth_disabled: WhenAuthDisabled,
    /// Which public-method list applies.
    pub line: PachydermLine,
    /// Methods (`/package.Service/Method`) that pass without a token, beyond pachd's own list.
    pub extra_public_methods: Vec<String>,
}

impl Default for PachydermAuthSettings {
    fn default() -> Self {
        PachydermAuthSettings {
            cache_ttl: Duration::from_secs(60),
            negative_cache_ttl: Duration::from_secs(5),
            cache_capacity: 10_000,
            when_auth_disabled: WhenAuthDisabled::Deny,
            line: PachydermLine::V2,
            extra_public_methods: Vec::new(),
        }
    }
}

/// Why a request was refused. proxy-core maps each to a gRPC status and an HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// No token where one is required (gRPC 16 / HTTP 401).
    MissingToken,
    /// Several `Authorization: Bearer` tokens on a static-token route: checking one of them
    /// could pass a different one than the upstream uses (gRPC 16 / HTTP 401).
    AmbiguousToken,
    /// More than one `authn-token` value on a cluster with auth on: pachd refuses the call
    /// with code 2 (Unknown) and these words (`auth.GetAuthToken`).
    MultipleTokens,
    /// pachd rejected the token; its message (gRPC 16 / HTTP 401).
    InvalidToken(String),
    /// pachd says the token has expired; its message (gRPC 13, as pachd answers / HTTP 401).
    ExpiredToken(String),
    /// Auth is not activated on pachd and the gate is set to deny (gRPC 7 / HTTP 403).
    AuthNotActive,
    /// The token could not be checked (gRPC 14 / HTTP 503).
    CheckUnavailable(String),
    /// The request path is not a well-formed gRPC method (gRPC 12 / HTTP 404).
    MalformedMethod,
    /// The client address is not in the route's allow-list (gRPC 7 / HTTP 403).
    AddressNotAllowed,
    /// Too many requests, or too many failed authentications, from this address
    /// (gRPC 8 / HTTP 429 with Retry-After).
    RateLimited { retry_after_secs: u64 },
}

impl DenyReason {
    /// A short, token-free reason for logs and `grpc-message`.
    pub fn message(&self) -> String {
        match self {
            DenyReason::MissingToken => "no authentication token (try logging in)".into(),
            DenyReason::AmbiguousToken => {
                "more than one bearer token; send exactly one".into()
            }
            DenyReason::MultipleTokens => {
                "multiple authentication token keys found in context".into()
            }
            DenyReason::InvalidToken(message) | DenyReason::ExpiredToken(message) => {
                message.clone()
            }
            DenyReason::AuthNotActive => "the auth service is not activated on pachd, and \
                pachgate denies access to an unauthenticated cluster (when_auth_disabled = \"deny\")"
                .into(),
            DenyReason::CheckUnavailable(why) => {
                // Envoy's words for an unreachable upstream, which Pachyderm's console
                // looks for to show its "cannot reach the cluster" screen.
                format!("upstream connect error: pachgate cannot verify the token with pachd: {why}")
            }
            DenyReason::MalformedMethod => "malformed gRPC method path".into(),
            DenyReason::AddressNotAllowed => "client address not allowed on this route".into(),
            DenyReason::RateLimited { retry_after_secs } => {
                format!("too many requests from this address; retry in {retry_after_secs} s")
            }
        }
    }

    /// Label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            DenyReason::MissingToken => "missing_token",
            DenyReason::AmbiguousToken => "ambiguous_token",
            DenyReason::MultipleTokens => "multiple_tokens",
            DenyReason::InvalidToken(_) => "invalid_token",
            DenyReason::ExpiredToken(_) => "expired_token",
            DenyReason::AuthNotActive => "auth_not_active",
            DenyReason::CheckUnavailable(_) => "check_unavailable",
            DenyReason::MalformedMethod => "malformed_method",
            DenyReason::AddressNotAllowed => "address_not_allowed",
            DenyReason::RateLimited { .. } => "rate_limited",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        username: Option<String>,
        reason: AllowReason,
    },
    Deny(DenyReason),
}

/// Why a request was let through (for metrics; the username is for logs of the caller's
/// choosing, never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowReason {
    /// A method pachd serves without a token (GetVersion, Activate, login flows).
    PublicMethod,
    ValidToken,
    /// pachd has auth off and `when_auth_disabled = "allow"`.
    AuthNotActive,
    /// pachd answers the request itself and serves nothing a token guards: a request its
    /// file handlers answer before they use a token, or a refused token on `/archive`,
    /// which pachd reports inside its `200` ZIP.
    AnsweredByPachd,
}

impl AllowReason {
    pub fn kind(self) -> &'static str {
        match self {
            AllowReason::PublicMethod => "public_method",
            AllowReason::ValidToken => "valid_token",
            AllowReason::AuthNotActive => "auth_not_active",
            AllowReason::AnsweredByPachd => "answered_by_pachd",
        }
    }
}

/// The gate for `auth = "pachyderm"` routes.
/// What a caller's question to pachd about a token costs it. The first of the requests that
/// carry a token at the same time asks (the others share its answer) through
/// [`AskBudget::ask`], which may wait, refuse (`Err(retry_after)`: the request is refused
/// unasked, and the next of them, if any, asks again) or charge the caller for the answer.
/// The failed-authentication limiter works here, so that concurrent guesses cannot all
/// reach pachd before the first answer comes back.
pub trait AskBudget: Sync {
    /// `vouched`: pachd answered "valid" for this token before and it has not expired
    /// since ([`PachydermGate::knows_valid`]); its question is no guess.
    fn ask<'a>(
        &'a self,
        vouched: bool,
        question: WhoAmIFuture<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<WhoAmIAnswer, Duration>> + Send + 'a>>;
}

/// pachd's answer about one token, on its way.
pub type WhoAmIFuture<'a> = Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + 'a>>;

/// No budget: every question is asked.
pub struct AskFreely;

impl AskBudget for AskFreely {
    fn ask<'a>(
        &'a self,
        _vouched: bool,
        question: WhoAmIFuture<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<WhoAmIAnswer, Duration>> + Send + 'a>> {
        Box::pin(async move { Ok(question.await) })
    }
}

pub struct PachydermGate {
    settings: PachydermAuthSettings,
    cache: TokenCache,
    who_am_i: Arc<dyn WhoAmI>,
}

impl PachydermGate {
    pub fn new(settings: PachydermAuthSettings, who_am_i: Arc<dyn WhoAmI>) -> Self {
        PachydermGate {
            cache: TokenCache::new(settings.cache_capacity),
            settings,
            who_am_i,
        }
    }

    fn is_public(&self, method: &str) -> bool {
        self.settings.line.is_public_method(method)
            || self
                .settings
                .extra_public_methods
                .iter()
                .any(|m| m == method)
    }

    /// Decides a gRPC call: `method` is the request path, `token` what the metadata held.
    pub async fn check_grpc(&self, method: &str, token: TokenLookup<'_>) -> Decision {
        self.check_grpc_within(method, token, &AskFreely).await
    }

    /// [`check_grpc`](Self::check_grpc), with `budget` asked before a token goes to pachd.
    pub async fn check_grpc_within(
        &self,
        method: &str,
        token: TokenLookup<'_>,
        budget: &dyn AskBudget,
    ) -> Decision {
        if !is_well_formed_grpc_path(method) {
            return Decision::Deny(DenyReason::MalformedMethod);
        }
        if self.is_public(method) {
            return Decision::Allow {
                username: None,
                reason: AllowReason::PublicMethod,
            };
        }
        self.check_token(token, budget).await
    }

    /// Decides an HTTP request to pachd's HTTP server. On the grpc-gateway (`/api/…`) the
    /// method's own rule applies, as pachd's interceptor sees the same method. pachd's file
    /// handlers answer some requests before they use a token
    /// ([`PachdHttpSurface::answers_without_token`]), which pass; and `/archive` reports a refused
    /// token inside its `200` ZIP, an answer only pachd can write, so there a token the
    /// gate would refuse passes too (still checked: the failed-authentication budget counts
    /// it). Everything else needs a token. The caller takes the token where pachd will
    /// ([`token_for_pachd_files`] on `/pfs` and `/archive`, the header elsewhere).
    pub async fn check_http(
        &self,
        method: &http::Method,
        path: &str,
        token: TokenLookup<'_>,
    ) -> Decision {
        self.check_http_within(method, path, token, &AskFreely)
            .await
    }

    /// [`check_http`](Self::check_http), with `budget` asked before a token goes to pachd.
    pub async fn check_http_within(
        &self,
        method: &http::Method,
        path: &str,
        token: TokenLookup<'_>,
        budget: &dyn AskBudget,
    ) -> Decision {
        let surface = pachd_http_surface(path);
        if let PachdHttpSurface::Gateway { method: call } = surface {
            if is_well_formed_grpc_path(call) && self.is_public(call) {
                return Decision::Allow {
                    username: None,
                    reason: AllowReason::PublicMethod,
                };
            }
        }
        if surface.answers_without_token(method, path) {
            return Decision::Allow {
                username: None,
                reason: AllowReason::AnsweredByPachd,
            };
        }
        let decision = self.check_token(token, budget).await;
        let answered_by_pachd = Decision::Allow {
            username: None,
            reason: AllowReason::AnsweredByPachd,
        };
        match (surface, decision) {
            // pachd refused the token, so its auth is on: it reports that inside the ZIP.
            (
                PachdHttpSurface::Archive,
                Decision::Deny(DenyReason::InvalidToken(_) | DenyReason::ExpiredToken(_)),
            ) => answered_by_pachd,
            // No usable token: only a cluster with auth on reports that inside the ZIP. One
            // with auth off serves the archive to anyone, which `when_auth_disabled = "deny"`
            // keeps refusing.
            (
                PachdHttpSurface::Archive,
                Decision::Deny(DenyReason::MissingToken | DenyReason::MultipleTokens),
            ) => self.when_auth_is_on(answered_by_pachd).await,
            (_, decision) => decision,
        }
    }

    /// Whether pachd serves this request without a token: a public gRPC method, the same
    /// method through the grpc-gateway, or a request pachd's file handlers answer before
    /// they use a token. `method` is the HTTP method.
    pub fn is_public_call(&self, method: &http::Method, path: &str, grpc: bool) -> bool {
        let call = if grpc {
            path
        } else {
            match pachd_http_surface(path) {
                PachdHttpSurface::Gateway { method } => method,
                surface => return surface.answers_without_token(method, path),
            }
        };
        is_well_formed_grpc_path(call) && self.is_public(call)
    }

    /// Whether pachd's last answer for this token was "valid" and the token has not expired
    /// since, however long ago that answer came (past `cache_ttl`, pachd is asked again as
    /// usual): such a token is never refused by the failed-authentication limiter, so one
    /// broken client behind a shared address cannot lock out everyone else behind it.
    pub fn knows_valid(&self, token: &str) -> bool {
        self.cache.vouches_for(token)
    }

    async fn check_token(&self, token: TokenLookup<'_>, budget: &dyn AskBudget) -> Decision {
        let token = match &token {
            TokenLookup::Missing => return self.check_without_token().await,
            TokenLookup::Blank => return self.check_blank_token().await,
            TokenLookup::Ambiguous => return self.check_several_tokens().await,
            TokenLookup::Found(token) => token.as_ref(),
        };
        let answer: Result<WhoAmIAnswer, Duration> = self
            .cache
            // Boxed: the WhoAmI call runs on a cache miss only, and inline its state would
            // grow the future of every gated request.
            .get_or_check(token, &self.settings, || {
                // Made only if the budget lets it be asked.
                budget.ask(
                    self.knows_valid(token),
                    Box::pin(async move { self.who_am_i.who_am_i(Some(token)).await }),
                )
            })
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(wait) => {
                return Decision::Deny(DenyReason::RateLimited {
                    retry_after_secs: wait.as_secs().max(1),
                })
            }
        };
        match answer {
            WhoAmIAnswer::Valid { username, .. } => Decision::Allow {
                username: Some(username),
                reason: AllowReason::ValidToken,
            },
            WhoAmIAnswer::Unauthenticated(message) => {
                Decision::Deny(DenyReason::InvalidToken(message))
            }
            WhoAmIAnswer::Expired(message) => Decision::Deny(DenyReason::ExpiredToken(message)),
            WhoAmIAnswer::AuthNotActive => self.auth_not_active(),
            WhoAmIAnswer::Unavailable(why) => Decision::Deny(DenyReason::CheckUnavailable(why)),
        }
    }

    /// No token. With `when_auth_disabled = "allow"` pachd may serve the call anyway (auth
    /// off): whether auth is active is learned from pachd (WhoAmI without a token) and
    /// cached like any answer, never guessed per call.
    async fn check_without_token(&self) -> Decision {
        self.unless_auth_is_off(DenyReason::MissingToken).await
    }

    /// One `authn-token` value with no token in it. pachd asks whether auth is active, then
    /// looks the empty token up and finds nothing (`getAuthenticatedUser`): its bad-token
    /// answer. Not asked of pachd, so not charged to the failed-authentication budget.
    async fn check_blank_token(&self) -> Decision {
        self.unless_auth_is_off(DenyReason::InvalidToken(PACHD_BAD_TOKEN.into()))
            .await
    }

    /// Several `authn-token` values. pachd asks whether auth is active before it reads the
    /// token, so with auth off it serves the call; with auth on it refuses it (code 2).
    async fn check_several_tokens(&self) -> Decision {
        self.unless_auth_is_off(DenyReason::MultipleTokens).await
    }

    /// `denial`, unless `when_auth_disabled = "allow"` and pachd reports auth off (asked
    /// with WhoAmI without a token, the answer cached like any other).
    async fn unless_auth_is_off(&self, denial: DenyReason) -> Decision {
        if self.settings.when_auth_disabled == WhenAuthDisabled::Deny {
            return Decision::Deny(denial);
        }
        self.when_auth_is_on(Decision::Deny(denial)).await
    }

    /// `decision` when pachd reports auth on ([`auth_state`](Self::auth_state)); with auth
    /// off, what `when_auth_disabled` says, and while pachd cannot be asked, a refusal.
    async fn when_auth_is_on(&self, decision: Decision) -> Decision {
        match self.auth_state().await {
            WhoAmIAnswer::AuthNotActive => self.auth_not_active(),
            WhoAmIAnswer::Unavailable(why) => Decision::Deny(DenyReason::CheckUnavailable(why)),
            _ => decision,
        }
    }

    /// pachd's answer to WhoAmI without a token, which says whether auth is active
    /// (`AuthNotActive`), cached like any answer.
    async fn auth_state(&self) -> WhoAmIAnswer {
        let answer = self
            .cache
            .get_or_check(cache::NO_TOKEN, &self.settings, || {
                Box::pin(async {
                    Ok::<_, std::convert::Infallible>(self.who_am_i.who_am_i(None).await)
                })
            })
            .await;
        let Ok(answer) = answer;
        answer
    }

    fn auth_not_active(&self) -> Decision {
        match self.settings.when_auth_disabled {
            WhenAuthDisabled::Allow => Decision::Allow {
                username: None,
                reason: AllowReason::AuthNotActive,
            },
            WhenAuthDisabled::Deny => Decision::Deny(DenyReason::AuthNotActive),
        }
    }
}

#[cfg(test)]
mod tests;
