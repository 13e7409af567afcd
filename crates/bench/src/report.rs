//! The benchmark report: a human table or JSON.

use std::collections::BTreeMap;
use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Latency {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Latency {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub workload: String,
    pub target: String,
    pub connections: usize,
    pub streams: usize,
    /// The open-loop rate asked for, if any.
    pub rate: Option<f64>,
    pub elapsed_s: f64,
    /// Operations that succeeded (for gRPC: `grpc-status: 0` arrived).
    pub ok: u64,
    /// Failed operations by kind.
    pub errors: BTreeMap<String, u64>,
    pub ops_per_s: f64,
    /// What `units_per_s` counts (requests, messages, connections…).
    pub units: &'static str,
    pub units_per_s: f64,
    pub latency_us: Latency,
    /// With `--metrics`: the requests each upstream address took during the run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spread: Option<Vec<crate::spread::AddressShare>>,
}

fn millis(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

impl Report {
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_us;
        let _ = writeln!(out, "workload     {}", self.workload);
        let _ = writeln!(out, "target       {}", self.target);
        let _ = writeln!(
            out,
            "load         {} connections × {} streams{}",
            self.connections,
            self.streams,
            self.rate
                .map(|r| format!(", open loop at {r} ops/s"))
                .unwrap_or_else(|| ", closed loop".into())
        );
        let _ = writeln!(out, "elapsed      {:.2} s", self.elapsed_s);
        let _ = writeln!(out, "ok           {} ({:.1}/s)", self.ok, self.ops_per_s);
        if self.units != "operations" {
            let _ = writeln!(out, "{:<12} {:.1}/s", self.units, self.units_per_s);
        }
        let _ = writeln!(
            out,
            "latency      p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            millis(l.p50),
            millis(l.p90),
            millis(l.p99),
            millis(l.p999),
            millis(l.max)
        );
        if let Some(spread) = &self.spread {
            if spread.is_empty() {
                let _ = writeln!(out, "spread       no upstream requests counted");
            }
            for share in spread {
                let _ = writeln!(
                    out,
                    "spread       {} {}  {} requests ({:.1} %)",
                    share.upstream,
                    share.address,
                    share.requests,
                    share.share * 100.0
                );
            }
        }
        if self.errors.is_empty() {
            let _ = writeln!(out, "errors       none");
        } else {
            for (kind, count) in &self.errors {
                let _ = writeln!(out, "errors       {count} × {kind}");
            }
        }
        out
    }
}
