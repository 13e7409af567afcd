//! The DNS stand-in answers hickory-resolver (the resolver pachgate's upstreams use),
//! configured with only this server: A and AAAA from the table, NXDOMAIN for unknown names,
//! changes seen once the TTL has passed (with the resolver's cache on, as in production) or
//! at once (cache off), SERVFAIL, silence, and truncation to TCP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RecordType;
use hickory_resolver::TokioResolver;
use pachgate_standins::dns::DnsServer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A resolver that asks only `server`, over UDP (and TCP where `tcp`), with the cache
/// on or off.
fn resolver(server: SocketAddr, cache: bool, tcp: bool) -> TokioResolver {
    let mut name_server = if tcp {
        NameServerConfig::udp_and_tcp(server.ip())
    } else {
        NameServerConfig::udp(server.ip())
    };
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let config = ResolverConfig::from_name_servers(vec![name_server]);
    let mut options = ResolverOpts::default();
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.timeout = Duration::from_millis(500);
    options.attempts = 1;
    if !cache {
        options.cache_size = 0;
    }
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .unwrap()
}

async fn addresses(resolver: &TokioResolver, name: &str) -> Vec<IpAddr> {
    let mut found: Vec<IpAddr> = resolver
        .lookup_ip(name)
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .iter()
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn answers_a_and_aaaa_and_nxdomain() {
    let dns = DnsServer::start("127.0.0.1:0").await.unwrap();
    dns.set(
        "pachd-proxy-backend.pachyderm.svc.cluster.local",
        vec![ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")],
    );
    let resolver = resolver(dns.local_addr(), false, false);
    let name = "pachd-proxy-backend.pachyderm.svc.cluster.local.";
    assert_eq!(
        addresses(&resolver, name).await,
        [ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]
    );
    // By type: A carries only the IPv4 addresses, AAAA only the IPv6 one.
    let a: Vec<String> = resolver
        .lookup(name, RecordType::A)
        .await
        .unwrap()
        .answers()
        .iter()
        .map(|r| r.data.to_string())
        .collect();
    assert_eq!(a, ["127.0.0.2", "127.0.0.3"]);
    let aaaa = resolver.lookup(name, RecordType::AAAA).await.unwrap();
    assert_eq!(aaaa.answers().len(), 1);
    assert!(aaaa.answers().iter().all(|r| r.ttl <= 1));
    // Names match case-insensitively.
    assert_eq!(
        addresses(
            &resolver,
            "PACHD-proxy-backend.pachyderm.svc.cluster.local."
        )
        .await,
        [ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]
    );

    let error = resolver.lookup_ip("nobody.test.").await.unwrap_err();
    assert!(error.is_nx_domain(), "{error}");
    // An IPv4-only name has no AAAA: no records, not an error for lookup_ip.
    dns.set("v4only.test", vec![ip("127.0.0.4")]);
    assert_eq!(
        addresses(&resolver, "v4only.test.").await,
        [ip("127.0.0.4")]
    );
    let error = resolver
        .lookup("v4only.test.", RecordType::AAAA)
        .await
        .unwrap_err();
    assert!(
        error.is_no_records_found() && !error.is_nx_domain(),
        "{error}"
    );
    assert!(dns.queries() >= 8, "{}", dns.queries());
    assert!(dns.queries_for("v4only.test") >= 3);
}

#[tokio::test]
async fn changes_are_seen_at_once_without_a_cache_and_after_the_ttl_with_one() {
    let dns = DnsServer::start("127.0.0.1:0").await.unwrap();
    dns.set("console.test", vec![ip("127.0.0.2")]);
    let uncached = resolver(dns.local_addr(), false, false);
    let cached = resolver(dns.local_addr(), true, false);
    assert_eq!(
        addresses(&uncached, "console.test.").await,
        [ip("127.0.0.2")]
    );
    assert_eq!(addresses(&cached, "console.test.").await, [ip("127.0.0.2")]);

    // A pod added (a scale-up).
    dns.set("console.test", vec![ip("127.0.0.2"), ip("127.0.0.3")]);
    assert_eq!(
        addresses(&uncached, "console.test.").await,
        [ip("127.0.0.2"), ip("127.0.0.3")]
    );
    // The cache holds the old answer until its 1 s TTL has passed, and asks nobody meanwhile.
    let before = dns.queries_for("console.test");
    assert_eq!(addresses(&cached, "console.test.").await, [ip("127.0.0.2")]);
    assert_eq!(dns.queries_for("console.test"), before);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        addresses(&cached, "console.test.").await,
        [ip("127.0.0.2"), ip("127.0.0.3")]
    );

    // The name gone: NXDOMAIN, negatively cached no longer than the TTL either.
    dns.remove("console.test");
    assert!(uncached
        .lookup_ip("console.test.")
        .await
        .unwrap_err()
        .is_nx_domain());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(cached
        .lookup_ip("console.test.")
        .await
        .unwrap_err()
        .is_nx_domain());
    dns.set("console.test", vec![ip("127.0.0.5")]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(addresses(&cached, "console.test.").await, [ip("127.0.0.5")]);
}

#[tokio::test]
async fn servfail_and_silence_are_errors_and_recover() {
    let dns = DnsServer::start("127.0.0.1:0").await.unwrap();
    dns.set("dex.test", vec![ip("127.0.0.2")]);
    let resolver = resolver(dns.local_addr(), false, false);

    dns.servfail("dex.test");
    let error = resolver.lookup_ip("dex.test.").await.unwrap_err();
    assert!(!error.is_nx_domain(), "{error}");

    dns.set("dex.test", vec![ip("127.0.0.2")]);
    dns.set_silent(true);
    let before = dns.queries();
    let started = std::time::Instant::now();
    assert!(resolver.lookup_ip("dex.test.").await.is_err());
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(dns.queries() > before, "the query arrived, unanswered");

    dns.set_silent(false);
    assert_eq!(addresses(&resolver, "dex.test.").await, [ip("127.0.0.2")]);
}

#[tokio::test]
async fn a_long_answer_is_truncated_over_udp_and_fetched_over_tcp() {
    let dns = DnsServer::start("127.0.0.1:0").await.unwrap();
    // 40 A records do not fit in 512 bytes.
    let many: Vec<IpAddr> = (1..=40).map(|i| ip(&format!("127.0.1.{i}"))).collect();
    dns.set("many.test", many.clone());
    // UDP alone gets the truncated answer: no addresses.
    let udp_only = resolver(dns.local_addr(), false, false);
    let lookup = udp_only.lookup_ip("many.test.").await;
    assert!(lookup.map_or(true, |found| found.iter().next().is_none()));
    let resolver = resolver(dns.local_addr(), false, true);
    let found = addresses(&resolver, "many.test.").await;
    let mut expected = many;
    expected.sort();
    assert_eq!(found, expected);
}
