//! Micro benchmarks of the per-request hot path without sockets: route matching over a
//! 50-route table, and header rewriting (hop-by-hop strip + X-Forwarded-*).
//! `cargo bench --bench hot_path`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use pachgate_proxy_core::headers::{set_forwarded, strip_hop_by_hop};
use pachgate_routing::{HeaderSpec, MatchSpec, RequestFacts, RouteTable};

struct Facts {
    host: &'static str,
    path: &'static str,
    grpc: bool,
    headers: HeaderMap,
}

impl RequestFacts for Facts {
    fn host(&self) -> Option<&str> {
        Some(self.host)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn is_grpc(&self) -> bool {
        self.grpc
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
}

/// 50 routes: 24 host-specific path routes, 24 header routes, then gRPC and a catch-all,
/// so a typical gRPC call and a console page both walk most of the table.
fn table() -> RouteTable<usize> {
    let mut specs = Vec::new();
    for i in 0..24 {
        specs.push((
            format!("host-{i}"),
            MatchSpec {
                host: Some(format!("tenant{i}.pach.example.com")),
                path_prefix: Some(format!("/api/v{i}")),
                ..MatchSpec::default()
            },
            i,
        ));
        specs.push((
            format!("header-{i}"),
            MatchSpec {
                header: Some(HeaderSpec {
                    name: "x-pach-tenant".into(),
                    exact: Some(format!("t{i}")),
                    prefix: None,
                }),
                ..MatchSpec::default()
            },
            100 + i,
        ));
    }
    specs.push((
        "grpc".into(),
        MatchSpec {
            grpc: Some(true),
            ..MatchSpec::default()
        },
        200,
    ));
    specs.push((
        "console".into(),
        MatchSpec {
            path_prefix: Some("/".into()),
            ..MatchSpec::default()
        },
        201,
    ));
    RouteTable::compile(specs).unwrap()
}

fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-go/1.64.0"),
        ("grpc-timeout", "29999m"),
        ("authn-token", "0123456789abcdef0123456789abcdef"),
        ("connection", "keep-alive"),
    ] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    headers
}

fn routing(c: &mut Criterion) {
    let table = table();
    assert_eq!(table.routes().len(), 50);
    let grpc = Facts {
        host: "pach.example.com",
        path: "/pfs_v2.API/InspectRepo",
        grpc: true,
        headers: request_headers(),
    };
    let page = Facts {
        host: "pach.example.com",
        path: "/lineage/default",
        grpc: false,
        headers: HeaderMap::new(),
    };
    c.bench_function("route 50-table: gRPC call (49th route)", |b| {
        b.iter(|| black_box(table.pick(black_box(&grpc))).map(|r| r.target))
    });
    c.bench_function("route 50-table: console page (last route)", |b| {
        b.iter(|| black_box(table.pick(black_box(&page))).map(|r| r.target))
    });
}

fn header_rewrite(c: &mut Criterion) {
    let client_ip = HeaderValue::from_static("203.0.113.9");
    let proto = HeaderValue::from_static("https");
    let template = request_headers();
    c.bench_function("headers: strip hop-by-hop + set X-Forwarded-*", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| {
                strip_hop_by_hop(headers);
                set_forwarded(headers, &client_ip, &proto, Some("pach.example.com"), false);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, routing, header_rewrite);
criterion_main!(benches);
