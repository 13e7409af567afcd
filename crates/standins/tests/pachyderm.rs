//! The Pachyderm-faithful stand-ins, tested directly over loopback sockets (no pachgate):
//! pachd's token answers over gRPC (tonic client) and over its HTTP server (hyper client),
//! the file server's query-then-header token choice, grpc-gateway's JSON errors and NDJSON
//! streaming, and the dex → OIDC callback → Authenticate chain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pachgate_standins::messages::{AuthenticateRequest, EchoRequest, Empty, WhoAmIRequest};
use pachgate_standins::pachd::{auth_api, echo_api, version_api};
use pachgate_standins::{PachdOptions, PachdState};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;
use tonic::Code;

struct Stack {
    grpc: SocketAddr,
    http: SocketAddr,
    dex: SocketAddr,
    oidc: SocketAddr,
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    (listener, address)
}

async fn start(options: PachdOptions) -> Stack {
    let state = Arc::new(PachdState::new(PachdOptions {
        record_calls: true,
        ..options
    }));
    let (grpc_listener, grpc) = bind().await;
    let (http_listener, http) = bind().await;
    let (dex_listener, dex) = bind().await;
    let (oidc_listener, oidc) = bind().await;
    tokio::spawn(pachgate_standins::serve_pachd_shared(
        grpc_listener,
        state.clone(),
    ));
    tokio::spawn(pachgate_standins::serve_pachd_http(
        http_listener,
        state.clone(),
    ));
    tokio::spawn(pachgate_standins::serve_dex(dex_listener, state.clone()));
    tokio::spawn(pachgate_standins::serve_oidc(oidc_listener, state));
    Stack {
        grpc,
        http,
        dex,
        oidc,
    }
}

fn enforcing() -> PachdOptions {
    PachdOptions {
        enforce_auth: true,
        ..PachdOptions::default()
    }
}

/// One HTTP/1.1 request on a fresh connection; the response head and its streaming body.
async fn send(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response<Incoming> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", address.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    sender.send_request(request).await.unwrap()
}

struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text()))
    }
    fn content_type(&self) -> &str {
        self.headers
            .get("content-type")
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }
}

async fn fetch(
    address: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let response = send(address, method, path, headers, body).await;
    let (parts, incoming) = response.into_parts();
    let body = incoming.collect().await.unwrap().to_bytes().to_vec();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    fetch(address, Method::GET, path, headers, "").await
}

async fn api(address: SocketAddr, method: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    fetch(
        address,
        Method::POST,
        &format!("/api/{method}"),
        headers,
        body,
    )
    .await
}

/// The grpc-gateway error shape: exact Content-Type, code, message, empty details.
fn assert_gateway_error(answer: &Answer, status: u16, code: i64, message: &str) {
    assert_eq!(answer.status.as_u16(), status, "{}", answer.text());
    assert_eq!(answer.content_type(), "application/json");
    let json = answer.json();
    assert_eq!(json["code"], code, "{json}");
    assert_eq!(json["message"], message, "{json}");
    assert_eq!(json["details"], Value::Array(vec![]), "{json}");
}

async fn seen(stack: &Stack) -> Vec<Value> {
    let answer = get(stack.http, "/_standin/seen", &[]).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json().as_array().unwrap().clone()
}

async fn clear_seen(stack: &Stack) {
    let answer = fetch(stack.http, Method::DELETE, "/_standin/seen", &[], "").await;
    assert_eq!(answer.status, StatusCode::NO_CONTENT);
}

const NO_TOKEN: &str = "no authentication token (try logging in)";
const BAD_TOKEN: &str = "provided auth token is corrupted or has expired (try logging in again)";
const EXPIRED: &str = "token expiration is in the past";

