//! Stand-in of pachd's HTTP server (port 1659 in a cluster), as pachd 2.x's
//! `src/server/http` serves it:
//! - `/pfs/<project>/<repo>/<branch|commit>/<path>` and `/archive/<spec>.zip`: the token is the
//!   `authn-token` query parameter (Go's `url.Query().Get`), else the first `authn-token`
//!   header; never a cookie or `Authorization`. A rejected token is pachd's gRPC error seen
//!   through the file server (`/pfs`: 401/500 text "problem inspecting file: rpc error: …")
//!   or inside the ZIP (`/archive`: 200 with only `@error.txt`).
//! - `/api/<package.Service>/<Method>` (POST, JSON): pachd's grpc-gateway. Every header but
//!   Content-Length is gRPC metadata, so the token is the `authn-token` header; errors are
//!   `{"code":N,"message":"…","details":[]}` with grpc-gateway's HTTP status.
//! - `/jsonschema/…` static JSON, `/healthz` (503 "not ready" while
//!   [`PachdOptions::health`](crate::PachdOptions::health) is off), and `/_standin/seen` (the
//!   stand-ins' record of calls and tokens: GET lists it as JSON, DELETE clears it).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{HeaderValue, ACCEPT, CONTENT_TYPE, LOCATION};
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::http_util::{go_error, go_not_found, go_query_get, response, Body, Request};
use crate::state::{code, rfc3339, PachError, PachdState, NOT_ACTIVATED};

/// Serves the stand-in pachd HTTP server on `listener` forever.
pub async fn serve_pachd_http(
    listener: TcpListener,
    state: Arc<PachdState>,
) -> std::io::Result<()> {
    crate::http_util::serve(listener, state, handle).await
}

async fn handle(state: Arc<PachdState>, request: Request) -> Response<Body> {
    let path = request.uri().path().to_string();
    if path == "/_standin/seen" {
        return seen(&state, &request);
    }
    if path == "/healthz" {
        if !state.options.health.is_serving() {
            return go_error(StatusCode::SERVICE_UNAVAILABLE, "not ready");
        }
        return response(StatusCode::OK, "text/plain; charset=utf-8", "healthy\n");
    }
    if let Some(rest) = path.strip_prefix("/api") {
        if rest.starts_with('/') {
            return api(&state, &request, rest).await;
        }
    }
    if path.starts_with("/pfs/") {
        return pfs(&state, &request);
    }
    if path.starts_with("/archive/") {
        return archive(&state, &request);
    }
    if let Some(name) = path.strip_prefix("/jsonschema/") {
        return json_schema(name);
    }
    go_not_found()
}

fn seen(state: &PachdState, request: &Request) -> Response<Body> {
    match *request.method() {
        Method::DELETE => {
            state.clear_seen();
            response(StatusCode::NO_CONTENT, "text/plain", Bytes::new())
        }
        Method::GET => {
            let list: Vec<Value> = state
                .seen()
                .into_iter()
                .map(|s| {
                    json!({"via": s.via, "method": s.method, "token": s.token, "source": s.source})
                })
                .collect();
            response(
                StatusCode::OK,
                "application/json",
                Value::Array(list).to_string(),
            )
        }
        _ => go_error(StatusCode::METHOD_NOT_ALLOWED, "GET or DELETE"),
    }
}

/// The token pachd's `httpauth.ClientWithToken` picks: query first, then header.
fn file_server_token(request: &Request) -> (Option<Vec<u8>>, &'static str) {
    if let Some(token) = go_query_get(request.uri().query(), "authn-token") {
        if !token.is_empty() {
            return (Some(token), "query");
        }
    }
    if let Some(token) = request.headers().get("authn-token") {
        if !token.is_empty() {
            return (Some(token.as_bytes().to_vec()), "header");
        }
    }
    (None, "none")
}

