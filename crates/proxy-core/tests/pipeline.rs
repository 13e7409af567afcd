//! The request pipeline, driven in-process: a `Gateway` on a loopback listener in this test's
//! own runtime, scripted upstreams (hyper servers written here), and hyper clients speaking
//! HTTP/1.1 and h2c. Each stage's outcome — allow, deny, no route, forward, upstream down —
//! is checked in each way a refusal is written (gRPC trailers-only, grpc-gateway JSON, text)
//! by status, headers and body, in Rust. The tunnel stage (websockets) is tested the same
//! way in `tunnel.rs`, and the forward stage's resend of refused h2 streams in
//! `request_resend.rs`; `fixture` holds what they share.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pachgate_auth_gate::{DenyReason, PachydermAuthSettings};
use pachgate_client_policy::CidrSet;
use pachgate_proxy_core::{
    ClientPolicy, Gateway, PachydermAuthSpec, RateLimiter, RouteAuth, Snapshot, UpstreamProtocol,
    UpstreamSpec, UpstreamTls,
};
use tokio::net::{TcpListener, TcpStream};

mod fixture;
use fixture::*;

/// An HTTP/1.1 upstream that says which path it was asked for (and, in `x-upstream-host`,
/// the Host it got; in `x-upstream-cookies`, its Cookie lines, joined by ` | `).
async fn http1_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let text = format!("upstream saw {}", request.uri().path());
                    let mut response = Response::new(Full::new(Bytes::from(text)));
                    response
                        .headers_mut()
                        .insert("x-upstream", "http1".parse().unwrap());
                    if let Some(host) = request.headers().get(http::header::HOST) {
                        response
                            .headers_mut()
                            .insert("x-upstream-host", host.clone());
                    }
                    if let Some(chain) = request.headers().get("x-forwarded-for") {
                        response
                            .headers_mut()
                            .insert("x-upstream-forwarded-for", chain.clone());
                    }
                    let cookies: Vec<&str> = request
                        .headers()
                        .get_all(http::header::COOKIE)
                        .iter()
                        .map(|v| v.to_str().unwrap())
                        .collect();
                    if !cookies.is_empty() {
                        response
                            .headers_mut()
                            .insert("x-upstream-cookies", cookies.join(" | ").parse().unwrap());
                    }
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// A response field value that hyper's HPACK encoder (h2's) Huffman-codes, being shorter
/// so: the upstream client's decoder must read it back.
const UPSTREAM_NOTE: &str = "answered by the h2c upstream; Huffman-coded on the wire";

/// An h2c upstream on a loopback port (hyper's server), each request answered by `answer`.
async fn h2c_upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let answer = answer.clone();
                    async move { Ok::<_, Infallible>(answer(request).await) }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// An h2c gRPC upstream answering every call trailers-only with status 0.
async fn grpc_upstream() -> SocketAddr {
    h2c_upstream(|_request| async {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
        headers.insert("grpc-status", "0".parse().unwrap());
        headers.insert("x-upstream-note", UPSTREAM_NOTE.parse().unwrap());
        response
    })
    .await
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// The gateway under test, serving plaintext (HTTP/1.1 and h2c) on loopback:
/// - `/app`: the HTTP/1.1 upstream, open to loopback;
/// - `/private`: the same upstream, open to 10.0.0.0/8 only;
/// - `/down`: an upstream nobody listens for;
/// - `/pkg.Svc/`: the gRPC upstream; `/gone.Svc/`: a gRPC upstream that is down;
/// - `/api/`: pachd's grpc-gateway behind the Pachyderm gate (WhoAmI is never reached:
///   the requests here carry no token).
async fn start_gateway() -> (Arc<Gateway>, SocketAddr) {
    let http1 = http1_upstream().await;
    let grpc = grpc_upstream().await;
    let down = closed_port().await;
    let snapshot = Snapshot::build(
        vec![
            route(
                "app",
                "/app",
                "http1",
                RouteAuth::None,
                cidrs(&["127.0.0.0/8"]),
            ),
            route(
                "private",
                "/private",
                "http1",
                RouteAuth::None,
                cidrs(&["10.0.0.0/8"]),
            ),
            route("down", "/down", "down", RouteAuth::None, CidrSet::default()),
            route(
                "grpc",
                "/pkg.Svc/",
                "grpc",
                RouteAuth::None,
                CidrSet::default(),
            ),
            route(
                "gone",
                "/gone.Svc/",
                "gone",
                RouteAuth::None,
                CidrSet::default(),
            ),
            route(
                "private-grpc",
                "/private.Svc/",
                "grpc",
                RouteAuth::None,
                cidrs(&["10.0.0.0/8"]),
            ),
            route(
                "pachd-api",
                "/api/",
                "http1",
                RouteAuth::Pachyderm,
                CidrSet::default(),
            ),
        ],
        vec![
            upstream("http1", http1, UpstreamProtocol::Http1),
            upstream("down", down, UpstreamProtocol::Http1),
            upstream("grpc", grpc, UpstreamProtocol::H2c),
            upstream("gone", down, UpstreamProtocol::H2c),
        ],
        Some(PachydermAuthSpec {
            upstream: "gone".into(),
            who_am_i_method: "/auth_v2.API/WhoAmI".into(),
            settings: PachydermAuthSettings::default(),
        }),
        None,
        ClientPolicy::default(),
    )
    .expect("a valid snapshot");
    serve(snapshot).await
}

#[tokio::test]
async fn an_allowed_request_is_forwarded_and_answered_by_the_upstream() {
    let (_gateway, addr) = start_gateway().await;
    let answer = get(addr, "/app/page").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream"), Some("http1"));
    assert_eq!(answer.body, "upstream saw /app/page");

    let answer = grpc_call(addr, "/pkg.Svc/Call").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("0"));
    assert_eq!(answer.header("x-upstream-note"), Some(UPSTREAM_NOTE));
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
}

