//! How a run's calls spread over the addresses (pods) behind pachgate's upstreams: pachgate's
//! `pachgate_upstream_address_requests_total` read from its admin `/metrics` before and after
//! the run, and the difference per address.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REQUESTS: &str = "pachgate_upstream_address_requests_total";

/// The most of a `/metrics` answer read (pachgate's is a few tens of KiB).
const MAX_METRICS_BYTES: usize = 16 * 1024 * 1024;

/// One address's part of the run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AddressShare {
    pub upstream: String,
    pub address: String,
    /// Requests pachgate sent there during the run (attempts, retries included).
    pub requests: u64,
    /// `requests` as a fraction of all its upstream's requests during the run.
    pub share: f64,
}

/// Requests per (upstream, address) so far.
pub type Counts = BTreeMap<(String, String), u64>;

/// Reads the per-address request counters from a pachgate admin `/metrics` URL
/// (`http://host:port/metrics`).
pub async fn scrape(url: &str) -> Result<Counts, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--metrics {url}: only http:// URLs (pachgate's admin listener)"))?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/metrics"),
    };
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| format!("--metrics {url}: {e}"))?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("--metrics {url}: {e}"))?;
        let mut answer = Vec::new();
        (&mut tcp)
            .take(MAX_METRICS_BYTES as u64)
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("--metrics {url}: {e}"))?;
        Ok::<_, String>(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| format!("--metrics {url}: no answer within 10 s"))??;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("--metrics {url}: not an HTTP answer"))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("--metrics {url}: {status}"));
    }
    Ok(parse(body))
}

/// The `pachgate_upstream_address_requests_total` samples of an OpenMetrics text.
pub fn parse(text: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(REQUESTS) else {
            continue;
        };
        let Some(rest) = rest.strip_prefix('{') else {
            continue;
        };
        let Some((labels, value)) = split_labels(rest) else {
            continue;
        };
        let Some(value) = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok())
        else {
            continue;
        };
        let (mut upstream, mut address) = (None, None);
        for (name, label) in labels {
            match name.as_str() {
                "upstream" => upstream = Some(label),
                "address" => address = Some(label),
                _ => {}
            }
        }
        if let (Some(upstream), Some(address)) = (upstream, address) {
            counts.insert((upstream, address), value as u64);
        }
    }
    counts
}

/// `name="value",…}` then the rest of the line; values unescaped (`\\`, `\"`, `\n`).
fn split_labels(text: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(',');
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (name, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
    }
}

/// What each address took between two readings, with its share of its upstream's requests;
/// upstreams the run sent nothing to are left out.
pub fn shares(before: &Counts, after: &Counts) -> Vec<AddressShare> {
    let mut per_upstream: BTreeMap<&str, u64> = BTreeMap::new();
    let deltas: Vec<(&str, &str, u64)> = after
        .iter()
        .map(|((upstream, address), now)| {
            let then = before
                .get(&(upstream.clone(), address.clone()))
                .copied()
                .unwrap_or(0);
            // A reload in between starts the counters again: count from 0 then.
            let delta = if *now >= then { now - then } else { *now };
            *per_upstream.entry(upstream).or_default() += delta;
            (upstream.as_str(), address.as_str(), delta)
        })
        .collect();
    deltas
        .into_iter()
        .filter_map(|(upstream, address, requests)| {
            let total = per_upstream[upstream];
            (total > 0).then(|| AddressShare {
                upstream: upstream.to_string(),
                address: address.to_string(),
                requests,
                share: requests as f64 / total as f64,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_and_differenced() {
        let before = parse(
            "# TYPE pachgate_upstream_address_requests counter\n\
             pachgate_upstream_address_requests_total{upstream=\"pachd\",address=\"10.0.0.1:1650\"} 5\n\
             pachgate_upstream_address_requests_total{upstream=\"console\",address=\"10.0.0.9:4000\"} 7\n\
             pachgate_upstream_address_pending{upstream=\"pachd\",address=\"10.0.0.1:1650\"} 3\n\
             # EOF\n",
        );
        assert_eq!(before.len(), 2);
        let after = parse(
            "pachgate_upstream_address_requests_total{upstream=\"pachd\",address=\"10.0.0.1:1650\"} 35\n\
             pachgate_upstream_address_requests_total{upstream=\"pachd\",address=\"10.0.0.2:1650\"} 10\n\
             pachgate_upstream_address_requests_total{upstream=\"console\",address=\"10.0.0.9:4000\"} 7\n",
        );
        let spread = shares(&before, &after);
        assert_eq!(spread.len(), 2, "{spread:?}");
        assert_eq!(spread[0].address, "10.0.0.1:1650");
        assert_eq!(spread[0].requests, 30);
        assert!((spread[0].share - 0.75).abs() < 1e-9);
        assert_eq!(spread[1].requests, 10);
        assert!((spread[1].share - 0.25).abs() < 1e-9);
    }

    #[test]
    fn escaped_label_values_are_read() {
        let counts = parse(
            "pachgate_upstream_address_requests_total{address=\"a\\\"b\",upstream=\"x\\\\y\"} 2\n",
        );
        assert_eq!(counts[&("x\\y".to_string(), "a\"b".to_string())], 2);
    }
}
