//! Upstreams as Kubernetes serves them, over loopback: 127.0.0.2, 127.0.0.3, … play pod IPs
//! (each a stand-in pachd on the same port, in its own runtime so it can be killed whole), a
//! DNS server on loopback plays the headless Service (its answers change during a test), and
//! pachgate's endpoint is the Service name. Calls are made by `pachgate bench grpc` (its own
//! h2 client); which pod answered is counted by each pod.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pachgate_standins::dns::DnsServer;
use pachgate_standins::{Health, PachdOptions};

const NAME: &str = "pachd.pods.test";
const REFRESH_MS: u64 = 200;

/// One pod: a stand-in pachd on `ip:port`, in a runtime of its own (dropping it kills the
/// pod: listener and connections at once).
struct Pod {
    ip: IpAddr,
    health: Health,
    calls: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pod {
    fn start(ip: &str, port: u16) -> Pod {
        let ip: IpAddr = ip.parse().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let options = PachdOptions::default();
        let health = options.health.clone();
        let calls = options.unary_calls.clone();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(SocketAddr::new(ip, port)))
            .unwrap();
        runtime.spawn(pachgate_standins::serve_pachd(listener, options));
        Pod {
            ip,
            health,
            calls,
            runtime: Some(runtime),
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct Cluster {
    dns: DnsServer,
    _dns_runtime: tokio::runtime::Runtime,
    port: u16,
    proxy: Proxy,
}

impl Cluster {
    /// pachgate before the name, which first lists `ips`; pods check gRPC health every
    /// 200 ms (unhealthy after 2 failures) and the name is looked up every 200 ms.
    fn start(ips: &[IpAddr]) -> Cluster {
        let dns_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let dns = dns_runtime
            .block_on(DnsServer::start("127.0.0.1:0"))
            .unwrap();
        dns.set(NAME, ips.to_vec());
        let port = free_port();
        let proxy = TestConfig::new()
            .section(&format!(
                "[dns]\nservers = [\"{}\"]",
                dns.local_addr()
            ))
            .upstream_with(
                "pachd",
                format!("{NAME}:{port}"),
                "h2c",
                &format!(
                    "dns_refresh = \"{REFRESH_MS}ms\"\nhealth_check = {{ interval = \"200ms\", timeout = \"500ms\", unhealthy_threshold = 2 }}"
                ),
            )
            .route("grpc", "grpc = true", "pachd")
            .start();
        Cluster {
            dns,
            _dns_runtime: dns_runtime,
            port,
            proxy,
        }
    }

    fn list(&self, ips: &[IpAddr]) {
        self.dns.set(NAME, ips.to_vec());
    }

    /// `calls` unary calls through pachgate; the bench's JSON report.
    fn calls(&self, calls: u32) -> serde_json::Value {
        let output = self
            .bench(&["--requests", &calls.to_string()])
            .wait_with_output()
            .unwrap();
        parse_report(&output.stdout)
    }

    /// A bench run in the background (for `seconds`).
    fn bench_for(&self, seconds: u32) -> Child {
        self.bench(&["--duration", &format!("{seconds}s")])
    }

    fn bench(&self, run: &[&str]) -> Child {
        let target = format!("https://{}", self.proxy.target());
        Command::new(BIN)
            .args(["bench", "grpc", "--target", &target, "--ca"])
            .arg(self.proxy.ca())
            .args(["--connections", "2", "--streams", "4", "--threads", "1"])
            .args(run)
            .args(["--json", "--quiet"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn parse_report(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let start = text
        .find('{')
        .unwrap_or_else(|| panic!("no JSON report: {text}"));
    serde_json::from_str(&text[start..]).unwrap()
}

fn ok(report: &serde_json::Value) -> u64 {
    report["ok"].as_u64().unwrap_or(0)
}

fn failed(report: &serde_json::Value) -> u64 {
    report["errors"]
        .as_object()
        .map(|errors| errors.values().filter_map(|v| v.as_u64()).sum())
        .unwrap_or(0)
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// Waits until `condition` holds (checked every 50 ms), at most `within`.
fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Both listed pods share the calls; a pod added to the name gets calls within two refresh
/// intervals (plus its first health check); a pod that is listed but not ready gets none.
#[test]
fn new_pods_get_calls_and_pods_not_ready_get_none() {
    let port_holder = Cluster::start(&[ip("127.0.0.2")]);
    let port = port_holder.port;
    let a = Pod::start("127.0.0.2", port);
    let report = port_holder.calls(200);
    assert_eq!(
        (ok(&report), failed(&report)),
        (200, 0),
        "{report}\n{}",
        port_holder.proxy.running.stderr_so_far()
    );
    assert_eq!(a.calls(), 200);

    let b = Pod::start("127.0.0.3", port);
    let not_ready = Pod::start("127.0.0.4", port);
    not_ready.health.set_serving(false);
    port_holder.list(&[a.ip, b.ip, not_ready.ip]);
    // Two refresh intervals and a health check's round trip.
    std::thread::sleep(Duration::from_millis(2 * REFRESH_MS + 300));
    let before = (a.calls(), b.calls());
    let report = port_holder.calls(400);
    assert_eq!((ok(&report), failed(&report)), (400, 0), "{report}");
    let (a_got, b_got) = (a.calls() - before.0, b.calls() - before.1);
    assert_eq!(a_got + b_got, 400);
    assert!(b_got >= 100, "the new pod got {b_got} of 400 calls");
    assert!(a_got >= 100, "the old pod got {a_got} of 400 calls");
    assert_eq!(not_ready.calls(), 0, "a pod that is not ready got calls");

    // Ready now: it takes calls too.
    not_ready.health.set_serving(true);
    eventually(
        Duration::from_secs(5),
        "the pod that became ready gets calls",
        || {
            let report = port_holder.calls(60);
            assert_eq!(failed(&report), 0, "{report}");
            not_ready.calls() > 0
        },
    );
}

/// A rolling restart as Kubernetes does it under a steady call loop: a new pod is listed,
/// the old one fails readiness, is killed and leaves the answer; then the same for the
/// second. No call fails, and the old pods get no new calls once they have left.
#[test]
fn a_rolling_restart_loses_no_call() {
    let cluster = Cluster::start(&[ip("127.0.0.2"), ip("127.0.0.3")]);
    let port = cluster.port;
    let mut old_a = Pod::start("127.0.0.2", port);
    let mut old_b = Pod::start("127.0.0.3", port);
    let report = cluster.calls(100);
    assert_eq!(failed(&report), 0, "{report}");

    let running = cluster.bench_for(6);
    std::thread::sleep(Duration::from_millis(500));
    let new_a = Pod::start("127.0.0.4", port);
    cluster.list(&[old_a.ip, old_b.ip, new_a.ip]);
    std::thread::sleep(Duration::from_millis(800));
    old_a.health.set_serving(false);
    std::thread::sleep(Duration::from_millis(800));
    old_a.kill();
    cluster.list(&[old_b.ip, new_a.ip]);
    let new_b = Pod::start("127.0.0.5", port);
    cluster.list(&[old_b.ip, new_a.ip, new_b.ip]);
    std::thread::sleep(Duration::from_millis(800));
    old_b.health.set_serving(false);
    std::thread::sleep(Duration::from_millis(800));
    old_b.kill();
    cluster.list(&[new_a.ip, new_b.ip]);
    let output = running.wait_with_output().unwrap();
    let report = parse_report(&output.stdout);
    assert_eq!(
        failed(&report),
        0,
        "calls failed across the restart: {report}"
    );
    assert!(ok(&report) > 500, "{report}");
    assert!(
        new_a.calls() > 0 && new_b.calls() > 0,
        "the new pods got no calls"
    );
    let after = cluster.calls(200);
    assert_eq!((ok(&after), failed(&after)), (200, 0), "{after}");
}

/// A pod killed outright (no readiness failure first) costs at most the calls in flight on
/// it: connection failures are retried on the other pod, and the dead one is ejected.
#[test]
fn a_killed_pod_costs_at_most_its_calls_in_flight() {
    let cluster = Cluster::start(&[ip("127.0.0.2"), ip("127.0.0.3")]);
    let port = cluster.port;
    let mut doomed = Pod::start("127.0.0.2", port);
    let survivor = Pod::start("127.0.0.3", port);
    let running = cluster.bench_for(3);
    std::thread::sleep(Duration::from_millis(1000));
    doomed.kill();
    let output = running.wait_with_output().unwrap();
    let report = parse_report(&output.stdout);
    // 2 connections × 4 streams: at most 8 calls were in flight anywhere.
    assert!(failed(&report) <= 8, "{report}");
    assert!(survivor.calls() > 0);
    let after = cluster.calls(200);
    assert_eq!((ok(&after), failed(&after)), (200, 0), "{after}");
}

/// A pod that accepts connections and never answers (a blackhole) costs no call: the
/// connection that never sees the pod's SETTINGS refuses its streams, which go to the other
/// pod, and the health check marks the pod unhealthy.
#[test]
fn a_blackholed_pod_costs_no_call() {
    let cluster = Cluster::start(&[ip("127.0.0.2"), ip("127.0.0.3")]);
    let port = cluster.port;
    let blackhole = std::net::TcpListener::bind(("127.0.0.2", port)).unwrap();
    let survivor = Pod::start("127.0.0.3", port);
    let report = cluster.calls(300);
    assert_eq!((ok(&report), failed(&report)), (300, 0), "{report}");
    assert_eq!(survivor.calls(), 300);
    drop(blackhole);
}

/// A pod that leaves the answer drains: no new calls go to it, while it keeps running.
#[test]
fn a_removed_address_gets_no_new_calls() {
    let cluster = Cluster::start(&[ip("127.0.0.2"), ip("127.0.0.3")]);
    let port = cluster.port;
    let leaving = Pod::start("127.0.0.2", port);
    let staying = Pod::start("127.0.0.3", port);
    std::thread::sleep(Duration::from_millis(600));
    let report = cluster.calls(200);
    assert_eq!(failed(&report), 0, "{report}");
    assert!(leaving.calls() > 0);
    cluster.list(&[staying.ip]);
    std::thread::sleep(Duration::from_millis(2 * REFRESH_MS + 200));
    let before = leaving.calls();
    let report = cluster.calls(200);
    assert_eq!((ok(&report), failed(&report)), (200, 0), "{report}");
    assert_eq!(leaving.calls(), before, "a removed address got new calls");
}
