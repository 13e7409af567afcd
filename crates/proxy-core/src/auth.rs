//! The auth gate's glue in the request pipeline: where the token is taken from, the
//! failed-authentication limiter, and the transport for pachd's WhoAmI (the upstream's
//! pooled connection). The WhoAmI client and the decisions are `pachgate-auth-gate`'s;
//! denials are written in the caller's protocol by `rejection`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pachgate_auth_gate::{
    bearer_token, pachd_http_surface, token_for_pachd_files, token_from_grpc_metadata, AllowReason,
    Decision, DenyReason, GrpcUnary, PachdHttpSurface, PachdWhoAmI, PachydermGate, StaticTokens,
    UnaryReply, WhoAmI,
};
use pachgate_client_policy::RateLimiter;

use crate::body::ProxyBody;
use crate::upstream::Upstream;

/// The transport for pachd's WhoAmI (`PachdWhoAmI` in auth-gate): the upstream's pooled
/// connection to pachd's gRPC port.
pub struct UpstreamWhoAmI {
    pub upstream: Arc<Upstream>,
}

impl GrpcUnary for UpstreamWhoAmI {
    async fn call(&self, request: Request<Bytes>) -> Result<UnaryReply, String> {
        let request = request.map(|body| ProxyBody::Full(Some(body)));
        let response = self
            .upstream
            .send(request, None, None, &mut None)
            .await
            .map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        if parts.status != StatusCode::OK {
            return Ok(UnaryReply {
                status: parts.status,
                headers: parts.headers,
                body: Bytes::new(),
                trailers: None,
            });
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("WhoAmI response: {e}"))?;
        let trailers = collected.trailers().cloned();
        Ok(UnaryReply {
            status: parts.status,
            headers: parts.headers,
            body: collected.to_bytes(),
            trailers,
        })
    }
}

/// pachd's WhoAmI, asked over `upstream` with `method` (`/auth_v2.API/WhoAmI` for 2.x).
pub(crate) fn who_am_i_over(
    upstream: Arc<Upstream>,
    method: http::uri::PathAndQuery,
) -> Arc<dyn WhoAmI> {
    Arc::new(PachdWhoAmI::new(method, UpstreamWhoAmI { upstream }))
}

static AUTHN_TOKEN: http::HeaderName = http::HeaderName::from_static("authn-token");

/// The gate stage of the pipeline: the route's gate, and the failed-authentication limiter.
pub(crate) struct AuthGates<'a> {
    pub gate: RouteGate<'a>,
    pub failed_auth: Option<&'a RateLimiter>,
}

/// Which gate a route with edge authentication has.
pub(crate) enum RouteGate<'a> {
    Pachyderm(&'a PachydermGate),
    StaticTokens(&'a StaticTokens),
}

impl AuthGates<'_> {
    /// Takes the token where the upstream will read it, applies the failed-authentication
    /// limiter, and asks the route's gate.
    pub(crate) async fn check<B>(
        &self,
        request: &Request<B>,
        grpc: bool,
        client: std::net::IpAddr,
        now: std::time::Instant,
    ) -> Result<AllowReason, DenyReason> {
        let headers = request.headers();
        let path = request.uri().path();
        let authn_tokens = || headers.get_all(&AUTHN_TOKEN).iter().map(|v| v.as_bytes());
        let token = match self.gate {
            RouteGate::StaticTokens(_) => bearer_token(
                headers
                    .get_all(http::header::AUTHORIZATION)
                    .iter()
                    .map(|v| v.as_bytes()),
            ),
            RouteGate::Pachyderm(_)
                if !grpc && pachd_http_surface(path) == PachdHttpSurface::Files =>
            {
                token_for_pachd_files(request.uri().query(), authn_tokens())
            }
            // gRPC metadata, and pachd's grpc-gateway, which turns headers into metadata.
            RouteGate::Pachyderm(_) => token_from_grpc_metadata(authn_tokens()),
        };
        if let Some(limiter) = self.failed_auth {
            // Brute force: an address out of failed attempts gets no more token checks. A
            // Pachyderm token already known to be valid still passes, so one client with a
            // broken token behind a NAT cannot lock out everyone behind the same address;
            // pachd's tokens are random 128-bit values, so this answer helps no guesser. A
            // public method tests no token at all. Static tokens get no such exemption: they
            // may be weak, and checking them is free, so exempting the valid ones would let
            // a locked-out address go on guessing at line rate.
            if let Err(wait) = limiter.check(client, now) {
                let exempt = match self.gate {
                    RouteGate::Pachyderm(gate) => {
                        gate.is_public_call(path, grpc)
                            || token.token().is_some_and(|token| gate.knows_valid(token))
                    }
                    RouteGate::StaticTokens(_) => false,
                };
                if !exempt {
                    return Err(DenyReason::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    });
                }
            }
        }
        // A token pachd is asked about takes its failed attempt from the budget before the
        // question, not after the answer: otherwise any number of concurrent guesses pass
        // the check above before the first answer comes back, and all reach pachd.
        let asking = Reservation {
            limiter: self.failed_auth,
            client,
            now,
            held: AtomicBool::new(false),
        };
        let budget = || asking.take();
        let decision = match self.gate {
            RouteGate::StaticTokens(tokens) => tokens.check(token),
            RouteGate::Pachyderm(gate) if grpc => {
                gate.check_grpc_within(path, token, &budget).await
            }
            RouteGate::Pachyderm(gate) => gate.check_http_within(path, token, &budget).await,
        };
        match decision {
            Decision::Allow { reason, .. } => Ok(reason),
            Decision::Deny(reason) => {
                // Only rejected tokens count: an expired session (the console polls every
                // few seconds) is not someone guessing. A rejection this request did not ask
                // about (a cached answer, or one shared with a concurrent request) is counted
                // here.
                if matches!(reason, DenyReason::InvalidToken(_)) && !asking.spend() {
                    if let Some(limiter) = self.failed_auth {
                        let _ = limiter.take(client, now);
                    }
                }
                Err(reason)
            }
        }
    }
}

/// A failed attempt taken from an address's budget before pachd is asked about a token;
/// given back when dropped unless the token was rejected (a valid token, an expired one, an
/// unreachable pachd, or a request that went away while waiting).
struct Reservation<'a> {
    limiter: Option<&'a RateLimiter>,
    client: IpAddr,
    now: Instant,
    held: AtomicBool,
}

impl Reservation<'_> {
    fn take(&self) -> Result<(), std::time::Duration> {
        if let Some(limiter) = self.limiter {
            limiter.take(self.client, self.now)?;
            self.held.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Keeps the attempt taken (the token was rejected); whether one was.
    fn spend(&self) -> bool {
        self.held.swap(false, Ordering::Relaxed)
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if let (Some(limiter), true) = (self.limiter, self.spend()) {
            limiter.give_back(self.client, Instant::now());
        }
    }
}
