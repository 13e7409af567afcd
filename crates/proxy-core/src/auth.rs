//! The auth gate's glue in the request pipeline: where the token is taken from, the
//! failed-authentication limiter, and the transport for pachd's WhoAmI (the upstream's
//! pooled connection). The WhoAmI client and the decisions are `pachgate-auth-gate`'s;
//! denials are written in the caller's protocol by `rejection`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pachgate_auth_gate::{
    bearer_token, pachd_http_surface, token_for_pachd_files, token_from_grpc_metadata, AllowReason,
    AskBudget, Decision, DenyReason, GrpcUnary, PachdWhoAmI, PachydermGate, StaticTokens,
    UnaryReply, WhoAmI, WhoAmIAnswer, WhoAmIFuture,
};
use pachgate_client_policy::RateLimiter;
use tokio::sync::Notify;

use crate::body::ProxyBody;
use crate::upstream::Upstream;

/// The most of a WhoAmI reply the gate reads. pachd's is a user name and an expiry, well
/// under a kilobyte; whatever answers at the pachd upstream is not trusted to stop there,
/// and every token checked at once holds its reply in memory.
const WHO_AM_I_REPLY_LIMIT: usize = 64 * 1024;

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
        let collected = http_body_util::Limited::new(body, WHO_AM_I_REPLY_LIMIT)
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
    pub pending_asks: &'a PendingAsks,
}

/// Which gate a route with edge authentication has.
#[derive(Clone, Copy)]
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
            RouteGate::Pachyderm(_) if !grpc && pachd_http_surface(path).reads_query_token() => {
                token_for_pachd_files(request.uri().query(), authn_tokens())
            }
            // gRPC metadata, and pachd's grpc-gateway, which turns headers into metadata.
            RouteGate::Pachyderm(_) => token_from_grpc_metadata(authn_tokens()),
        };
        if let Some(limiter) = self.failed_auth {
            // Brute force: an address out of failed attempts gets no more token checks. A
            // Pachyderm token pachd has vouched for still passes (and is asked about again
            // once its cached answer ages), so one client with a broken token behind a NAT
            // cannot lock out everyone behind the same address; pachd's tokens are random
            // 128-bit values, so this answer helps no guesser. A public method, a call
            // without a token and one with several test no token, and get pachd's own
            // answer. Static tokens get no such exemption: they may be weak, and checking
            // them is free, so exempting the valid ones would let a locked-out address go
            // on guessing at line rate.
            if let Err(wait) = limiter.check(client, now) {
                let exempt = match self.gate {
                    RouteGate::Pachyderm(gate) => match token.token() {
                        None => true,
                        Some(token) => {
                            gate.knows_valid(token)
                                || gate.is_public_call(request.method(), path, grpc)
                        }
                    },
                    RouteGate::StaticTokens(_) => false,
                };
                if !exempt {
                    return Err(DenyReason::RateLimited {
                        retry_after_secs: wait.as_secs().max(1),
                    });
                }
            }
        }
        let decision = match (self.gate, self.failed_auth) {
            (RouteGate::StaticTokens(tokens), limiter) => {
                let decision = tokens.check(token);
                // Every static-token check is a guess checked for free: each rejection counts.
                if let (Decision::Deny(DenyReason::InvalidToken(_)), Some(limiter)) =
                    (&decision, limiter)
                {
                    let _ = limiter.take(client, now);
                }
                decision
            }
            (RouteGate::Pachyderm(gate), None) if grpc => gate.check_grpc(path, token).await,
            (RouteGate::Pachyderm(gate), None) => {
                gate.check_http(request.method(), path, token).await
            }
            // Only the question to pachd is charged, in the budget, when pachd rejects the
            // token: the same rejected token again (answered from the cache, or shared with
            // the request that asked) guesses nothing new, and charging it let one client
            // retrying a revoked token drain its address for everyone behind it.
            (RouteGate::Pachyderm(gate), Some(limiter)) => {
                let budget = FailedAuthBudget {
                    limiter,
                    pending: self.pending_asks,
                    client,
                };
                if grpc {
                    gate.check_grpc_within(path, token, &budget).await
                } else {
                    gate.check_http_within(request.method(), path, token, &budget)
                        .await
                }
            }
        };
        match decision {
            Decision::Allow { reason, .. } => Ok(reason),
            Decision::Deny(reason) => Err(reason),
        }
    }
}