/// An absolute-form request is routed on its target's authority, and the HTTP/1.1 upstream
/// gets that authority as Host, not the Host line the client added (RFC 9112 §3.2.2): the
/// route (and the gate on it) and the upstream see the same host.
#[tokio::test]
async fn an_absolute_form_target_sets_the_host_the_upstream_sees() {
    let (_gateway, addr) = start_gateway().await;
    let request = Request::get("http://public.example/app/page")
        .header("host", "admin.example")
        .body(empty())
        .unwrap();
    let answer = send_http1(addr, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream-host"), Some("public.example"));
    // An origin-form request keeps its Host as sent.
    let answer = get(addr, "/app/page").await;
    assert_eq!(answer.header("x-upstream-host"), Some("pachgate.test"));
}

/// One request written as `head` over a new connection: the status line of the answer.
async fn status_line_of(gateway: SocketAddr, head: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = TcpStream::connect(gateway).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        let read = tokio::time::timeout(std::time::Duration::from_secs(10), tcp.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        if read == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..read]);
    }
    let text = String::from_utf8_lossy(&answer);
    text.lines().next().unwrap_or_default().to_string()
}

/// Userinfo in a Host or in an absolute-form target, a Host that is no `host[:port]`, an
/// invalid percent escape, and the asterisk form on anything but OPTIONS are 400s: routing would see one host while the
/// upstream and X-Forwarded-Host get another (and the credentials would be forwarded and
/// logged), or a target no path rule was written for would travel upstream as sent.
#[tokio::test]
async fn a_target_naming_userinfo_or_no_path_is_a_bad_request() {
    let (_gateway, addr) = start_gateway().await;
    for head in [
        "GET /app/page HTTP/1.1\r\nHost: alice:s3cret@pachgate.test\r\n\r\n",
        "GET http://alice:s3cret@pachgate.test/app/page HTTP/1.1\r\nHost: pachgate.test\r\n\r\n",
        "GET /app/page HTTP/1.1\r\nHost: evil/.pachgate.test\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: pachgate.test\r\n\r\n",
        // An invalid escape, as Go's server (pachd) refuses it: `%3%31` would decode to `%31`.
        "GET /app/%3%31 HTTP/1.1\r\nHost: pachgate.test\r\n\r\n",
    ] {
        assert_eq!(
            status_line_of(addr, head).await,
            "HTTP/1.1 400 Bad Request",
            "{head:?}"
        );
    }
    // What is allowed: a Host with a port, an empty Host, OPTIONS *.
    for (head, status) in [
        (
            "GET /app/page HTTP/1.1\r\nHost: pachgate.test:8443\r\n\r\n",
            "200 OK",
        ),
        ("GET /app/page HTTP/1.1\r\nHost:\r\n\r\n", "200 OK"),
        (
            "OPTIONS * HTTP/1.1\r\nHost: pachgate.test\r\n\r\n",
            "404 Not Found",
        ),
    ] {
        assert_eq!(
            status_line_of(addr, head).await,
            format!("HTTP/1.1 {status}"),
            "{head:?}"
        );
    }
}

/// The X-Forwarded-For chain a trusted proxy sends goes on with the proxy's address
/// appended; from any other peer it is the client's own claim, and the upstream gets the
/// client's address alone.
#[tokio::test]
async fn only_a_trusted_proxys_forwarded_chain_is_passed_on() {
    let backend = http1_upstream().await;
    let chain_seen = |trusted: &'static [&'static str]| async move {
        let snapshot = Snapshot::build(
            vec![open_route("app", "/", "http1")],
            vec![upstream("http1", backend, UpstreamProtocol::Http1)],
            None,
            None,
            ClientPolicy {
                trusted_proxies: cidrs(trusted),
                ..ClientPolicy::default()
            },
        )
        .unwrap();
        let (_gateway, addr) = serve(snapshot).await;
        let request = Request::get("/page")
            .header("host", "pachgate.test")
            .header("x-forwarded-for", "198.51.100.9, 203.0.113.1")
            .body(empty())
            .unwrap();
        let answer = send_http1(addr, request).await;
        assert_eq!(answer.status, StatusCode::OK);
        answer
            .header("x-upstream-forwarded-for")
            .map(str::to_string)
    };
    assert_eq!(
        chain_seen(&["127.0.0.1/32"]).await.as_deref(),
        Some("198.51.100.9, 203.0.113.1, 127.0.0.1")
    );
    assert_eq!(chain_seen(&[]).await.as_deref(), Some("127.0.0.1"));
    assert_eq!(
        chain_seen(&["10.0.0.0/8"]).await.as_deref(),
        Some("127.0.0.1")
    );
}

/// Percent-encoded letters and digits in a path are what pachd's HTTP routers (Go's
/// `ServeMux`, grpc-gateway) decode before they route: routing and the gate decode them too, so `/%61pi/` is pachd's gated `/api/`
/// (not a path no route knows), `%41uthenticate` the public `Authenticate`, and the upstream
/// gets the path the gate judged.
#[tokio::test]
async fn encoded_letters_are_routed_and_gated_as_pachd_reads_them() {
    let (_gateway, addr) = start_gateway().await;
    let answer = get(addr, "/%61pi/pfs_v2.API/ListRepo").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    let answer = get(addr, "/api/auth_v2.API/%41uthenticate").await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body, "upstream saw /api/auth_v2.API/Authenticate");
}

#[tokio::test]
async fn no_route_is_404_text_or_grpc_unimplemented() {
    let (_gateway, addr) = start_gateway().await;
    let answer = get(addr, "/nowhere").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.body, "no route for this request\n");

    let answer = grpc_call(addr, "/nowhere.Svc/Call").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("content-type"), Some("application/grpc"));
    assert_eq!(answer.header("grpc-status"), Some("12"));
    assert_eq!(
        answer.header("grpc-message"),
        Some("pachgate: no route for this method")
    );
    assert_eq!(answer.body, "");
}

/// RFC 9112 §3.2: two Host lines are a 400, not forwarded: routing and the gate read the
/// first, an upstream might serve the second.
#[tokio::test]
async fn two_host_headers_are_a_bad_request() {
    let (_gateway, addr) = start_gateway().await;
    let request = Request::get("/app")
        .header("host", "pachgate.test")
        .header("host", "elsewhere.test")
        .body(empty())
        .unwrap();
    let answer = send_http1(addr, request).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.body, "more than one Host header\n");
    assert_eq!(get(addr, "/app").await.status, StatusCode::OK);
}

