//! Client address policy: CIDR allow-lists and per-address rate limits (all requests, and
//! failed authentications against brute force). Pure: callers pass the address and the time.
//!
//! It owns the answer to "may this client address go on?" and nothing more. It must not
//! authenticate (tokens and pachd are `auth-gate`'s), read configuration files, or render
//! a refusal: proxy-core turns a "no" into a response in the caller's protocol.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One `address/prefix` block, IPv4 or IPv6. An IPv4-mapped IPv6 client (`::ffff:a.b.c.d`)
/// is matched as the IPv4 address it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: prefix must be 0..={max}"))?,
        };
        Ok(Cidr { network, prefix })
    }
}

fn bits(address: IpAddr) -> (u128, u8) {
    match address {
        IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, 32),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => (u128::from(u32::from(v4)) << 96, 32),
            None => (u128::from(v6), 128),
        },
    }
}

impl Cidr {
    pub fn contains(&self, address: IpAddr) -> bool {
        let (network, network_width) = bits(self.network);
        let (candidate, width) = bits(address);
        if network_width != width {
            return false;
        }
        // Both families sit in the top bits (IPv4 shifted up by 96), so one mask fits both.
        let mask = u128::MAX
            .checked_shl(128 - u32::from(self.prefix))
            .unwrap_or(0);
        (network & mask) == (candidate & mask)
    }
}

/// An allow-list; empty means "everyone".
#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    pub fn new(blocks: Vec<Cidr>) -> Self {
        CidrSet(blocks)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As an allow-list: an empty set lets every address through.
    pub fn allows(&self, address: IpAddr) -> bool {
        self.0.is_empty() || self.contains(address)
    }

    /// As a list of trusted peers: whether `address` is in one of the blocks (an empty
    /// set holds none).
    pub fn contains(&self, address: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(address))
    }
}

/// A token bucket per client address: `rate` per second, up to `burst` at once. An IPv6
/// client is counted by its /64 (one host or one LAN holds a whole /64, so counting single
/// addresses would give it 2^64 budgets); an IPv4 client, mapped or not, by its address.
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    /// Shared with the limiter of the config this one replaced, when a reload keeps counts.
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    buckets: Mutex<Buckets>,
    /// Set once any bucket exists, so `check` on the common path (nobody has failed yet)
    /// takes no lock.
    any_tracked: std::sync::atomic::AtomicBool,
}

/// Addresses tracked per generation. Memory stays under two generations whatever the
/// number of addresses seen: when the current one is full it becomes the previous one and
/// the old previous one is forgotten (its buckets start full again if they come back).
/// Only an address that stays away while this many new ones arrive loses its count, and
/// a client that churns through that many addresses has as many fresh budgets anyway.
const GENERATION: usize = 50_000;

/// (tokens, when they were counted)
type Bucket = (f64, Instant);

#[derive(Default)]
struct Buckets {
    current: HashMap<IpAddr, Bucket>,
    previous: HashMap<IpAddr, Bucket>,
}

impl Buckets {
    /// The key's bucket, brought into the current generation when it was in the previous
    /// one: an address that keeps coming (even only to be refused by `check`) stays counted.
    fn find(&mut self, key: IpAddr) -> Option<Bucket> {
        if let Some(bucket) = self.current.get(&key) {
            return Some(*bucket);
        }
        let kept = self.previous.remove(&key)?;
        Some(*self.entry(key, kept))
    }

    /// The key's bucket in the current generation (brought over from the previous one, or
    /// new and `full`), turning generations over first when the current one is full.
    fn entry(&mut self, key: IpAddr, full: Bucket) -> &mut Bucket {
        let mut start = full;
        if !self.current.contains_key(&key) {
            if let Some(kept) = self.previous.remove(&key) {
                start = kept;
            }
            if self.current.len() >= GENERATION {
                self.previous = std::mem::take(&mut self.current);
            }
        }
        self.current.entry(key).or_insert(start)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// The address a client is counted by: IPv4 as itself (an IPv4-mapped IPv6 address is the
/// IPv4 address it carries), IPv6 by its /64. Anything kept per client beside a
/// [`RateLimiter`] must use the same key, or a host could spread over its /64 what the
/// limiter counts as one.
pub fn counted_as(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        v4 => v4,
    }
}

impl RateLimiter {
    pub fn new(rate_per_second: f64, burst: u32) -> Self {
        RateLimiter {
            rate: rate_per_second,
            burst: f64::from(burst.max(1)),
            counts: Arc::default(),
        }
    }

