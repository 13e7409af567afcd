//! A reload keeps what did not change: an upstream with the same spec keeps its connections
//! and health states, the Pachyderm gate its token cache, the rate limiters their counts.
//! Each test installs a snapshot built afresh from the same (or a changed) spec, as a
//! config reload does, over scripted upstreams on loopback that count what reaches them.

mod fixture;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fixture::*;
use http::header::CONTENT_TYPE;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use pachgate_proxy_core::upstream::{HealthCheck, HealthCheckKind};
use pachgate_proxy_core::{
    CarriedOver, ClientPolicy, PachydermAuthSettings, PachydermAuthSpec, RateLimiter, RouteAuth,
    Snapshot, UpstreamProtocol, UpstreamSpec,
};
use tokio::net::TcpListener;

/// What reached a scripted upstream.
#[derive(Default)]
struct Seen {
    connections: AtomicUsize,
    who_am_i: AtomicUsize,
    health_checks: AtomicUsize,
}

impl Seen {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
    fn who_am_i(&self) -> usize {
        self.who_am_i.load(Ordering::SeqCst)
    }
    fn health_checks(&self) -> usize {
        self.health_checks.load(Ordering::SeqCst)
    }
}

/// A scripted pachd over h2c counting its connections and WhoAmI calls: tokens that start
/// with `good` are valid, others refused with 16; every other call is answered with 0.
async fn counting_pachd() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counts.connections.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let counts = counts.clone();
                async move { Ok::<_, Infallible>(pachd_answer(&request, &counts)) }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, seen)
}

fn pachd_answer(request: &Request<Incoming>, seen: &Seen) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, "application/grpc".parse().unwrap());
    headers.insert("grpc-status", "0".parse().unwrap());
    if request.uri().path() == "/auth_v2.API/WhoAmI" {
        seen.who_am_i.fetch_add(1, Ordering::SeqCst);
        let token = request.headers()["authn-token"].as_bytes();
        if token.starts_with(b"good") {
            // WhoAmIResponse { username: "robot:test" }
            let mut frame = vec![0, 0, 0, 0, 12, 0x0a, 10];
            frame.extend_from_slice(b"robot:test");
            *response.body_mut() = Full::new(Bytes::from(frame));
        } else {
            headers.insert("grpc-status", "16".parse().unwrap());
            headers.insert("grpc-message", "invalid token".parse().unwrap());
        }
    }
    response
}

/// A `ListRepo` call over a new h2c connection to the gateway, with `token` when given:
/// its grpc-status.
async fn list_repo(gateway: SocketAddr, token: Option<&str>) -> String {
    let mut request = grpc_request("/pfs_v2.API/ListRepo", full(&[0u8, 0, 0, 0, 0][..]));
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authn-token", token.parse().unwrap());
    }
    let answer = send_h2c(gateway, request).await;
    answer.header("grpc-status").unwrap_or_default().to_string()
}

/// Every path to pachd, gated when `settings` are given, under `policy`.
fn pachd_snapshot(
    pachd: &UpstreamSpec,
    settings: Option<PachydermAuthSettings>,
    policy: ClientPolicy,
) -> Snapshot {
    let auth = match settings {
        Some(_) => RouteAuth::Pachyderm,
        None => RouteAuth::None,
    };
    let gate = settings.map(|settings| PachydermAuthSpec {
        upstream: "pachd".into(),
        who_am_i_method: "/auth_v2.API/WhoAmI".into(),
        settings,
    });
    Snapshot::build(
        vec![route("grpc", "/", "pachd", auth, Default::default())],
        vec![pachd.clone()],
        gate,
        None,
        policy,
    )
    .unwrap()
}

/// The failed-authentication budget a config with `[limits]` defaults would build: two
/// rejections, then one a minute.
fn failed_auth_policy() -> ClientPolicy {
    ClientPolicy {
        failed_auth: Some(RateLimiter::per_minute(1, 2)),
        ..ClientPolicy::default()
    }
}

/// The same upstream spec, reloaded: the next call goes over the connection the first one
/// opened. A changed spec (here its connect timeout) makes a new upstream, which connects
/// afresh.
#[tokio::test]
async fn an_unchanged_upstream_keeps_its_connection_through_a_reload() {
    let (pachd, seen) = counting_pachd().await;
    let spec = upstream("pachd", pachd, UpstreamProtocol::H2c);
    let (gateway, addr) = serve(pachd_snapshot(&spec, None, ClientPolicy::default())).await;
    assert_eq!(list_repo(addr, None).await, "0");
    assert_eq!(seen.connections(), 1);

    let carried = gateway.replace_snapshot(pachd_snapshot(&spec, None, ClientPolicy::default()));
    assert_eq!(
        carried,
        CarriedOver {
            upstreams_kept: 1,
            upstreams_new: 0,
            token_cache_kept: false,
        }
    );
    assert_eq!(list_repo(addr, None).await, "0");
    assert_eq!(seen.connections(), 1, "the reload reconnected to pachd");

    let mut changed = spec.clone();
    changed.connect_timeout += Duration::from_secs(1);
    let carried = gateway.replace_snapshot(pachd_snapshot(&changed, None, ClientPolicy::default()));
    assert_eq!((carried.upstreams_kept, carried.upstreams_new), (0, 1));
    assert_eq!(list_repo(addr, None).await, "0");
    assert_eq!(seen.connections(), 2, "a changed upstream kept the old one");
}