/// RFC 9113 §8.2.3: an h2 client's cookies (a browser sends each as a field of its own)
/// reach an HTTP/1.1 upstream as one `Cookie` line joined by `; `.
#[tokio::test]
async fn an_h2_clients_cookies_reach_http1_as_one_line() {
    let (_gateway, addr) = start_gateway().await;
    let request = Request::get("http://pachgate.test/app")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(empty())
        .unwrap();
    let answer = send_h2c(addr, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("x-upstream-cookies"), Some("a=1; b=2"));
}

#[tokio::test]
async fn a_denied_client_is_told_so_in_its_protocol() {
    let (gateway, addr) = start_gateway().await;
    let reason = DenyReason::AddressNotAllowed.message();
    let answer = get(addr, "/private/page").await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(answer.body, format!("{reason}\n"));

    let answer = grpc_call(addr, "/private.Svc/Call").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("7"));
    assert_eq!(answer.header("grpc-message"), Some(reason.as_str()));

    // Both denials were counted.
    let metrics = gateway.metrics().encode();
    assert!(
        metrics.contains("address_not_allowed"),
        "no denial counted:\n{metrics}"
    );
}

#[tokio::test]
async fn a_gate_denial_on_pachds_api_is_grpc_gateway_json() {
    let (_gateway, addr) = start_gateway().await;
    let reason = DenyReason::MissingToken.message();
    let answer = get(addr, "/api/pps_v2.API/InspectPipeline").await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.header("content-type"), Some("application/json"));
    assert_eq!(
        answer.header("www-authenticate"),
        Some("Bearer realm=\"pachyderm\"")
    );
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"code": 16, "message": reason, "details": []})
    );
}

#[tokio::test]
async fn an_upstream_that_is_down_is_503_text_or_grpc_unavailable() {
    let (_gateway, addr) = start_gateway().await;
    let answer = get(addr, "/down/page").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.header("content-type"), Some("text/plain"));
    assert_eq!(
        answer.body,
        "upstream connect error: no healthy upstream (pachgate cannot connect to it)\n"
    );

    let answer = grpc_call(addr, "/gone.Svc/Call").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("14"));
    let message = answer.header("grpc-message").unwrap();
    assert!(message.starts_with("pachgate: upstream gone"), "{message}");
}

/// An h2c upstream: `/big` answers 8 MiB, anything else `ok`.
async fn h2c_upstream_with_big_answers() -> SocketAddr {
    h2c_upstream(|request| async move {
        let body = match request.uri().path() {
            "/big" => Bytes::from(vec![b'x'; 8 << 20]),
            _ => Bytes::from_static(b"ok"),
        };
        Response::new(Full::new(body))
    })
    .await
}