    /// Goes on from `previous`'s counts (a reloaded config's limiter replacing the running
    /// one): a client that spent its budget does not get it back because a config changed,
    /// and one that waited keeps what it has refilled. Buckets refill at this limiter's rate
    /// from now on, and hold no more than its burst.
    pub fn keep_counts_of(&mut self, previous: &RateLimiter) {
        self.counts = previous.counts.clone();
    }

    /// Per minute rather than per second, for slow budgets like failed logins.
    pub fn per_minute(count: u32, burst: u32) -> Self {
        Self::new(f64::from(count) / 60.0, burst)
    }

    fn refill(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        (tokens + now.saturating_duration_since(since).as_secs_f64() * self.rate).min(self.burst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.counts
            .buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one token; `Err(retry_after)` when the address is over its budget.
    pub fn take(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.lock();
        self.counts
            .any_tracked
            .store(true, std::sync::atomic::Ordering::Release);
        let (tokens, since) = buckets.entry(counted_as(address), (self.burst, now));
        let available = self.refill(*tokens, *since, now);
        if available >= 1.0 {
            *tokens = available - 1.0;
            *since = now;
            Ok(())
        } else {
            *tokens = available;
            *since = now;
            let wait = if self.rate > 0.0 {
                (1.0 - available) / self.rate
            } else {
                3600.0
            };
            Err(Duration::from_secs_f64(wait.max(1.0)))
        }
    }

    /// The attempts the address has left now (a fraction while its bucket refills).
    pub fn available(&self, address: IpAddr, now: Instant) -> f64 {
        if !self
            .counts
            .any_tracked
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return self.burst;
        }
        match self.lock().find(counted_as(address)) {
            None => self.burst,
            Some((tokens, since)) => self.refill(tokens, since, now),
        }
    }

    /// Whether the address has budget left, without taking any.
    pub fn check(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        if !self
            .counts
            .any_tracked
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Ok(());
        }
        match self.lock().find(counted_as(address)) {
            None => Ok(()),
            Some((tokens, since)) => {
                let available = self.refill(tokens, since, now);
                if available >= 1.0 {
                    Ok(())
                } else if self.rate > 0.0 {
                    Err(Duration::from_secs_f64(
                        ((1.0 - available) / self.rate).max(1.0),
                    ))
                } else {
                    Err(Duration::from_secs(3600))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limiters_memory_is_bounded_whatever_the_addresses() {
        let limiter = RateLimiter::per_minute(30, 10);
        let now = Instant::now();
        for i in 0..(5 * GENERATION as u32) {
            // Ten failures each: every bucket is drained, none would be dropped as idle.
            let address = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            for _ in 0..10 {
                limiter.take(address, now).unwrap();
            }
        }
        assert!(limiter.lock().len() <= 2 * GENERATION);
        // The newest addresses are still counted.
        let last = IpAddr::from(std::net::Ipv4Addr::from(
            0x0a00_0000 + 5 * GENERATION as u32 - 1,
        ));
        assert!(limiter.take(last, now).is_err());
    }

    #[test]
    fn a_bucket_survives_one_turnover_of_generations() {
        let limiter = RateLimiter::per_minute(30, 1);
        let now = Instant::now();
        let watched: IpAddr = "192.0.2.1".parse().unwrap();
        limiter.take(watched, now).unwrap();
        for i in 0..GENERATION as u32 {
            let _ = limiter.take(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), now);
        }
        assert!(
            limiter.check(watched, now).is_err(),
            "forgotten after one turnover"
        );
        assert!(limiter.take(watched, now).is_err());
    }

    #[test]
    fn an_address_refused_by_check_alone_stays_counted() {
        let limiter = RateLimiter::per_minute(30, 1);
        let now = Instant::now();
        let watched: IpAddr = "192.0.2.1".parse().unwrap();
        limiter.take(watched, now).unwrap();
        for i in 0..(3 * GENERATION as u32) {
            let _ = limiter.take(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), now);
            if i % 1000 == 0 {
                assert!(limiter.check(watched, now).is_err(), "forgotten after {i}");
            }
        }
        assert!(limiter.check(watched, now).is_err());
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64_and_mapped_ipv4_as_ipv4() {
        let limiter = RateLimiter::per_minute(30, 3);
        let now = Instant::now();
        for host in 1..=3u16 {
            let address = format!("2001:db8:1:2::{host:x}").parse().unwrap();
            limiter.take(address, now).unwrap();
        }
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(
            limiter.take(same_64, now).is_err(),
            "a new address in the same /64"
        );
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(limiter.take(other_64, now).is_ok());

        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let neighbour: IpAddr = "::ffff:192.0.2.8".parse().unwrap();
        for _ in 0..3 {
            limiter.take(mapped, now).unwrap();
        }
        assert!(
            limiter.check(v4, now).is_err(),
            "mapped and plain IPv4 are one client"
        );
        assert!(
            limiter.take(neighbour, now).is_ok(),
            "IPv4 neighbours are not one client"
        );
    }

    #[test]
    fn cidr_matching() {
        let cases = [
            ("127.0.0.0/8", "127.0.0.2", true),
            ("127.0.0.0/8", "128.0.0.1", false),
            ("10.1.2.3", "10.1.2.3", true),
            ("10.1.2.3", "10.1.2.4", false),
            ("0.0.0.0/0", "192.0.2.1", true),
            ("0.0.0.0/0", "::1", false),
            ("::1/128", "::1", true),
            ("::1/128", "::2", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("192.0.2.0/24", "::ffff:192.0.2.77", true),
            ("::/0", "::1", true),
        ];
        for (block, address, want) in cases {
            let cidr: Cidr = block.parse().unwrap();
            assert_eq!(
                cidr.contains(address.parse().unwrap()),
                want,
                "{block} ∋ {address}"
            );
        }
        for bad in ["10.0.0.0/33", "::/129", "pachd", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
        // Empty: an allow-list that lets everyone through, a trust list that trusts no one.
        let address: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(CidrSet::default().allows(address));
        assert!(!CidrSet::default().contains(address));
        let set = CidrSet::new(vec!["192.0.2.0/24".parse().unwrap()]);
        assert!(set.allows(address) && set.contains(address));
        let outside: IpAddr = "198.51.100.1".parse().unwrap();
        assert!(!set.allows(outside) && !set.contains(outside));
    }

    #[test]
    fn buckets_are_per_address_and_refill() {
        let limiter = RateLimiter::new(1.0, 3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take(a, start).is_ok());
        }
        let retry = limiter.take(a, start).unwrap_err();
        assert!(retry >= Duration::from_secs(1));
        assert!(limiter.check(a, start).is_err());
        assert!(
            limiter.take(b, start).is_ok(),
            "another address is unaffected"
        );
        assert!(
            limiter.take(a, start + Duration::from_millis(1100)).is_ok(),
            "refilled"
        );
    }

    #[test]
    fn a_replacing_limiter_keeps_the_counts_under_its_own_rate_and_burst() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let start = Instant::now();
        let running = RateLimiter::new(1.0, 3);
        for _ in 0..3 {
            running.take(a, start).unwrap();
        }
        running.take(b, start).unwrap();
        // A reload that raises the burst: `a` has still spent its budget, `b` has two
        // left, and both now refill toward ten at two a second.
        let mut reloaded = RateLimiter::new(2.0, 10);
        reloaded.keep_counts_of(&running);
        assert!(reloaded.check(a, start).is_err(), "the budget came back");
        assert_eq!(reloaded.available(b, start), 2.0);
        assert_eq!(reloaded.available(a, start + Duration::from_secs(2)), 4.0);
        assert_eq!(reloaded.available(b, start + Duration::from_secs(60)), 10.0);
        // A new limiter that keeps nothing starts full.
        assert!(RateLimiter::new(2.0, 10).check(a, start).is_ok());
        // A lowered burst caps what an address holds.
        let mut lowered = RateLimiter::new(1.0, 1);
        lowered.keep_counts_of(&reloaded);
        assert_eq!(lowered.available(b, start), 1.0);
    }
}