/// The file and archive servers' pach client call, as the auth interceptor answers it
/// (their methods are `authDisabledOr(authenticated)`).
fn file_server_auth(state: &PachdState, request: &Request) -> Result<(), PachError> {
    let (token, source) = file_server_token(request);
    let values: Vec<&[u8]> = token.as_deref().into_iter().collect();
    state.record("http", request.uri().path(), &values, source);
    if !state.auth_active() {
        return Ok(());
    }
    state.authenticate(&values).map(|_| ())
}

/// Whether the file server answers in HTML: only when `Accept` ranks text/html above
/// text/plain (curl's `*/*` gets text, browsers get HTML), as pachd negotiates.
fn accepts_html(request: &Request) -> bool {
    let Some(accept) = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut html = 0.0f32;
    let mut plain = 0.0f32;
    let (mut html_rank, mut plain_rank) = (0, 0);
    for entry in accept.split(',') {
        let mut pieces = entry.split(';');
        let media = pieces.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = pieces
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        let rank = match media.as_str() {
            "*/*" => 1,
            "text/*" => 2,
            "text/html" | "text/plain" => 3,
            _ => 0,
        };
        if rank == 0 {
            continue;
        }
        if (media == "text/html" || rank < 3) && rank > html_rank {
            (html, html_rank) = (q, rank);
        }
        if (media == "text/plain" || rank < 3) && rank > plain_rank {
            (plain, plain_rank) = (q, rank);
        }
    }
    html > plain
}

/// The file server's `displayErrorf`.
fn display_error(request: &Request, status: StatusCode, message: &str) -> Response<Body> {
    if accepts_html(request) {
        let escaped = html_text(message);
        // pachd's template shows the id's block only for a non-empty id.
        let error_id = match request_id(request) {
            id if id.is_empty() => String::new(),
            id => format!("<hr /><p>Error ID: {}</p>", html_text(&id)),
        };
        let page = format!(
            "<!doctype html><html><head><title>Error</title></head><body><h1>Error</h1><p>{escaped}</p>{error_id}</body></html>\n"
        );
        response(status, "text/html", page)
    } else {
        response(status, "text/plain", message.to_string())
    }
}

fn html_text(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The request's id as pachd's HTTP server keeps it (`log.RequestID`): its `x-request-id`
/// values joined by `;`, or one made for it.
fn request_id(request: &Request) -> String {
    let sent: Vec<_> = request
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
        .collect();
    if !sent.is_empty() {
        return sent.join(";");
    }
    use std::hash::{BuildHasher, Hasher};
    let mut made = String::new();
    for _ in 0..2 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u8(0);
        made.push_str(&format!("{:016x}", hasher.finish()));
    }
    format!(
        "{}-{}-{}-{}-{}",
        &made[..8],
        &made[8..12],
        &made[12..16],
        &made[16..20],
        &made[20..]
    )
}