/// Requests from every client of a worker share one h2 connection per upstream address.
/// Clients that stop reading large answers (a paused `pachctl get file`) hold their own
/// streams' windows there, not the connection's: another client's answer still arrives.
#[tokio::test]
async fn clients_that_stop_reading_do_not_stall_the_shared_upstream_connection() {
    let upstream_addr = h2c_upstream_with_big_answers().await;
    let (_gateway, addr) =
        serve_one_route("/", upstream("up", upstream_addr, UpstreamProtocol::H2c)).await;
    // Twelve streams whose 8 MiB answers nobody reads: 24 MiB of stream windows, past the
    // 16 MiB connection window.
    let (mut stalled, connection) = h2::client::handshake(TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut unread = Vec::new();
    for _ in 0..12 {
        stalled = stalled.ready().await.unwrap();
        let request = Request::get("http://pachgate.test/big").body(()).unwrap();
        let (response, _) = stalled.send_request(request, true).unwrap();
        unread.push(response.await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;

    let mut other = h2c_sender(addr).await;
    let request = Request::get("http://pachgate.test/small")
        .body(empty())
        .unwrap();
    let body = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let response = other.send_request(request).await.unwrap();
        response.into_body().collect().await.unwrap().to_bytes()
    })
    .await
    .expect("the other client's answer arrives");
    assert_eq!(&body[..], b"ok");
    drop(unread);
}

/// A scripted pachd (h2c) that takes 200 ms over each WhoAmI, counting them: tokens that
/// start with `good` are valid, any other is refused with 16. Every other call is answered with status 0.
async fn slow_pachd(who_am_i_calls: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
    h2c_upstream(move |request| {
        let calls = who_am_i_calls.clone();
        async move {
            let mut response = Response::new(Full::new(Bytes::new()));
            let headers = response.headers_mut();
            headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
            headers.insert("grpc-status", "0".parse().unwrap());
            if request.uri().path() == "/auth_v2.API/WhoAmI" {
                calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                if request.headers()["authn-token"]
                    .as_bytes()
                    .starts_with(b"good")
                {
                    // WhoAmIResponse { username: "robot:test" }
                    let mut frame = vec![0, 0, 0, 0, 12, 0x0a, 10];
                    frame.extend_from_slice(b"robot:test");
                    *response.body_mut() = Full::new(Bytes::from(frame));
                } else {
                    let headers = response.headers_mut();
                    headers.insert("grpc-status", "16".parse().unwrap());
                    headers.insert("grpc-message", "invalid token".parse().unwrap());
                }
            }
            response
        }
    })
    .await
}

/// A `ListRepo` call whose metadata `headers` adds to: its grpc-status and grpc-message
/// (from the head or the trailers).
async fn list_repo(
    sender: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    headers: Vec<(&'static str, String)>,
) -> (String, Option<String>) {
    let mut request = grpc_request("/pfs_v2.API/ListRepo", full(&[0u8, 0, 0, 0, 0][..]));
    for (name, value) in headers {
        request.headers_mut().append(name, value.parse().unwrap());
    }
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await.unwrap().trailers().cloned();
    let field = |name: &str| {
        parts
            .headers
            .get(name)
            .or_else(|| trailers.as_ref().and_then(|t| t.get(name)))
            .map(|v| v.to_str().unwrap().to_string())
    };
    (
        field("grpc-status").unwrap_or_default(),
        field("grpc-message"),
    )
}

/// `count` concurrent gRPC calls on one connection, the i-th carrying `headers(i)`; their
/// grpc-status values, sorted.
async fn concurrent_calls_with(
    addr: SocketAddr,
    count: usize,
    headers: fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<String> {
    let sender = h2c_sender(addr).await;
    let calls = (0..count).map(|i| {
        let mut sender = sender.clone();
        async move { list_repo(&mut sender, headers(i)).await.0 }
    });
    let mut statuses = futures_util::future::join_all(calls).await;
    statuses.sort();
    statuses
}

/// `count` concurrent gRPC calls from one address, the i-th carrying the token `token(i)`;
/// their grpc-status values, sorted.
async fn concurrent_calls(
    addr: SocketAddr,
    count: usize,
    token: fn(usize) -> String,
) -> Vec<String> {
    let sender = h2c_sender(addr).await;
    let calls = (0..count).map(|i| {
        let mut sender = sender.clone();
        async move {
            list_repo(&mut sender, vec![("authn-token", token(i))])
                .await
                .0
        }
    });
    let mut statuses = futures_util::future::join_all(calls).await;
    statuses.sort();
    statuses
}

/// A gateway whose every path is pachd's gRPC behind the Pachyderm gate, with `failed_auth`
/// as its failed-authentication budget.
async fn gated_pachd(pachd: SocketAddr, failed_auth: RateLimiter) -> (Arc<Gateway>, SocketAddr) {
    gated_pachd_with(
        pachd,
        ClientPolicy {
            failed_auth: Some(failed_auth),
            ..ClientPolicy::default()
        },
    )
    .await
}

/// [`gated_pachd`] with the client `policy` given whole.
async fn gated_pachd_with(pachd: SocketAddr, policy: ClientPolicy) -> (Arc<Gateway>, SocketAddr) {
    gated_pachd_settings(pachd, policy, PachydermAuthSettings::default()).await
}

/// [`gated_pachd_with`], with the gate's `settings`.
async fn gated_pachd_settings(
    pachd: SocketAddr,
    policy: ClientPolicy,
    settings: PachydermAuthSettings,
) -> (Arc<Gateway>, SocketAddr) {
    let snapshot = Snapshot::build(
        vec![route(
            "grpc",
            "/",
            "pachd",
            RouteAuth::Pachyderm,
            CidrSet::default(),
        )],
        vec![upstream("pachd", pachd, UpstreamProtocol::H2c)],
        Some(PachydermAuthSpec {
            upstream: "pachd".into(),
            who_am_i_method: "/auth_v2.API/WhoAmI".into(),
            settings,
        }),
        None,
        policy,
    )
    .unwrap();
    serve(snapshot).await
}

/// The failed-authentication budget applies where pachd is asked: fifty different guesses
/// sent at once from one address reach pachd only as far as the burst allows, the rest
/// refused unasked. Valid users behind one address are not refused by it: fifty calls with
/// one token pachd has not vouched for yet cost one WhoAmI, and twenty different new valid
/// tokens at once (more than the burst) wait their turns and all pass.
#[tokio::test]
async fn concurrent_guesses_reach_pachd_only_within_the_failed_auth_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let who_am_i_calls = Arc::new(AtomicUsize::new(0));
    let pachd = slow_pachd(who_am_i_calls.clone()).await;
    let (_gateway, addr) = gated_pachd(pachd, RateLimiter::per_minute(1, 5)).await;

    let statuses = concurrent_calls(addr, 50, |_| "good".to_string()).await;
    assert_eq!(statuses, vec!["0"; 50]);
    assert_eq!(who_am_i_calls.swap(0, Ordering::SeqCst), 1);

    let statuses = concurrent_calls(addr, 20, |i| format!("good-{i}")).await;
    assert_eq!(statuses, vec!["0"; 20]);
    assert_eq!(who_am_i_calls.swap(0, Ordering::SeqCst), 20);

    let statuses = concurrent_calls(addr, 50, |i| format!("guess-{i}")).await;
    // Refused unasked: RESOURCE_EXHAUSTED. Asked and rejected: UNAUTHENTICATED.
    let rejected = statuses.iter().filter(|s| *s == "16").count();
    let refused = statuses.iter().filter(|s| *s == "8").count();
    assert_eq!((rejected, refused), (5, 45), "{statuses:?}");
    assert_eq!(who_am_i_calls.load(Ordering::SeqCst), 5);
}

/// A gateway routing everything to a TLS upstream (of `protocol`) that accepts TCP and never
/// answers the ClientHello, with a 300 ms `connect_timeout`; and the count of connections
/// the upstream has accepted.
async fn behind_a_silent_tls_upstream(
    protocol: UpstreamProtocol,
) -> (
    Arc<Gateway>,
    SocketAddr,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    let (silent, connects) = silent_peer().await;
    let (gateway, addr) = serve_one_route("/", silent_tls_spec(&[silent], protocol)).await;
    (gateway, addr, connects)
}

/// A peer that accepts TCP connections, holds them and never sends a byte; how many it
/// accepted.
async fn silent_peer() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    let connects = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connects.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(tcp);
        }
    });
    (silent, connects)
}

/// A TLS upstream (of `protocol`) at `addresses`, with a 300 ms `connect_timeout`.
fn silent_tls_spec(addresses: &[SocketAddr], protocol: UpstreamProtocol) -> UpstreamSpec {
    let alpn: &[u8] = if protocol.is_h2() { b"h2" } else { b"http/1.1" };
    let mut spec = upstream("silent", addresses[0], protocol);
    spec.endpoints = addresses.iter().map(SocketAddr::to_string).collect();
    spec.connect_timeout = std::time::Duration::from_millis(300);
    // Trusts nothing: the handshake never gets that far.
    spec.tls =
        Some(UpstreamTls::new(Vec::new(), None, &[alpn], "localhost".try_into().unwrap()).unwrap());
    spec
}