/// The failed-authentication budget, applied where pachd is asked about a token. Each
/// question in flight from an address counts against its budget until answered: a
/// question goes only while the budget covers it and every other one in flight, waits
/// while those others might still come back valid, and is refused once the budget is out
/// with none in flight. A rejection is charged before its place is given up.
///
/// Checking the budget only before the gate, and charging after the answer, let any number
/// of concurrent guesses through before the first answer came back. Taking an attempt up
/// front and giving it back for a valid token refused valid users behind one address (an
/// office NAT, after a restart) whose tokens were not cached yet, once more of them asked
/// at once than the budget held; here they wait their turn instead.
struct FailedAuthBudget<'a> {
    limiter: &'a RateLimiter,
    pending: &'a PendingAsks,
    client: IpAddr,
}

impl AskBudget for FailedAuthBudget<'_> {
    /// A token pachd has vouched for asks without a place: its holder is no guesser, and
    /// must not wait behind (or be refused for) another client's guesses from its address.
    fn ask<'a>(
        &'a self,
        vouched: bool,
        question: WhoAmIFuture<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<WhoAmIAnswer, Duration>> + Send + 'a>> {
        Box::pin(async move {
            let _place = match vouched {
                true => None,
                false => Some(self.pending.place(self.limiter, self.client).await?),
            };
            let answer = question.await;
            if matches!(answer, WhoAmIAnswer::Unauthenticated(_)) {
                let _ = self.limiter.take(self.client, Instant::now());
            }
            Ok(answer)
        })
    }
}

/// Questions to pachd in flight per client address, for [`FailedAuthBudget`]. An address
/// has an entry only while one of its questions is in flight.
#[derive(Default)]
pub(crate) struct PendingAsks {
    by_address: Mutex<HashMap<IpAddr, InFlight>>,
}

#[derive(Default)]
struct InFlight {
    count: u32,
    /// Woken each time one of them is answered (or abandoned).
    done: Arc<Notify>,
}

impl PendingAsks {
    /// A place for one more question from `client`, once `limiter`'s budget covers it and
    /// every other question of the address in flight; `Err(retry_after)` when the budget
    /// is out and none is in flight. Held until the returned guard drops.
    async fn place(&self, limiter: &RateLimiter, client: IpAddr) -> Result<Place<'_>, Duration> {
        // Counted as the limiter counts the address (an IPv6 client by its /64).
        let client = pachgate_client_policy::counted_as(client);
        loop {
            let answered = {
                let mut by_address = self.lock();
                let in_flight = by_address.entry(client).or_default();
                let budget = limiter.available(client, Instant::now());
                if budget - f64::from(in_flight.count) >= 1.0 {
                    in_flight.count += 1;
                    return Ok(Place {
                        pending: self,
                        client,
                    });
                }
                if in_flight.count == 0 {
                    by_address.remove(&client);
                    let wait = limiter.check(client, Instant::now()).err();
                    return Err(wait.unwrap_or(Duration::from_secs(1)));
                }
                // Waits for one of those in flight to be answered, then looks again;
                // registered before the lock is let go, so that answer cannot slip by.
                let mut answered = Box::pin(in_flight.done.clone().notified_owned());
                answered.as_mut().enable();
                answered
            };
            answered.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, InFlight>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One question's place; the address's entry goes with its last one.
struct Place<'a> {
    pending: &'a PendingAsks,
    client: IpAddr,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        let mut by_address = self.pending.lock();
        if let Some(in_flight) = by_address.get_mut(&self.client) {
            in_flight.count -= 1;
            in_flight.done.notify_waiters();
            if in_flight.count == 0 {
                by_address.remove(&self.client);
            }
        }
    }
}