/// The file server's `displayGRPCError`.
fn display_grpc_error(request: &Request, what: &str, error: &PachError) -> Response<Body> {
    let status = match error.code {
        code::NOT_FOUND => StatusCode::NOT_FOUND,
        code::UNAUTHENTICATED => StatusCode::UNAUTHORIZED,
        code::PERMISSION_DENIED => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    display_error(request, status, &format!("{what}: {}", error.go_string()))
}

fn pfs(state: &PachdState, request: &Request) -> Response<Body> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        let message = format!("unknown HTTP method {:?}", request.method().as_str());
        return display_error(request, StatusCode::METHOD_NOT_ALLOWED, &message);
    }
    // Go hands handlers the decoded path (`r.URL.Path`), in which `%2F` is a `/`.
    let raw = request.uri().path();
    let decoded = crate::http_util::query_unescape(&raw.replace('+', "%2B"))
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_else(|| raw.to_string());
    let path = decoded.as_str();
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() == 5 && !parts[4].is_empty() {
        let mut response = response(
            StatusCode::MOVED_PERMANENTLY,
            "text/html; charset=utf-8",
            "",
        );
        if let Ok(location) = HeaderValue::from_str(&format!("{path}/")) {
            response.headers_mut().insert(LOCATION, location);
        }
        return response;
    }
    if parts.len() < 6 {
        let message = format!(
            "invalid URL; expecting /pfs/<project>/<repo>/<commit|branch>/<path...>, got {path}"
        );
        return display_error(request, StatusCode::NOT_FOUND, &message);
    }
    if let Err(error) = file_server_auth(state, request) {
        // pachd sets these before it asks for the file, so its errors carry them too.
        let mut refusal = display_grpc_error(request, "problem inspecting file", &error);
        let headers = refusal.headers_mut();
        headers.insert("vary", HeaderValue::from_static("authn-token"));
        headers.insert(
            "cache-control",
            HeaderValue::from_static("private, no-cache"),
        );
        return refusal;
    }
    let file: Vec<&str> = parts[5..]
        .iter()
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    let body = format!(
        "standin pfs file {}/{}@{}:/{}\n",
        parts[2],
        parts[3],
        parts[4],
        file.join("/")
    );
    let length = body.len();
    let mut response = response(StatusCode::OK, "text/plain; charset=utf-8", body);
    let headers = response.headers_mut();
    headers.insert("vary", HeaderValue::from_static("authn-token"));
    headers.insert(
        "cache-control",
        HeaderValue::from_static("private, no-cache"),
    );
    headers.insert("accept-ranges", HeaderValue::from_static("bytes"));
    headers.insert("etag", HeaderValue::from_static("\"5374616e64496e\""));
    headers.insert("content-length", HeaderValue::from(length));
    if request.method() == Method::HEAD {
        *response.body_mut() = crate::http_util::full(Bytes::new());
    }
    response
}

fn archive(state: &PachdState, request: &Request) -> Response<Body> {
    if request.method() != Method::GET {
        let message = format!(
            "method not supported; got {}, want GET",
            request.method().as_str()
        );
        return go_error(StatusCode::METHOD_NOT_ALLOWED, &message);
    }
    let path = request.uri().path();
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() != 3 {
        let message = format!(
            "invalid URL: invalid download path; expected /archive/<spec>, but got {} path parts",
            parts.len()
        );
        return go_error(StatusCode::BAD_REQUEST, &message);
    }
    let Some((spec, format)) = parts[2].split_once('.') else {
        return go_error(
            StatusCode::BAD_REQUEST,
            "invalid URL: no extension on provided archive filename",
        );
    };
    if format != "zip" {
        let message = format!("invalid URL: unknown archive format {format}");
        return go_error(StatusCode::BAD_REQUEST, &message);
    }
    // pachd sends 200 before it resolves anything; a failure (a rejected token, too) ends up
    // in the ZIP as @error.txt.
    let entries = match file_server_auth(state, request) {
        Ok(()) => vec![(
            format!("standin/{spec}.txt"),
            format!("standin archive of {spec}\n").into_bytes(),
        )],
        Err(error) => vec![(
            "@error.txt".to_string(),
            format!(
                "path callback: path standin: InspectBranch: {}\n",
                error.go_string()
            )
            .into_bytes(),
        )],
    };
    let mut response = response(
        StatusCode::OK,
        "application/zip",
        crate::zip::stored(&entries),
    );
    let filename = format!(
        "attachment; filename=pachyderm-download-{}.zip",
        rfc3339(SystemTime::now())
    );
    if let Ok(value) = HeaderValue::from_str(&filename) {
        response.headers_mut().insert("content-disposition", value);
    }
    response
}

fn json_schema(name: &str) -> Response<Body> {
    let Some(message) = name
        .rsplit('/')
        .next()
        .and_then(|n| n.strip_suffix(".schema.json"))
    else {
        return go_not_found();
    };
    if message.is_empty() {
        return go_not_found();
    }
    let schema = json!({
        "$schema": "http://json-schema.org/draft-04/schema#",
        "$ref": format!("#/definitions/{message}"),
        "definitions": {
            message: {"properties": {}, "additionalProperties": true, "type": "object",
                      "title": message}
        }
    });
    response(StatusCode::OK, "application/json", schema.to_string())
}