/// With every address of an upstream down, a request gets one connection attempt, not one
/// per address (each a connect timeout): the first request finds both addresses working
/// as far as anyone knows and tries both; once both are ejected, the next request tries
/// one and fails with its error.
#[tokio::test]
async fn with_every_address_down_a_request_tries_only_one() {
    use std::sync::atomic::Ordering;
    let (a, a_connects) = silent_peer().await;
    let (b, b_connects) = silent_peer().await;
    let mut spec = silent_tls_spec(&[a, b], UpstreamProtocol::Http1Tls);
    // Short, so the second request comes well within the first ejections (1 s).
    spec.connect_timeout = std::time::Duration::from_millis(100);
    let (_gateway, addr) = serve_one_route("/", spec).await;
    let connects = || a_connects.load(Ordering::SeqCst) + b_connects.load(Ordering::SeqCst);

    assert_eq!(
        get(addr, "/page").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(connects(), 2, "the first request tries each address once");
    assert_eq!(
        get(addr, "/page").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(connects(), 3, "with both ejected, one attempt");
}

/// An `http1-tls` endpoint that accepts TCP and never answers the ClientHello is given up on
/// after `connect_timeout`, as h2 upstreams are: the client gets 503 instead of a wait.
#[tokio::test]
async fn an_http1_tls_upstream_that_never_answers_the_handshake_is_503() {
    let (_gateway, addr, _connects) =
        behind_a_silent_tls_upstream(UpstreamProtocol::Http1Tls).await;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(5), get(addr, "/page"))
        .await
        .expect("an answer within the connect timeout, not a wait");
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// An h2 upstream over TLS that never answers the handshake, and ten requests at once on one
/// worker: the first tries to connect and fails after `connect_timeout`; the nine queued
/// behind it take that failure instead of each trying in turn (one connect, not ten: the
/// tenth would have waited ten timeouts). The address is counted as failed once.
#[tokio::test]
async fn requests_queued_behind_a_failing_h2_connect_fail_with_it() {
    use std::sync::atomic::Ordering;
    let (gateway, addr, connects) = behind_a_silent_tls_upstream(UpstreamProtocol::H2).await;
    let answers = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures_util::future::join_all((0..10).map(|_| get(addr, "/page"))),
    )
    .await
    .expect("answers, not ten connect timeouts in turn and more");
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    assert_eq!(
        connects.load(Ordering::SeqCst),
        1,
        "one connect tried for all ten requests"
    );
    let upstreams = gateway.snapshot().upstreams();
    assert_eq!(
        upstreams[0].addresses[0].ejections, 1,
        "one failure, one strike"
    );
}

/// An h2c upstream that takes eight streams and then drops the connection: one failure,
/// however many streams it ends, ejects the address once (1 s, not the 30 s cap that eight
/// strikes in a row reach).
#[tokio::test]
async fn one_dropped_h2_connection_is_one_strike() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dropping = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                // Our SETTINGS and an ACK of the client's; then read what comes for a while.
                let _ = tcp
                    .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 4, 1, 0, 0, 0, 0])
                    .await;
                let mut sink = [0u8; 16 * 1024];
                let _ = tokio::time::timeout(std::time::Duration::from_millis(400), async {
                    while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
        }
    });
    let (gateway, addr) =
        serve_one_route("/", upstream("dropping", dropping, UpstreamProtocol::H2c)).await;
    let answers = futures_util::future::join_all((0..8).map(|_| get(addr, "/stream"))).await;
    for answer in &answers {
        assert!(answer.status.is_server_error(), "{:?}", answer.status);
    }
    let upstreams = gateway.snapshot().upstreams();
    assert_eq!(
        upstreams[0].addresses[0].ejections, 1,
        "one failure, one strike"
    );
}

/// Questions in flight count against the budget until answered: once an address's budget
/// has refilled by one attempt, ten guesses sent at once get one question to pachd, not ten.
#[tokio::test]
async fn guesses_after_a_refill_reach_pachd_one_attempt_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let who_am_i_calls = Arc::new(AtomicUsize::new(0));
    let pachd = slow_pachd(who_am_i_calls.clone()).await;
    // One attempt a second, five at once.
    let (_gateway, addr) = gated_pachd(pachd, RateLimiter::new(1.0, 5)).await;
    let statuses = concurrent_calls(addr, 5, |i| format!("first-{i}")).await;
    assert_eq!(statuses, vec!["16"; 5]);
    who_am_i_calls.store(0, Ordering::SeqCst);
    // Out of budget; a little over a second refills one attempt.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let statuses = concurrent_calls(addr, 10, |i| format!("then-{i}")).await;
    let asked = who_am_i_calls.load(Ordering::SeqCst);
    // One, or two should the clock refill another attempt while they run.
    assert!((1..=2).contains(&asked), "{asked} questions: {statuses:?}");
    assert_eq!(statuses.iter().filter(|s| *s == "16").count(), asked);
    assert_eq!(statuses.iter().filter(|s| *s == "8").count(), 10 - asked);
}

/// Whatever answers at the pachd upstream is not trusted to keep its WhoAmI reply short:
/// the gate reads at most 64 KiB of it. A reply of 8 MiB (a valid WhoAmIResponse, with an
/// 8 MiB user name) is not taken in: the call gets UNAVAILABLE ("cannot verify"), as when
/// pachd cannot be asked, instead of being let through on what the gate held in memory.
#[tokio::test]
async fn an_oversized_who_am_i_reply_is_not_read_whole() {
    let pachd = h2c_upstream(|request: Request<Incoming>| async move {
        let mut response = Response::new(Full::new(Bytes::new()));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
        headers.insert("grpc-status", "0".parse().unwrap());
        if request.uri().path() == "/auth_v2.API/WhoAmI" {
            // WhoAmIResponse { username: 8 MiB of "a" }: field 1, a length of 2^23 as a
            // four-byte varint.
            let name_len = 8usize << 20;
            let message_len = 1 + 4 + name_len;
            let mut frame = vec![0];
            frame.extend_from_slice(&(message_len as u32).to_be_bytes());
            frame.extend_from_slice(&[0x0a, 0x80, 0x80, 0x80, 0x04]);
            frame.resize(frame.len() + name_len, b'a');
            *response.body_mut() = Full::new(Bytes::from(frame));
        }
        response
    })
    .await;
    let (_gateway, addr) = gated_pachd(pachd, RateLimiter::per_minute(60, 10)).await;
    let statuses = concurrent_calls(addr, 1, |_| "some-token".to_string()).await;
    assert_eq!(statuses, vec!["14"], "an 8 MiB WhoAmI reply was taken in");
}