/// The same gate and upstream, reloaded: a token pachd vouched for is not asked about
/// again, and an address that spent its failed-authentication budget does not get it back
/// (the reloaded config builds a full limiter; it goes on from the running one's counts).
#[tokio::test]
async fn the_token_cache_and_the_failed_auth_budget_go_on_through_a_reload() {
    let (pachd, seen) = counting_pachd().await;
    let spec = upstream("pachd", pachd, UpstreamProtocol::H2c);
    let gated = || {
        pachd_snapshot(
            &spec,
            Some(PachydermAuthSettings::default()),
            failed_auth_policy(),
        )
    };
    let (gateway, addr) = serve(gated()).await;
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!(list_repo(addr, Some("guess-1")).await, "16");
    assert_eq!(list_repo(addr, Some("guess-2")).await, "16");
    // The budget is spent: refused without asking pachd.
    assert_eq!(list_repo(addr, Some("guess-3")).await, "8");
    assert_eq!(seen.who_am_i(), 3);

    let carried = gateway.replace_snapshot(gated());
    assert!(carried.token_cache_kept, "{carried:?}");
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!(seen.who_am_i(), 3, "the reload forgot a vouched-for token");
    assert_eq!(
        list_repo(addr, Some("guess-4")).await,
        "8",
        "the reload gave the address its budget back"
    );
    assert_eq!(seen.who_am_i(), 3);
    assert_eq!(seen.connections(), 1);
}

/// A gate whose settings changed starts with an empty cache, and asks pachd over the
/// upstream the reload kept (its connection), not over one of its own.
#[tokio::test]
async fn a_changed_gate_starts_afresh_over_the_kept_upstream() {
    let (pachd, seen) = counting_pachd().await;
    let spec = upstream("pachd", pachd, UpstreamProtocol::H2c);
    let settings = PachydermAuthSettings::default();
    let (gateway, addr) = serve(pachd_snapshot(
        &spec,
        Some(settings.clone()),
        ClientPolicy::default(),
    ))
    .await;
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!((seen.who_am_i(), seen.connections()), (1, 1));

    let changed = PachydermAuthSettings {
        cache_ttl: settings.cache_ttl * 2,
        ..settings
    };
    let carried = gateway.replace_snapshot(pachd_snapshot(
        &spec,
        Some(changed),
        ClientPolicy::default(),
    ));
    assert_eq!(
        (carried.upstreams_kept, carried.token_cache_kept),
        (1, false)
    );
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!(seen.who_am_i(), 2, "a changed gate kept the old cache");
    assert_eq!(
        seen.connections(),
        1,
        "the new gate asked over an upstream of its own"
    );
}

/// An unchanged gate over a changed upstream (which might be another pachd) starts with an
/// empty cache.
#[tokio::test]
async fn a_changed_upstream_empties_the_token_cache() {
    let (pachd, seen) = counting_pachd().await;
    let spec = upstream("pachd", pachd, UpstreamProtocol::H2c);
    let gated = |spec: &UpstreamSpec| {
        pachd_snapshot(
            spec,
            Some(PachydermAuthSettings::default()),
            ClientPolicy::default(),
        )
    };
    let (gateway, addr) = serve(gated(&spec)).await;
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!(seen.who_am_i(), 1);

    let mut changed = spec.clone();
    changed.max_pending_requests += 1;
    let carried = gateway.replace_snapshot(gated(&changed));
    assert_eq!(
        (carried.upstreams_new, carried.token_cache_kept),
        (1, false)
    );
    assert_eq!(list_repo(addr, Some("good-1")).await, "0");
    assert_eq!(
        seen.who_am_i(),
        2,
        "answers of the old upstream's pachd were kept"
    );
}

/// An HTTP/1.1 backend whose health path answers 200 to the first check only, 503 after:
/// a fresh upstream would find it unhealthy.
async fn backend_healthy_once() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counts = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counts = counts.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let counts = counts.clone();
                async move {
                    let _ = request.into_body().collect().await;
                    let checks = counts.health_checks.fetch_add(1, Ordering::SeqCst);
                    let status = if checks == 0 { 200 } else { 503 };
                    let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
                    *response.status_mut() = status.try_into().unwrap();
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service),
            );
        }
    });
    (addr, seen)
}

/// The address's state on the gateway's status page.
fn address_state(gateway: &pachgate_proxy_core::Gateway) -> String {
    let upstreams = gateway.snapshot().upstreams();
    upstreams[0].addresses[0].state.to_string()
}

/// An unchanged upstream's health states go on through a reload: no check starts over.
#[tokio::test]
async fn an_unchanged_upstream_keeps_its_health_states() {
    let (backend, seen) = backend_healthy_once().await;
    let mut spec = upstream("console", backend, UpstreamProtocol::Http1);
    spec.health_check = Some(HealthCheck {
        kind: HealthCheckKind::HttpGet {
            path: "/healthz".into(),
        },
        // One check in the test's time.
        interval: Duration::from_secs(3600),
        timeout: Duration::from_secs(2),
        unhealthy_threshold: 1,
        healthy_threshold: 1,
    });
    let snapshot = || {
        Snapshot::build(
            vec![open_route("console", "/", "console")],
            vec![spec.clone()],
            None,
            None,
            ClientPolicy::default(),
        )
        .unwrap()
    };
    let (gateway, _addr) = serve(snapshot()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while address_state(&gateway) != "healthy" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first check never passed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let carried = gateway.replace_snapshot(snapshot());
    assert_eq!(carried.upstreams_kept, 1);
    // Time for a fresh upstream's first check, which this backend fails.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(address_state(&gateway), "healthy");
    assert_eq!(seen.health_checks(), 1, "the reload checked again");
}
