//! Stand-ins of dex (port 1658 in a cluster) and pachd's OIDC callback server (1657), enough
//! for the console's and pachctl's login flow:
//! 1. dex `GET /dex/auth?client_id=…&redirect_uri=R&state=S` → 302 to `R?code=C&state=S`
//!    (real dex shows a login form first; the stand-in logs everyone in as
//!    `standin@example.com` at once);
//! 2. pachd `GET /authorization-code/callback?code=C&state=S` ties S to that user and answers
//!    as pachd does: 200 "You are now logged in. Go back to the terminal to use Pachyderm!"
//!    (400 without code or state, 401 for a code dex never issued);
//! 3. `auth_v2.API/Authenticate` with `oidc_state = S` (gRPC or `/api/`) returns a new pach
//!    token for `user:standin@example.com`.
//!
//! dex's `POST /dex/token` trades a code for an (opaque, not JWT) ID token that
//! `Authenticate` also accepts as `id_token`. Unlike pachd, the callback takes any state:
//! the stand-in has no `GetOIDCLogin` that would have created it, and it skips the nonce.

use std::sync::Arc;

use http::header::{HeaderValue, LOCATION};
use http::{Method, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::http_util::{
    go_error, go_not_found, go_query_get, query_escape, response, Body, Request,
};
use crate::state::PachdState;

/// Serves the dex stand-in on `listener` forever.
pub async fn serve_dex(listener: TcpListener, state: Arc<PachdState>) -> std::io::Result<()> {
    crate::http_util::serve(listener, state, dex).await
}

/// Serves the OIDC callback stand-in on `listener` forever.
pub async fn serve_oidc(listener: TcpListener, state: Arc<PachdState>) -> std::io::Result<()> {
    crate::http_util::serve(listener, state, oidc).await
}

fn query_string(request: &Request, key: &str) -> String {
    go_query_get(request.uri().query(), key)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}

fn json_response(status: StatusCode, value: serde_json::Value) -> Response<Body> {
    response(status, "application/json", value.to_string())
}

async fn dex(state: Arc<PachdState>, request: Request) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (&Method::GET, "/dex/.well-known/openid-configuration") => {
            if !state.options.dex_health.is_serving() {
                return go_error(StatusCode::SERVICE_UNAVAILABLE, "not ready");
            }
            let host = request
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("localhost");
            let scheme = request
                .headers()
                .get("x-forwarded-proto")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("http");
            let issuer = format!("{scheme}://{host}/dex");
            json_response(
                StatusCode::OK,
                json!({
                    "issuer": issuer,
                    "authorization_endpoint": format!("{issuer}/auth"),
                    "token_endpoint": format!("{issuer}/token"),
                    "jwks_uri": format!("{issuer}/keys"),
                    "userinfo_endpoint": format!("{issuer}/userinfo"),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256"],
                    "scopes_supported": ["openid", "email", "groups", "profile", "offline_access"],
                    "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
                    "claims_supported": ["iss", "sub", "aud", "iat", "exp", "email", "email_verified", "name"],
                }),
            )
        }
        (&Method::GET, "/dex/keys") => json_response(StatusCode::OK, json!({"keys": []})),
        (&Method::GET, "/dex/auth") => {
            let redirect = query_string(&request, "redirect_uri");
            if redirect.is_empty() || query_string(&request, "client_id").is_empty() {
                return go_error(
                    StatusCode::BAD_REQUEST,
                    "Invalid client_id or redirect_uri.",
                );
            }
            let code = state.issue_code();
            let separator = if redirect.contains('?') { '&' } else { '?' };
            let location = format!(
                "{redirect}{separator}code={code}&state={}",
                query_escape(&query_string(&request, "state"))
            );
            let Ok(location) = HeaderValue::from_str(&location) else {
                return go_error(StatusCode::BAD_REQUEST, "Invalid redirect_uri.");
            };
            let mut response = response(StatusCode::FOUND, "text/html; charset=utf-8", "");
            response.headers_mut().insert(LOCATION, location);
            response
        }
        (&Method::POST, "/dex/token") => {
            let form = String::from_utf8_lossy(request.body()).into_owned();
            let code = go_query_get(Some(&form), "code")
                .map(|v| String::from_utf8_lossy(&v).into_owned())
                .unwrap_or_default();
            match state.exchange_code(&code) {
                Some(id_token) => json_response(
                    StatusCode::OK,
                    json!({
                        "access_token": state.random_hex(),
                        "token_type": "bearer",
                        "expires_in": 86399,
                        "id_token": id_token,
                    }),
                ),
                None => json_response(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "invalid_grant",
                           "error_description": "Invalid or expired code parameter."}),
                ),
            }
        }
        _ => go_not_found(),
    }
}

/// pachd's `half`: the first half of a state token and its length, for messages.
fn half(state: &str) -> String {
    let cut = state
        .char_indices()
        .map(|(i, _)| i)
        .take_while(|&i| i <= state.len() / 2)
        .last()
        .unwrap_or(0);
    format!("{}.../{}", &state[..cut], state.len())
}

async fn oidc(state: Arc<PachdState>, request: Request) -> Response<Body> {
    match request.uri().path() {
        "/" => response(StatusCode::OK, "text/plain; charset=utf-8", "200 OK"),
        "/authorization-code/callback" => {
            let code = query_string(&request, "code");
            let oidc_state = query_string(&request, "state");
            if code.is_empty() || oidc_state.is_empty() {
                return go_error(
                    StatusCode::BAD_REQUEST,
                    "invalid OIDC callback request: missing OIDC state token or authorization code",
                );
            }
            if state.complete_login(&oidc_state, &code) {
                response(
                    StatusCode::OK,
                    "text/plain; charset=utf-8",
                    "You are now logged in. Go back to the terminal to use Pachyderm!",
                )
            } else {
                let message = format!(
                    "authorization failed (OIDC state token: {:?}; Pachyderm logs may contain more information)",
                    half(&oidc_state)
                );
                go_error(StatusCode::UNAUTHORIZED, &message)
            }
        }
        _ => go_not_found(),
    }
}