/// Two `authn-token` values on a cluster with auth on get pachd's own answer: code 2
/// (Unknown), "multiple authentication token keys found in context".
#[tokio::test]
async fn two_tokens_get_pachds_own_refusal() {
    let pachd = slow_pachd(Arc::new(std::sync::atomic::AtomicUsize::new(0))).await;
    let (_gateway, addr) = gated_pachd(pachd, RateLimiter::per_minute(60, 10)).await;
    let mut sender = h2c_sender(addr).await;
    let two = vec![
        ("authn-token", "good-1".to_string()),
        ("authn-token", "good-2".to_string()),
    ];
    let (status, message) = list_repo(&mut sender, two).await;
    assert_eq!(status, "2");
    assert_eq!(
        message.as_deref(),
        Some("multiple authentication token keys found in context")
    );
}

/// Health checks that every address fails (a wrong check, or new pods not passed yet) do
/// not turn failover off: a call first sent to a port that refuses the connection goes on
/// to the address that works, which a failed check alone does not rule out.
#[tokio::test]
async fn with_every_address_failing_its_check_a_refused_call_still_fails_over() {
    let healthy = http1_upstream().await;
    let closed = closed_port().await;
    let mut spec = upstream("pair", healthy, UpstreamProtocol::Http1);
    spec.endpoints = vec![closed.to_string(), healthy.to_string()];
    // A gRPC health check against HTTP/1.1 servers: every address fails it.
    spec.health_check = Some(pachgate_health::CheckSpec {
        kind: pachgate_health::CheckKind::Grpc {
            service: String::new(),
        },
        interval: std::time::Duration::from_secs(60),
        timeout: std::time::Duration::from_secs(1),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    });
    let (_gateway, addr) = serve_one_route("/", spec).await;
    for call in 0..12 {
        assert_eq!(
            get(addr, "/app").await.status,
            StatusCode::OK,
            "call {call}"
        );
    }
}

/// Requests that never left pachgate (their address refused the connection) are sent to
/// the address that works without counting against the retry budget, which bounds the
/// extra load retries put on an upstream: these add none. Thirty calls at once, half of
/// them first sent to a closed port, all succeed (with the budget, at most its few
/// retries at once would have, and the rest got 503).
#[tokio::test]
async fn calls_refused_a_connection_go_elsewhere_outside_the_retry_budget() {
    let healthy = http1_upstream().await;
    let closed = closed_port().await;
    let mut spec = upstream("pair", healthy, UpstreamProtocol::Http1);
    spec.endpoints = vec![closed.to_string(), healthy.to_string()];
    let (gateway, addr) = serve_one_route("/", spec).await;
    let answers = futures_util::future::join_all((0..30).map(|_| get(addr, "/app"))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    // All thirty are picked before the first refusal is seen, and the least-pending choice
    // sends half of them to the closed port: more resends than the budget (a fifth of
    // those pending) allows at once, and none refused for it.
    let counts = &gateway.snapshot().upstreams()[0].counts;
    assert!(counts.retries > 6, "only {} resends", counts.retries);
    assert_eq!(counts.retries_over_budget, 0);
}

/// Guesses spread over one IPv6 /64 (here as addresses a trusted proxy reports) share one
/// failed-authentication budget, and so do their questions in flight: fifty at once reach
/// pachd only as far as the /64's burst goes.
#[tokio::test]
async fn concurrent_guesses_from_one_64_share_its_budget() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let who_am_i_calls = Arc::new(AtomicUsize::new(0));
    let pachd = slow_pachd(who_am_i_calls.clone()).await;
    let policy = ClientPolicy {
        failed_auth: Some(RateLimiter::per_minute(1, 5)),
        trusted_proxies: cidrs(&["127.0.0.1/32"]),
        ..ClientPolicy::default()
    };
    let (_gateway, addr) = gated_pachd_with(pachd, policy).await;
    let statuses = concurrent_calls_with(addr, 50, |i| {
        vec![
            ("authn-token", format!("guess-{i}")),
            ("x-forwarded-for", format!("2001:db8::{i:x}")),
        ]
    })
    .await;
    let rejected = statuses.iter().filter(|s| *s == "16").count();
    let refused = statuses.iter().filter(|s| *s == "8").count();
    assert_eq!((rejected, refused), (5, 45), "{statuses:?}");
    assert_eq!(who_am_i_calls.load(Ordering::SeqCst), 5);
}

/// A `ListRepo` call as if from `client` (an address the trusted proxy reports), with
/// `token` or none: its grpc-status.
async fn list_repo_from(
    sender: &mut hyper::client::conn::http2::SendRequest<TestBody>,
    client: &str,
    token: Option<&str>,
) -> String {
    let mut headers = vec![("x-forwarded-for", client.to_string())];
    if let Some(token) = token {
        headers.push(("authn-token", token.to_string()));
    }
    list_repo(sender, headers).await.0
}