#[tokio::test]
async fn pfs_token_comes_from_the_query_first_then_the_header() {
    let stack = start(PachdOptions::default()).await;
    let file = "/pfs/default/images/master/dir/cat.png";

    // Query valid, header expired: the query wins.
    let answer = get(
        stack.http,
        &format!("{file}?authn-token=demo-token"),
        &[("authn-token", "expired-token")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(
        answer.text(),
        "standin pfs file default/images@master:/dir/cat.png\n"
    );
    assert_eq!(answer.headers["vary"], "authn-token");

    // Query expired, header valid: still the query, and pachd's expired answer.
    let answer = get(
        stack.http,
        &format!("{file}?authn-token=expired-token"),
        &[("authn-token", "demo-token")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        answer.text(),
        format!("problem inspecting file: rpc error: code = Internal desc = {EXPIRED}")
    );

    // An empty query value falls through to the header; a percent-encoded key counts.
    let answer = get(
        stack.http,
        &format!("{file}?authn-token=&x=1"),
        &[("authn-token", "demo-token-2")],
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let answer = get(stack.http, &format!("{file}?authn%2Dtoken=demo-token"), &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());

    // Cookie and Authorization are never read.
    let answer = get(
        stack.http,
        file,
        &[
            ("cookie", "authn-token=demo-token"),
            ("authorization", "Bearer demo-token"),
        ],
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.content_type(), "text/plain");
    assert_eq!(
        answer.text(),
        format!("problem inspecting file: rpc error: code = Unauthenticated desc = {NO_TOKEN}")
    );

    let answer = get(stack.http, &format!("{file}?authn-token=wrong"), &[]).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.text().ends_with(BAD_TOKEN), "{}", answer.text());

    // What the stand-in saw: which source it used and whose token, never the token.
    let seen = seen(&stack).await;
    let summary: Vec<(String, String)> = seen
        .iter()
        .map(|s| {
            (
                s["source"].as_str().unwrap().to_string(),
                s["token"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected = [
        ("query", "robot:demo"),
        ("query", "expired"),
        ("header", "robot:second"),
        ("query", "robot:demo"),
        ("none", "none"),
        ("query", "invalid"),
    ];
    assert_eq!(
        summary,
        expected
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect::<Vec<_>>()
    );
    assert!(seen
        .iter()
        .all(|s| s["method"] == file && s["via"] == "http"));
    let raw = get(stack.http, "/_standin/seen", &[]).await.text();
    assert!(
        !raw.contains("demo-token"),
        "a raw token was recorded: {raw}"
    );
}

#[tokio::test]
async fn archive_answers_200_zip_with_the_error_inside_when_the_token_is_bad() {
    let stack = start(PachdOptions::default()).await;
    let good = get(stack.http, "/archive/ASpec.zip?authn-token=demo-token", &[]).await;
    assert_eq!(good.status, StatusCode::OK);
    assert_eq!(good.content_type(), "application/zip");
    assert!(good.body.starts_with(b"PK\x03\x04"));
    assert!(!good.text().contains("@error.txt"));

    let bad = get(stack.http, "/archive/ASpec.zip", &[]).await;
    assert_eq!(
        bad.status,
        StatusCode::OK,
        "pachd sends 200 before it resolves"
    );
    assert_eq!(bad.content_type(), "application/zip");
    assert!(bad.text().contains("@error.txt"));
    assert!(bad.text().contains(NO_TOKEN));

    let wrong_format = get(stack.http, "/archive/ASpec.tar", &[]).await;
    assert_eq!(wrong_format.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        wrong_format.text(),
        "invalid URL: unknown archive format tar\n"
    );
}

#[tokio::test]
async fn gateway_errors_are_grpc_gateway_json_with_its_statuses() {
    let stack = start(PachdOptions::default()).await;

    let answer = api(stack.http, "auth_v2.API/WhoAmI", &[], "{}").await;
    assert_gateway_error(&answer, 401, 16, NO_TOKEN);
    assert_eq!(answer.headers["www-authenticate"], NO_TOKEN);

    let answer = api(
        stack.http,
        "auth_v2.API/WhoAmI",
        &[("authn-token", "expired-token")],
        "",
    )
    .await;
    assert_gateway_error(&answer, 500, 13, EXPIRED);

    let answer = api(
        stack.http,
        "auth_v2.API/WhoAmI",
        &[("authn-token", "nope")],
        "",
    )
    .await;
    assert_gateway_error(&answer, 401, 16, BAD_TOKEN);

    // The query is not metadata: /api/ reads only the header.
    let answer = fetch(
        stack.http,
        Method::POST,
        "/api/auth_v2.API/WhoAmI?authn-token=demo-token",
        &[],
        "",
    )
    .await;
    assert_gateway_error(&answer, 401, 16, NO_TOKEN);

    let answer = api(
        stack.http,
        "auth_v2.API/WhoAmI",
        &[("authn-token", "demo-token")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.content_type(), "application/json");
    let who = answer.json();
    assert_eq!(who["username"], "robot:demo");
    assert!(who["expiration"].as_str().unwrap().ends_with('Z'));

    // Two authn-token headers are two metadata values: pachd's UNKNOWN.
    let answer = api(
        stack.http,
        "pfs_v2.API/ListRepo",
        &[("authn-token", "demo-token"), ("authn-token", "demo-token")],
        "",
    )
    .await;
    assert_gateway_error(
        &answer,
        500,
        2,
        "multiple authentication token keys found in context",
    );

    // Public methods need no token; the rest do.
    let answer = api(stack.http, "versionpb_v2.API/GetVersion", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["major"], 2);
    let answer = api(stack.http, "pfs_v2.API/ReposSummary", &[], "{}").await;
    assert_gateway_error(&answer, 401, 16, NO_TOKEN);
    let answer = api(
        stack.http,
        "pfs_v2.API/ReposSummary",
        &[("authn-token", "demo-token")],
        "{}",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(answer.json()["summaries"].is_array());
    let answer = api(
        stack.http,
        "auth_v2.API/Authorize",
        &[("authn-token", "demo-token")],
        r#"{"resource":{"type":"CLUSTER"},"permissions":["CLUSTER_ADMIN"]}"#,
    )
    .await;
    assert_eq!(answer.json()["authorized"], true);

    // Routing errors as grpc-gateway gives them.
    let answer = api(stack.http, "no.Such/Thing", &[], "{}").await;
    assert_gateway_error(&answer, 404, 5, "Not Found");
    let answer = get(stack.http, "/api/auth_v2.API/WhoAmI", &[]).await;
    assert_gateway_error(&answer, 501, 12, "Method Not Allowed");
    let answer = api(
        stack.http,
        "pfs_v2.API/ListRepo",
        &[("authn-token", "demo-token")],
        "{not json",
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["code"], 3);

    // The rest of pachd's HTTP server.
    let health = get(stack.http, "/healthz", &[]).await;
    assert_eq!(
        (health.status, health.text().as_str()),
        (StatusCode::OK, "healthy\n")
    );
    let schema = get(
        stack.http,
        "/jsonschema/pps_v2/CreatePipelineRequest.schema.json",
        &[],
    )
    .await;
    assert_eq!(schema.status, StatusCode::OK);
    assert_eq!(schema.content_type(), "application/json");
    assert_eq!(schema.json()["$ref"], "#/definitions/CreatePipelineRequest");
    assert_eq!(
        get(stack.http, "/elsewhere", &[]).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn streaming_methods_send_ndjson_lines_as_they_are_produced() {
    let stack = start(PachdOptions::default()).await;
    let started = Instant::now();
    let response = send(
        stack.http,
        Method::POST,
        "/api/pfs_v2.API/ListProject",
        &[
            ("authn-token", "demo-token"),
            ("standin-stream-count", "2"),
            ("standin-stream-interval-ms", "1000"),
        ],
        "{}",
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let mut body = response.into_body();
    let mut text = String::new();
    let mut first_line_at = None;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
            if first_line_at.is_none() && text.contains('\n') {
                first_line_at = Some(started.elapsed());
            }
        }
    }
    let ended = started.elapsed();
    let first = first_line_at.expect("a line");
    // The second line is produced a second after the first: a client that got the first
    // only at the end was served a buffered response.
    assert!(
        ended >= first + Duration::from_millis(500),
        "the first line came at {first:?}, the end at {ended:?}: buffered, not streamed"
    );
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["result"]["project"]["name"], "default");

    // A failure mid-stream is an {"error": …} line after the results.
    let answer = api(
        stack.http,
        "pps_v2.API/ListJob",
        &[
            ("authn-token", "demo-token"),
            ("standin-stream-interval-ms", "10"),
            ("standin-fail-after", "2"),
        ],
        "",
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    let lines: Vec<Value> = answer
        .text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", answer.text());
    assert!(lines[1]["result"]["job"].is_object());
    assert_eq!(lines[2]["error"]["code"], 14);

    // Refused by pachd's interceptor before the first message: grpc-gateway's stream
    // forwarder still writes it, wrapped as {"error": …} with the code's HTTP status.
    let answer = api(stack.http, "pps_v2.API/ListJob", &[], "").await;
    assert_eq!(answer.status.as_u16(), 401, "{}", answer.text());
    assert_eq!(answer.content_type(), "application/json");
    let error = &answer.json()["error"];
    assert_eq!(error["code"], 16, "{}", answer.text());
    assert_eq!(error["message"], NO_TOKEN);
}

async fn channel(address: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn with_tokens<T>(message: T, tokens: &[&str]) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for token in tokens {
        request
            .metadata_mut()
            .append("authn-token", token.parse().unwrap());
    }
    request
}

#[tokio::test]
async fn grpc_enforcement_covers_the_echo_service_with_pachds_answers() {
    let stack = start(enforcing()).await;
    let channel = channel(stack.grpc).await;
    let mut echo = echo_api::echo_client::EchoClient::new(channel.clone());
    let unary = |tokens: &[&str]| with_tokens(EchoRequest::default(), tokens);

    let cases: [(&[&str], Code, &str); 5] = [
        (&[], Code::Unauthenticated, NO_TOKEN),
        (&["wrong"], Code::Unauthenticated, BAD_TOKEN),
        (&[""], Code::Unauthenticated, BAD_TOKEN),
        (&["expired-token"], Code::Internal, EXPIRED),
        (
            &["demo-token", "demo-token"],
            Code::Unknown,
            "multiple authentication token keys found in context",
        ),
    ];
    for (tokens, code, message) in cases {
        let status = echo.unary(unary(tokens)).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (code, message),
            "{tokens:?}"
        );
    }
    echo.unary(unary(&["demo-token"])).await.unwrap();
    let status = echo
        .server_stream(unary(&[]))
        .await
        .expect_err("streams are enforced too");
    assert_eq!(status.code(), Code::Unauthenticated);

    // Public methods pass without a token; WhoAmI answers for itself.
    let mut version = version_api::a_p_i_client::APIClient::new(channel.clone());
    version.get_version(Empty {}).await.unwrap();
    let mut auth = auth_api::a_p_i_client::APIClient::new(channel.clone());
    let status = auth
        .who_am_i(with_tokens(WhoAmIRequest {}, &["expired-token"]))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Internal, EXPIRED));

    // Only the calls with a good token reached the echo service.
    let stats = echo
        .stats(unary(&["demo-token"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.unary_calls, 1);

    let seen = seen(&stack).await;
    let unary_seen: Vec<&str> = seen
        .iter()
        .filter(|s| s["method"] == "/pachgate.standin.Echo/Unary")
        .map(|s| s["token"].as_str().unwrap())
        .collect();
    assert_eq!(
        unary_seen,
        [
            "none",
            "invalid",
            "empty",
            "expired",
            "multiple",
            "robot:demo"
        ]
    );
    assert!(seen.iter().all(|s| s["via"] == "grpc"));
    clear_seen(&stack).await;
    assert!(self::seen(&stack).await.is_empty());
}

#[tokio::test]
async fn without_enforcement_only_who_am_i_looks_at_the_token() {
    let stack = start(PachdOptions::default()).await;
    let mut echo = echo_api::echo_client::EchoClient::new(channel(stack.grpc).await);
    echo.unary(EchoRequest::default()).await.unwrap();
    echo.unary(with_tokens(EchoRequest::default(), &["expired-token"]))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_short_lived_token_expires_into_pachds_internal_answer() {
    let started = Instant::now();
    let stack = start(PachdOptions {
        short_lived: Some(("brief".into(), Duration::from_secs(2))),
        ..enforcing()
    })
    .await;
    let mut auth = auth_api::a_p_i_client::APIClient::new(channel(stack.grpc).await);
    let who = auth
        .who_am_i(with_tokens(WhoAmIRequest {}, &["brief"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.username, "robot:short-lived");
    tokio::time::sleep_until((started + Duration::from_millis(2300)).into()).await;
    let status = auth
        .who_am_i(with_tokens(WhoAmIRequest {}, &["brief"]))
        .await
        .unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::Internal, EXPIRED));
}

#[tokio::test]
async fn with_auth_inactive_nothing_needs_a_token() {
    let stack = start(PachdOptions {
        auth_active: false,
        ..enforcing()
    })
    .await;
    let channel = channel(stack.grpc).await;
    let mut echo = echo_api::echo_client::EchoClient::new(channel.clone());
    echo.unary(EchoRequest::default()).await.unwrap();
    let mut auth = auth_api::a_p_i_client::APIClient::new(channel);
    let status = auth.who_am_i(WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Unimplemented, "the auth service is not activated")
    );

    let answer = api(
        stack.http,
        "auth_v2.API/WhoAmI",
        &[("authn-token", "")],
        "{}",
    )
    .await;
    assert_gateway_error(&answer, 501, 12, "the auth service is not activated");
    let answer = api(stack.http, "pps_v2.API/ListJob", &[], "{}").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.text().lines().count(), 3);
    let answer = get(stack.http, "/pfs/default/repo/master/file", &[]).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
}

#[tokio::test]
async fn the_oidc_redirect_chain_yields_a_pach_token() {
    let stack = start(enforcing()).await;
    let callback = format!("http://{}/authorization-code/callback", stack.oidc);

    // dex sends the browser back to whatever redirect_uri the client named.
    let login = get(
        stack.dex,
        &format!(
            "/dex/auth?client_id=pachd&response_type=code&redirect_uri={callback}&state=st%2B1"
        ),
        &[],
    )
    .await;
    assert_eq!(login.status, StatusCode::FOUND);
    let location: http::Uri = login.headers["location"].to_str().unwrap().parse().unwrap();
    assert_eq!(
        location.authority().unwrap().as_str(),
        stack.oidc.to_string()
    );
    assert_eq!(location.path(), "/authorization-code/callback");
    assert!(location.query().unwrap().ends_with("&state=st%2B1"));

    // The callback ties the state to the user, as pachd's does.
    let done = get(stack.oidc, location.path_and_query().unwrap().as_str(), &[]).await;
    assert_eq!(done.status, StatusCode::OK);
    assert_eq!(
        done.text(),
        "You are now logged in. Go back to the terminal to use Pachyderm!"
    );

    // The console's Authenticate: no token, the OIDC state in JSON.
    let answer = api(
        stack.http,
        "auth_v2.API/Authenticate",
        &[("authn-token", "")],
        r#"{"oidcState":"st+1"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let token = answer.json()["pachToken"].as_str().unwrap().to_string();
    let who = api(
        stack.http,
        "auth_v2.API/WhoAmI",
        &[("authn-token", &token)],
        "",
    )
    .await;
    assert_eq!(who.json()["username"], "user:standin@example.com");

    // The same over gRPC, with the code traded at dex's token endpoint for an ID token.
    let login = get(
        stack.dex,
        &format!("/dex/auth?client_id=pachd&redirect_uri={callback}&state=other"),
        &[],
    )
    .await;
    let location: http::Uri = login.headers["location"].to_str().unwrap().parse().unwrap();
    let code = location
        .query()
        .unwrap()
        .split('&')
        .find_map(|p| p.strip_prefix("code="))
        .unwrap()
        .to_string();
    let tokens = fetch(
        stack.dex,
        Method::POST,
        "/dex/token",
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("grant_type=authorization_code&code={code}"),
    )
    .await;
    let id_token = tokens.json()["id_token"].as_str().unwrap().to_string();
    let mut auth = auth_api::a_p_i_client::APIClient::new(channel(stack.grpc).await);
    let pach_token = auth
        .authenticate(AuthenticateRequest {
            oidc_state: String::new(),
            id_token,
        })
        .await
        .unwrap()
        .into_inner()
        .pach_token;
    let who = auth
        .who_am_i(with_tokens(WhoAmIRequest {}, &[&pach_token]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.username, "user:standin@example.com");
    let mut echo = echo_api::echo_client::EchoClient::new(channel(stack.grpc).await);
    echo.unary(with_tokens(EchoRequest::default(), &[&pach_token]))
        .await
        .unwrap();

    // A code dex never issued is refused at the callback; without one it is a bad request.
    let refused = get(
        stack.oidc,
        "/authorization-code/callback?code=forged&state=abcd",
        &[],
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused
        .text()
        .starts_with("authorization failed (OIDC state token: \"ab.../4\""));
    let bad = get(stack.oidc, "/authorization-code/callback?state=abcd", &[]).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let answer = api(
        stack.http,
        "auth_v2.API/Authenticate",
        &[],
        r#"{"idToken":"forged"}"#,
    )
    .await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(answer.json()["code"], 2);

    let discovery = get(stack.dex, "/dex/.well-known/openid-configuration", &[]).await;
    assert_eq!(discovery.status, StatusCode::OK);
    assert_eq!(
        discovery.json()["issuer"],
        format!("http://{}/dex", stack.dex)
    );
}