/// The services pachd registers on its grpc-gateway.
const GATEWAY_SERVICES: &[&str] = &[
    "pps_v2.API",
    "pfs_v2.API",
    "worker.Worker",
    "proxy.API",
    "logs.API",
    "admin_v2.API",
    "auth_v2.API",
    "license_v2.API",
    "identity_v2.API",
    "debug_v2.Debug",
    "enterprise_v2.API",
    "transaction_v2.API",
    "versionpb_v2.API",
    "metadata.API",
];

/// grpc-gateway's HTTP status for a gRPC code (v2's `HTTPStatusFromCode`).
pub fn gateway_http_status(code: i32) -> StatusCode {
    let status = match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500,
    };
    StatusCode::from_u16(status).expect("valid status")
}

/// A `google.rpc.Status` as protojson writes it: fields in proto order.
fn status_json(error: &PachError) -> String {
    format!(
        r#"{{"code":{},"message":{},"details":[]}}"#,
        error.code,
        Value::String(error.message.clone())
    )
}

/// grpc-gateway's `DefaultHTTPErrorHandler`.
fn gateway_error(error: &PachError) -> Response<Body> {
    let mut response = response(
        gateway_http_status(error.code),
        "application/json",
        status_json(error),
    );
    if error.code == code::UNAUTHENTICATED {
        if let Ok(value) = HeaderValue::from_str(&error.message) {
            response.headers_mut().insert("www-authenticate", value);
        }
    }
    response
}

fn gateway_json(value: Value) -> Response<Body> {
    response(StatusCode::OK, "application/json", value.to_string())
}