/// Brute-force limits never lock out valid users. A client retrying one rejected token
/// (a revoked one, say) is charged once, not per retry, so it does not drain its address
/// for everyone behind it. A token pachd has vouched for keeps passing an address other
/// clients' guesses drained, also once its cached answer has aged and pachd is asked
/// again; and a call without a token gets pachd's answer (16), not the limiter's.
#[tokio::test]
async fn the_failed_auth_limiter_never_locks_out_a_valid_token() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let who_am_i_calls = Arc::new(AtomicUsize::new(0));
    let pachd = slow_pachd(who_am_i_calls.clone()).await;
    let policy = ClientPolicy {
        failed_auth: Some(RateLimiter::per_minute(1, 2)),
        trusted_proxies: cidrs(&["127.0.0.1/32"]),
        ..ClientPolicy::default()
    };
    let settings = PachydermAuthSettings {
        // Outlasts the three questions below (200 ms each at this pachd) with room to spare
        // on a loaded machine.
        cache_ttl: std::time::Duration::from_millis(3000),
        ..PachydermAuthSettings::default()
    };
    let (_gateway, addr) = gated_pachd_settings(pachd, policy, settings).await;
    let mut sender = h2c_sender(addr).await;

    // One client retrying a rejected token: pachd asked once, one attempt charged.
    for retry in 0..6 {
        let status = list_repo_from(&mut sender, "10.0.0.1", Some("revoked")).await;
        assert_eq!(status, "16", "retry {retry}");
    }
    assert_eq!(who_am_i_calls.swap(0, Ordering::SeqCst), 1);
    // The address still has the second attempt of its burst, for a new guess; then none.
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.1", Some("guess-1")).await,
        "16"
    );
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.1", Some("guess-2")).await,
        "8"
    );

    // A valid user behind an address that guesses drained.
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.2", Some("good")).await,
        "0"
    );
    for guess in ["guess-a", "guess-b"] {
        assert_eq!(
            list_repo_from(&mut sender, "10.0.0.2", Some(guess)).await,
            "16"
        );
    }
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.2", Some("guess-c")).await,
        "8"
    );
    who_am_i_calls.store(0, Ordering::SeqCst);
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.2", Some("good")).await,
        "0"
    );
    assert_eq!(
        who_am_i_calls.load(Ordering::SeqCst),
        0,
        "answered from the cache"
    );
    tokio::time::sleep(std::time::Duration::from_millis(3100)).await;
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.2", Some("good")).await,
        "0",
        "a vouched-for token refused once its cached answer aged"
    );
    assert_eq!(
        who_am_i_calls.load(Ordering::SeqCst),
        1,
        "pachd asked again"
    );
    // No token: no guess, and pachd's own answer.
    assert_eq!(list_repo_from(&mut sender, "10.0.0.2", None).await, "16");
    // A new token from the drained address is still refused unasked.
    assert_eq!(
        list_repo_from(&mut sender, "10.0.0.2", Some("good-new")).await,
        "8"
    );
}

/// An HTTP/1.1 upstream whose one answer is an endless body; the receiver hears when
/// pachgate drops it (the request abandoned).
async fn endless_download_upstream() -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    upstream_telling_its_drop(true).await
}

/// An HTTP/1.1 upstream whose one answer is a head and then a body that sends nothing;
/// the receiver hears when pachgate drops it.
async fn quiet_download_upstream() -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    upstream_telling_its_drop(false).await
}

async fn upstream_telling_its_drop(
    endless: bool,
) -> (SocketAddr, tokio::sync::oneshot::Receiver<()>) {
    /// Tells the test when the upstream's body is dropped.
    struct Dropped(Option<tokio::sync::oneshot::Sender<()>>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            if let Some(tell) = self.0.take() {
                let _ = tell.send(());
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    let (dropped_tx, dropped) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tell = std::sync::Mutex::new(Some(dropped_tx));
        let service = service_fn(move |_: Request<Incoming>| {
            let guard = Dropped(tell.lock().unwrap().take());
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let frames = futures_util::stream::poll_fn(move |_| {
                let _held = &guard;
                if endless {
                    std::task::Poll::Ready(Some(Ok::<_, Infallible>(hyper::body::Frame::data(
                        chunk.clone(),
                    ))))
                } else {
                    std::task::Poll::Pending
                }
            });
            async move { Ok::<_, Infallible>(Response::new(http_body_util::StreamBody::new(frames))) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), service)
            .await;
    });
    (upstream_addr, dropped)
}

/// A gateway under an `idle_timeout` of two seconds whose one route downloads from `upstream`;
/// a client that has asked it for the download.
async fn downloading(upstream: SocketAddr) -> (Arc<Gateway>, TcpStream) {
    use tokio::io::AsyncWriteExt;
    let snapshot = Snapshot::build(
        vec![open_route("download", "/", "download")],
        vec![upstream_spec_http1("download", upstream)],
        None,
        None,
        ClientPolicy::default(),
    )
    .unwrap();
    let limits = pachgate_proxy_core::ServerLimits {
        idle_timeout: Some(std::time::Duration::from_secs(2)),
        ..Default::default()
    };
    let (gateway, addr) = serve_with(snapshot, limits).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"GET /file HTTP/1.1\r\nHost: pachgate.test\r\n\r\n")
        .await
        .unwrap();
    (gateway, client)
}

fn upstream_spec_http1(name: &str, address: SocketAddr) -> pachgate_proxy_core::UpstreamSpec {
    upstream(name, address, UpstreamProtocol::Http1)
}

/// A client that stops taking its response (an HTTP/1.1 download it no longer reads) loses
/// the connection once it has taken nothing for `idle_timeout`, and the upstream request
/// goes with it. hyper stops polling a body it cannot write, so no timer in the body would
/// ever fire, and the request had an upstream busy for as long as the client kept its
/// socket.
#[tokio::test]
async fn a_client_that_stops_reading_loses_the_connection_and_the_upstream_request() {
    let (upstream_addr, dropped) = endless_download_upstream().await;
    let (_gateway, client) = downloading(upstream_addr).await;
    // Never read: the socket buffers fill, and then nothing moves.
    tokio::time::timeout(std::time::Duration::from_secs(20), dropped)
        .await
        .expect("the upstream request was dropped once the client took nothing")
        .unwrap();
    drop(client);
}

