//! The auth gate's glue in the request pipeline: where the token is taken from, the
//! failed-authentication limiter, and the transport for pachd's WhoAmI (the upstream's
//! pooled connection). The WhoAmI client and the decisions are `pachgate-auth-gate`'s;
//! denials are written in the caller's protocol by `rejection`.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use pachgate_auth_gate::{
    bearer_token, pachd_http_surface, token_for_pachd_files, token_from_grpc_metadata, AllowReason,
    AskBudget, Decision, DenyReason, GrpcUnary, PachdHttpSurface, PachdWhoAmI, PachydermGate,
    StaticTokens, UnaryReply, WhoAmI, WhoAmIAnswer, WhoAmIFuture,
};
use pachgate_client_policy::RateLimiter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
        let decision = match (self.gate, self.failed_auth) {
            (RouteGate::StaticTokens(tokens), _) => tokens.check(token),
            (RouteGate::Pachyderm(gate), None) if grpc => gate.check_grpc(path, token).await,
            (RouteGate::Pachyderm(gate), None) => gate.check_http(path, token).await,
            (RouteGate::Pachyderm(gate), Some(limiter)) => {
                let budget = FailedAuthBudget {
                    limiter,
                    pending: self.pending_asks,
                    client,
                    asked: AtomicBool::new(false),
                };
                let decision = if grpc {
                    gate.check_grpc_within(path, token, &budget).await
                } else {
                    gate.check_http_within(path, token, &budget).await
                };
                // A rejection this request asked about was charged while it asked.
                if budget.asked.load(Ordering::Relaxed) {
                    return match decision {
                        Decision::Allow { reason, .. } => Ok(reason),
                        Decision::Deny(reason) => Err(reason),
                    };
                }
                decision
            }
        };
        match decision {
            Decision::Allow { reason, .. } => Ok(reason),
            Decision::Deny(reason) => {
                // Only rejected tokens count: an expired session (the console polls every
                // few seconds) is not someone guessing. Here: a cached rejection, or one
                // shared with the concurrent request that asked.
                if matches!(reason, DenyReason::InvalidToken(_)) {
                    if let Some(limiter) = self.failed_auth {
                        let _ = limiter.take(client, now);
                    }
                }
                Err(reason)
            }
        }
    }
}

/// The failed-authentication budget, applied where pachd is asked about a token: at most
/// the budget's burst of questions from one address at a time (the rest wait their turn),
/// each asked only if the address still has budget when its turn comes, and a rejection
/// charged before the next one goes. Checking the budget only before the gate, and
/// charging after the answer, let any number of concurrent guesses through before the
/// first answer came back; taking it up front instead refused valid users behind one
/// address (an office NAT) whose tokens were not yet cached, once more of them asked at
/// once than the budget held.
struct FailedAuthBudget<'a> {
    limiter: &'a RateLimiter,
    pending: &'a PendingAsks,
    client: IpAddr,
    /// This request asked pachd (it was the first with its token), and was charged then.
    asked: AtomicBool,
}

impl AskBudget for FailedAuthBudget<'_> {
    fn ask<'a>(
        &'a self,
        question: WhoAmIFuture<'a>,
    ) -> Pin<Box<dyn Future<Output = Result<WhoAmIAnswer, Duration>> + Send + 'a>> {
        Box::pin(async move {
            let _turn = self.pending.turn(self.client, self.limiter.burst()).await;
            self.limiter.check(self.client, Instant::now())?;
            self.asked.store(true, Ordering::Relaxed);
            let answer = question.await;
            if matches!(answer, WhoAmIAnswer::Unauthenticated(_)) {
                let _ = self.limiter.take(self.client, Instant::now());
            }
            Ok(answer)
        })
    }
}

/// Questions to pachd in flight per client address, for [`FailedAuthBudget`]: a semaphore
/// per address while any question of its is in flight or waiting.
#[derive(Default)]
pub(crate) struct PendingAsks {
    by_address: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl PendingAsks {
    /// Waits until fewer than `at_once` questions from `client` are in flight; the turn is
    /// held until the returned guard drops.
    async fn turn(&self, client: IpAddr, at_once: u32) -> Turn<'_> {
        let semaphore = self
            .lock()
            .entry(client)
            .or_insert_with(|| Arc::new(Semaphore::new(at_once.max(1) as usize)))
            .clone();
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Turn {
            pending: self,
            client,
            semaphore,
            permit: Some(permit),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Arc<Semaphore>>> {
        self.by_address.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One question's turn; the address's entry goes when its last turn does.
struct Turn<'a> {
    pending: &'a PendingAsks,
    client: IpAddr,
    semaphore: Arc<Semaphore>,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut by_address = self.pending.lock();
        // Under the lock nobody takes a new hold: two are the map's and ours.
        if Arc::strong_count(&self.semaphore) == 2 {
            by_address.remove(&self.client);
        }
    }
}
