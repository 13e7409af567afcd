//! What an operator sees of an upstream's addresses: with two stand-in pachd's behind one
//! upstream and one of them stopped (a pod gone), gRPC calls still all succeed, and both
//! `/metrics` (parsed by prometheus-client's OpenMetrics parser) and the status page show the
//! stopped address ejected with its ejections counted and the live one taking the requests.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn sample(samples: &Value, key: &str) -> f64 {
    samples
        .get(key)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no sample {key} in {samples:#}"))
}

/// One row of the status page's address table.
#[derive(Debug)]
struct AddressRow {
    upstream: String,
    address: String,
    state: String,
    pending: u64,
    requests: u64,
    ejections: u64,
}

fn address_rows(page: &str) -> Vec<AddressRow> {
    page.split("<tr class=\"address\">")
        .skip(1)
        .map(|row| {
            let row = &row[..row.find("</tr>").expect("a closed row")];
            let cells: Vec<&str> = row
                .split("<td>")
                .skip(1)
                .map(|cell| cell.trim_end_matches("</td>"))
                .collect();
            assert_eq!(cells.len(), 6, "{row}");
            AddressRow {
                upstream: cells[0].to_string(),
                address: cells[1].to_string(),
                state: cells[2].to_string(),
                pending: cells[3].parse().unwrap(),
                requests: cells[4].parse().unwrap(),
                ejections: cells[5].parse().unwrap(),
            }
        })
        .collect()
}

#[test]
fn a_stopped_address_shows_ejected_and_the_live_one_takes_the_calls() {
    let live = standins();
    let mut stopped = standins();
    let live_address = live.address("standin-pachd").to_string();
    let stopped_address = stopped.address("standin-pachd").to_string();
    stopped.kill();

    let proxy = TestConfig::new()
        .section(&format!(
            "[upstreams.pachd]\nendpoints = [\"{live_address}\", \"{stopped_address}\"]\n\
             protocol = \"h2c\"\n"
        ))
        .route("grpc", "grpc = true", "pachd")
        .listen("admin = \"127.0.0.1:0\"")
        .start();
    let admin = proxy.running.address("admin");

    // Long enough for the stopped address to be picked, ejected, picked again after its
    // first ejection (1 s) and ejected for longer (2 s, then 4 s): it is still ejected when
    // the page is read right after the loop.
    let calls = start_call_loop(&proxy.target(), &proxy.ca(), 4, &[]);
    let summary = finish_call_loop(calls, "calls with one of two addresses stopped");
    let ok = summary["ok"].as_u64().unwrap();
    assert!(ok > 10, "{summary}");
    assert_eq!(
        summary["failed"], 0,
        "a connect failure is retried: {summary}"
    );

    // The status page first (it is quick), while the ejection surely lasts.
    let page = Command::new("curl")
        .args(["-sf", &format!("http://{admin}/")])
        .output()
        .unwrap();
    assert!(page.status.success(), "{page:?}");
    let rows = address_rows(&String::from_utf8_lossy(&page.stdout));
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let row = |address: &str| {
        rows.iter()
            .find(|r| r.address == address)
            .unwrap_or_else(|| panic!("no row for {address}: {rows:#?}"))
    };
    let (dead, alive) = (row(&stopped_address), row(&live_address));
    assert!(rows.iter().all(|r| r.upstream == "pachd"), "{rows:#?}");
    assert_eq!(dead.state, "ejected", "{rows:#?}");
    assert!(dead.ejections > 0, "{rows:#?}");
    assert_eq!(alive.state, "healthy", "{rows:#?}");
    assert_eq!(alive.ejections, 0, "{rows:#?}");
    assert!(
        alive.requests >= ok,
        "every call answered came from it: {rows:#?}"
    );
    assert_eq!(alive.pending + dead.pending, 0, "{rows:#?}");

    // /metrics, through a real OpenMetrics parser.
    let samples = scrape_metrics(admin);
    let at = |name: &str, address: &str| {
        sample(
            &samples,
            &format!("{name}{{address={address},upstream=pachd}}"),
        )
    };
    let state = |address: &str, state: &str| {
        sample(
            &samples,
            &format!(
                "pachgate_upstream_address_state{{address={address},state={state},upstream=pachd}}"
            ),
        )
    };
    assert_eq!(
        at("pachgate_upstream_address_healthy", &stopped_address),
        0.0
    );
    assert_eq!(state(&stopped_address, "ejected"), 1.0);
    assert_eq!(state(&stopped_address, "healthy"), 0.0);
    assert!(
        at(
            "pachgate_upstream_address_ejections_total",
            &stopped_address
        ) >= 1.0
    );
    assert!(at("pachgate_upstream_address_requests_total", &stopped_address) >= 1.0);

    assert_eq!(at("pachgate_upstream_address_healthy", &live_address), 1.0);
    assert_eq!(state(&live_address, "healthy"), 1.0);
    for other in ["unhealthy", "ejected", "draining"] {
        assert_eq!(state(&live_address, other), 0.0, "{other}");
    }
    assert_eq!(
        at("pachgate_upstream_address_ejections_total", &live_address),
        0.0
    );
    assert!(at("pachgate_upstream_address_requests_total", &live_address) >= ok as f64);
    assert_eq!(at("pachgate_upstream_address_pending", &live_address), 0.0);

    // Every call to the stopped address was sent again to the live one, within the budget.
    let upstream = |name: &str| sample(&samples, &format!("{name}{{upstream=pachd}}"));
    assert!(
        upstream("pachgate_upstream_retries_total") >= 1.0,
        "{samples:#}"
    );
    assert_eq!(upstream("pachgate_upstream_retries_over_budget_total"), 0.0);
    assert_eq!(upstream("pachgate_upstream_overloaded_total"), 0.0);
    assert_eq!(upstream("pachgate_upstream_pending_requests"), 0.0);
}