/// A client that reads slowly is not one that takes nothing: the kernel reports the socket
/// writable only once a third of its (autotuned, large) send buffer is free, which at some
/// hundred KB/s takes far longer than `idle_timeout`, and the download goes on all the same.
#[tokio::test]
async fn a_slow_reader_keeps_its_download() {
    use tokio::io::AsyncReadExt;
    let (upstream_addr, mut dropped) = endless_download_upstream().await;
    let (_gateway, mut client) = downloading(upstream_addr).await;
    // 64 KiB (loopback's segment size: a receiver opens its window a segment at a time)
    // every 250 ms for 6 s: three times the idle timeout, 1.5 MiB in all.
    let mut chunk = vec![0u8; 64 * 1024];
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(6) {
        client.read_exact(&mut chunk).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(
        dropped.try_recv().is_err(),
        "the upstream request was dropped"
    );
}

/// With `idle_timeout` off a connection is still not kept for a client that never sends a
/// request: it gets as long as an HTTP/1 head would. Once it has been served, it stays.
#[tokio::test]
async fn without_an_idle_timeout_a_silent_connection_still_closes() {
    use tokio::io::AsyncReadExt;
    let limits = pachgate_proxy_core::ServerLimits {
        idle_timeout: None,
        h1_header_read_timeout: std::time::Duration::from_secs(1),
        ..Default::default()
    };
    let snapshot = Snapshot::build(
        vec![open_route("app", "/", "app")],
        vec![upstream(
            "app",
            http1_upstream().await,
            UpstreamProtocol::Http1,
        )],
        None,
        None,
        ClientPolicy::default(),
    )
    .unwrap();
    let (_gateway, addr) = serve_with(snapshot, limits).await;
    let within = std::time::Duration::from_secs(10);

    let mut silent = TcpStream::connect(addr).await.unwrap();
    let read = tokio::time::timeout(within, silent.read(&mut [0u8; 1]))
        .await
        .expect("a silent connection was kept");
    assert!(matches!(read, Ok(0)), "{read:?}");

    // An h2c client that finishes its handshake and asks nothing gets a GOAWAY first, as
    // at the idle timeout: its connection ends cleanly.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (_quiet, connection) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        TokioExecutor::new(),
        TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let ended = tokio::time::timeout(within, connection)
        .await
        .expect("a quiet h2c connection was kept");
    assert!(ended.is_ok(), "{ended:?}");

    // Served over h2c (an HTTP/1.1 keep-alive wait is hyper's head timer's to bound).
    let mut sender = h2c_sender(addr).await;
    for _ in 0..2 {
        let request = Request::get("http://pachgate.test/a")
            .body(empty())
            .unwrap();
        let response = tokio::time::timeout(within, sender.send_request(request))
            .await
            .expect("an answer")
            .expect("the served connection is still open");
        assert_eq!(response.status(), StatusCode::OK);
        // Longer than the wait for a first request: a served connection is not closed.
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    }
}

/// An h2 client that keeps its connection alive (it answers PINGs) but never opens its
/// stream's window: hyper waits for send capacity without polling the response body, so a
/// timer living in the body would never fire. The route's `idle_timeout` still ends the
/// upstream request, and the connection's other streams go on.
#[tokio::test]
async fn an_h2_stream_whose_window_stays_shut_loses_its_upstream_request() {
    let (upstream_addr, dropped) = endless_download_upstream().await;
    let snapshot = Snapshot::build(
        vec![timed_download(1), open_route("app", "/app", "app")],
        vec![
            upstream_spec_http1("download", upstream_addr),
            upstream("app", http1_upstream().await, UpstreamProtocol::Http1),
        ],
        None,
        None,
        ClientPolicy::default(),
    )
    .unwrap();
    let (_gateway, addr) = serve(snapshot).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::Builder::new()
        .initial_window_size(1024)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    // The connection task answers PINGs and SETTINGS; the body below is never read, so no
    // WINDOW_UPDATE is ever sent for it.
    tokio::spawn(connection);
    let request = Request::get("http://pachgate.test/file").body(()).unwrap();
    let asked = std::time::Instant::now();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut unread = response.into_body();
    tokio::time::timeout(std::time::Duration::from_secs(15), dropped)
        .await
        .expect("the upstream request was dropped once nothing moved for idle_timeout")
        .unwrap();
    assert!(
        asked.elapsed() >= std::time::Duration::from_millis(900),
        "dropped before the idle timeout: {:?}",
        asked.elapsed()
    );
    // Opening the window now gets what was queued, then a reset: never a clean end.
    let ended = loop {
        match unread.data().await {
            Some(Ok(chunk)) => {
                unread.flow_control().release_capacity(chunk.len()).unwrap();
            }
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        }
    };
    assert!(ended.is_err(), "the cut download ended cleanly");

    let request = Request::get("http://pachgate.test/app/next")
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let mut body = response.await.unwrap().into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        text.extend_from_slice(&chunk);
    }
    assert_eq!(String::from_utf8_lossy(&text), "upstream saw /app/next");
}

/// An HTTP/2 client that resets its stream while the upstream sends nothing ends the
/// upstream request at once, not at the route's timer (the answer is also on the
/// connection's stall watch, which must not keep it).
#[tokio::test]
async fn an_h2_client_that_resets_a_quiet_stream_ends_its_upstream_request() {
    let (upstream_addr, dropped) = quiet_download_upstream().await;
    let snapshot = Snapshot::build(
        vec![timed_download(600)],
        vec![upstream_spec_http1("download", upstream_addr)],
        None,
        None,
        ClientPolicy::default(),
    )
    .unwrap();
    let (_gateway, addr) = serve(snapshot).await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let request = Request::get("http://pachgate.test/file").body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // Dropping the body resets the stream (RST_STREAM CANCEL).
    drop(response);
    tokio::time::timeout(std::time::Duration::from_secs(10), dropped)
        .await
        .expect("the upstream request was dropped when the client reset its stream")
        .unwrap();
}

/// The route `/file` to the upstream "download", under an `idle_timeout` of `idle_secs`.
fn timed_download(idle_secs: u64) -> pachgate_proxy_core::RouteSpec {
    let mut download = open_route("download", "/file", "download");
    download.timeouts = pachgate_proxy_core::RouteTimeouts {
        total: None,
        idle: Some(std::time::Duration::from_secs(idle_secs)),
    };
    download
}