async fn api(state: &Arc<PachdState>, request: &Request, rest: &str) -> Response<Body> {
    let components: Vec<&str> = rest[1..].split('/').collect();
    let well_formed = matches!(components.as_slice(), [service, method]
        if GATEWAY_SERVICES.contains(service)
            && !method.is_empty()
            && method.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    if !well_formed {
        return gateway_error(&PachError::new(code::NOT_FOUND, "Not Found"));
    }
    if request.method() != Method::POST {
        return gateway_error(&PachError::new(code::UNIMPLEMENTED, "Method Not Allowed"));
    }
    let method = rest;
    let values: Vec<&[u8]> = request
        .headers()
        .get_all("authn-token")
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let source = if values.is_empty() { "none" } else { "header" };
    state.record("http", method, &values, source);
    if let Some(denied) = state.intercept(method, &values) {
        // A server-streaming call's error, even before its first message, comes out of
        // grpc-gateway's ForwardResponseStream wrapped as {"error": …} (v2.20, pachd's).
        if matches!(method, "/pfs_v2.API/ListProject" | "/pps_v2.API/ListJob") {
            let mut response = gateway_error(&denied);
            let wrapped = format!("{{\"error\":{}}}\n", status_json(&denied));
            *response.body_mut() = crate::http_util::full(wrapped);
            return response;
        }
        return gateway_error(&denied);
    }
    let body: Value = if request.body().iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice::<Value>(request.body()) {
            Ok(value @ Value::Object(_)) => value,
            Ok(_) => {
                return gateway_error(&PachError::new(
                    code::INVALID_ARGUMENT,
                    "proto: syntax error: unexpected token, expected {",
                ))
            }
            Err(e) => {
                return gateway_error(&PachError::new(
                    code::INVALID_ARGUMENT,
                    format!("proto: syntax error: {e}"),
                ))
            }
        }
    };
    let field = |camel: &str, snake: &str| -> String {
        body.get(camel)
            .or_else(|| body.get(snake))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match method {
        "/auth_v2.API/WhoAmI" => {
            if !state.auth_active() {
                return gateway_error(&PachError::new(code::UNIMPLEMENTED, NOT_ACTIVATED));
            }
            match state.authenticate(&values) {
                Ok(p) => {
                    gateway_json(json!({"username": p.username, "expiration": rfc3339(p.expires)}))
                }
                Err(e) => gateway_error(&e),
            }
        }
        "/auth_v2.API/Authenticate" => {
            match state
                .authenticate_oidc(
                    &field("oidcState", "oidc_state"),
                    &field("idToken", "id_token"),
                )
                .await
            {
                Ok(token) => gateway_json(json!({"pachToken": token})),
                Err(e) => gateway_error(&e),
            }
        }
        "/auth_v2.API/Authorize" => {
            if !state.auth_active() {
                return gateway_error(&PachError::new(code::UNIMPLEMENTED, NOT_ACTIVATED));
            }
            match state.authenticate(&values) {
                Ok(p) => {
                    let wanted = body.get("permissions").cloned().unwrap_or(json!([]));
                    gateway_json(json!({
                        "authorized": true,
                        "satisfied": wanted,
                        "missing": [],
                        "principal": p.username,
                    }))
                }
                Err(e) => gateway_error(&e),
            }
        }
        "/versionpb_v2.API/GetVersion" => gateway_json(json!({
            "major": 2, "minor": 11, "micro": 0, "additional": "-pachgate-standin",
            "gitCommit": "", "gitTreeModified": "", "buildDate": "", "goVersion": "",
            "platform": std::env::consts::ARCH,
        })),
        "/pfs_v2.API/ReposSummary" => gateway_json(json!({"summaries": [
            {"project": {"name": "default"}, "userRepoCount": "1", "sizeBytes": "0"}
        ]})),
        "/pps_v2.API/PipelinesSummary" => gateway_json(json!({"summaries": [
            {"project": {"name": "default"}, "activePipelines": "0", "pausedPipelines": "0",
             "failedPipelines": "0", "unhealthyPipelines": "0"}
        ]})),
        "/pfs_v2.API/ListProject" | "/pps_v2.API/ListJob" => stream(request, method),
        _ => gateway_json(json!({})),
    }
}

fn header_number(request: &Request, name: &str, default: u64) -> u64 {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// A server-streaming method through grpc-gateway: one `{"result": …}` line per message,
/// flushed as produced; a failure mid-stream is an `{"error": {…}}` line. Knobs for tests
/// (request headers, which pachd would pass on as harmless metadata):
/// `standin-stream-count` (default 3), `standin-stream-interval-ms` (default 150),
/// `standin-fail-after` (end with an error line after that many results).
fn stream(request: &Request, method: &str) -> Response<Body> {
    let count = header_number(request, "standin-stream-count", 3).min(10_000);
    let interval = Duration::from_millis(header_number(request, "standin-stream-interval-ms", 150));
    let fail_after = request
        .headers()
        .get("standin-fail-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if fail_after == Some(0) {
        // Before the first message nothing is written yet: grpc-gateway answers with the
        // code's HTTP status, still as an error line.
        let error = PachError::new(code::UNAVAILABLE, "standin: stream failed as asked");
        let line = format!("{{\"error\":{}}}\n", status_json(&error));
        return response(gateway_http_status(error.code), "application/json", line);
    }
    let jobs = method == "/pps_v2.API/ListJob";
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(async move {
        for i in 0..count {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            if fail_after == Some(i) {
                let error = PachError::new(code::UNAVAILABLE, "standin: stream failed as asked");
                let line = format!("{{\"error\":{}}}\n", status_json(&error));
                let _ = tx.send(Bytes::from(line)).await;
                return;
            }
            let result = if jobs {
                json!({"job": {"pipeline": {"project": {"name": "default"}, "name": "edges"},
                               "id": format!("{i:032x}")},
                       "state": "JOB_SUCCESS", "created": rfc3339(SystemTime::now())})
            } else {
                let name = if i == 0 {
                    "default".to_string()
                } else {
                    format!("project-{i}")
                };
                json!({"project": {"name": name}, "description": "", "authInfo": null,
                       "createdAt": rfc3339(SystemTime::now()), "metadata": {}})
            };
            let line = format!("{}\n", json!({"result": result}));
            if tx.send(Bytes::from(line)).await.is_err() {
                return;
            }
        }
    });
    let frames = ReceiverStream::new(rx).map(|b| Ok(hyper::body::Frame::data(b)));
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
