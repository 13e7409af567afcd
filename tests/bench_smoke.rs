//! A short smoke of `pachgate bench` against the stand-ins behind pachgate: every workload
//! runs, reports successes in JSON, and a run whose calls fail is reported as failed.
//! Correctness only; speed is for benches/, never for tests.

mod common;

use std::process::Command;

use common::*;

fn bench(args: &[&str]) -> (bool, serde_json::Value, String) {
    let output = Command::new(BIN)
        .arg("bench")
        .args(args)
        .args(["--json", "--quiet", "--threads", "2"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    // `connections --mode hold` prints a "holding" line before the JSON.
    let json_start = stdout.find('{').unwrap_or_else(|| {
        panic!(
            "no JSON report; stderr:\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    let report = serde_json::from_str(&stdout[json_start..]).unwrap();
    (
        output.status.success(),
        report,
        stdout[..json_start].to_string(),
    )
}

#[test]
fn every_workload_runs_against_the_demo_backends() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let ca = proxy.ca();
    let ca = ca.to_str().unwrap();
    let https = format!("https://{}", proxy.target());
    let wss = format!("wss://{}/ws", proxy.target());
    let page = format!("{https}/");
    let runs: Vec<Vec<&str>> = vec![
        vec![
            "grpc",
            "--target",
            &https,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--connections",
            "2",
            "--streams",
            "4",
        ],
        vec![
            "grpc",
            "--target",
            &https,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--mode",
            "server-stream",
            "--messages",
            "50",
            "--connections",
            "1",
            "--streams",
            "2",
        ],
        vec![
            "grpc",
            "--target",
            &https,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--rate",
            "200",
            "--connections",
            "1",
        ],
        vec![
            "ws",
            "--target",
            &wss,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--connections",
            "2",
        ],
        vec![
            "http",
            "--target",
            &page,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--protocol",
            "h1",
            "--connections",
            "2",
        ],
        vec![
            "http",
            "--target",
            &page,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--protocol",
            "h2",
            "--connections",
            "1",
            "--size",
            "1024",
        ],
        vec![
            "connections",
            "--target",
            &page,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--mode",
            "handshakes",
            "--connections",
            "2",
        ],
        vec![
            "connections",
            "--target",
            &page,
            "--ca",
            ca,
            "--duration",
            "1s",
            "--mode",
            "hold",
            "--connections",
            "50",
        ],
    ];
    for args in runs {
        let (success, report, preamble) = bench(&args);
        assert!(success, "{args:?}: {report}");
        assert!(report["ok"].as_u64().unwrap() > 0, "{args:?}: {report}");
        assert!(
            report["errors"].as_object().unwrap().is_empty(),
            "{args:?}: {report}"
        );
        assert!(
            report["latency_us"]["p99"].as_u64().unwrap() > 0,
            "{report}"
        );
        if args[0] == "grpc" && args.contains(&"server-stream") {
            // 50 messages per call, counted from the frames.
            let calls = report["ok"].as_f64().unwrap();
            let messages =
                report["units_per_s"].as_f64().unwrap() * report["elapsed_s"].as_f64().unwrap();
            assert!((messages / calls - 50.0).abs() < 0.5, "{report}");
        }
        if args.contains(&"hold") {
            assert!(preamble.contains("holding 50 connections"), "{preamble}");
        }
        if args.contains(&"--rate") {
            let ok = report["ok"].as_f64().unwrap();
            assert!(ok <= 201.0, "open loop at 200/s for 1 s ran {ok} calls");
        }
    }
}

#[test]
fn a_call_counts_only_with_grpc_status_zero() {
    let standins = standins();
    let proxy = pachgate(&standin_routes(&standins, ""), "");
    let ca = proxy.ca();
    let https = format!("https://{}", proxy.target());
    // The stand-in answers UNIMPLEMENTED (HTTP 200, grpc-status 12) for an unknown method.
    let (success, report, _) = bench(&[
        "grpc",
        "--target",
        &https,
        "--ca",
        ca.to_str().unwrap(),
        "--duration",
        "1s",
        "--connections",
        "1",
        "--method",
        "/pachgate.standin.Echo/Missing",
    ]);
    assert!(!success, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(0), "{report}");
    assert!(
        report["errors"]["grpc-status 12"].as_u64().unwrap() > 0,
        "{report}"
    );
}

#[test]
fn metadata_reaches_a_gated_pachd_route() {
    let standins = standins();
    let routes = standin_routes(&standins, "").replace(
        "upstream = \"pachd\"\n",
        "upstream = \"pachd\"\nauth = \"pachyderm\"\n",
    ) + "\n[auth.pachyderm]\nupstream = \"pachd\"\n";
    let proxy = pachgate(&routes, "");
    let ca = proxy.ca();
    let https = format!("https://{}", proxy.target());
    let args = |metadata: &'static [&'static str]| {
        let mut args = vec![
            "grpc",
            "--target",
            &https,
            "--ca",
            ca.to_str().unwrap(),
            "--requests",
            "200",
            "--connections",
            "1",
        ];
        args.extend_from_slice(metadata);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = |metadata| {
        let args = args(metadata);
        bench(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let (success, report, _) = run(&["--metadata", "authn-token=demo-token"]);
    assert!(success, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(200), "{report}");
    // Without the token every call is refused by the gate (UNAUTHENTICATED).
    let (success, report, _) = run(&[]);
    assert!(!success);
    assert_eq!(report["ok"].as_u64(), Some(0), "{report}");
    assert!(
        report["errors"]["grpc-status 16"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// `--metrics`: with two stand-in pachd's behind one upstream, the report shows how the calls
/// spread over the two addresses, read from pachgate's per-address counters: both took a
/// share, and the shares add up to the calls made.
#[test]
fn the_report_shows_the_spread_over_an_upstreams_addresses() {
    let first = standins();
    let second = standins();
    let addresses = [
        first.address("standin-pachd").to_string(),
        second.address("standin-pachd").to_string(),
    ];
    let proxy = TestConfig::new()
        .section(&format!(
            "[upstreams.pachd]\nendpoints = [\"{}\", \"{}\"]\nprotocol = \"h2c\"\n",
            addresses[0], addresses[1]
        ))
        .route("grpc", "grpc = true", "pachd")
        .listen("admin = \"127.0.0.1:0\"")
        .start();
    let metrics = format!("http://{}/metrics", proxy.running.address("admin"));
    let ca = proxy.ca();
    let https = format!("https://{}", proxy.target());
    let (success, report, _) = bench(&[
        "grpc",
        "--target",
        &https,
        "--ca",
        ca.to_str().unwrap(),
        "--requests",
        "400",
        "--connections",
        "2",
        "--streams",
        "4",
        "--metrics",
        &metrics,
    ]);
    assert!(success, "{report}");
    assert_eq!(report["ok"].as_u64(), Some(400), "{report}");
    let spread = report["spread"]
        .as_array()
        .expect("a spread with --metrics");
    assert_eq!(spread.len(), 2, "{report}");
    let mut requests = 0;
    let mut shares = 0.0;
    for address in &addresses {
        let share = spread
            .iter()
            .find(|s| s["address"] == address.as_str())
            .unwrap_or_else(|| panic!("no share for {address}: {report}"));
        assert_eq!(share["upstream"], "pachd");
        let took = share["requests"].as_u64().unwrap();
        assert!(took > 0, "{address} took no calls: {report}");
        requests += took;
        shares += share["share"].as_f64().unwrap();
    }
    assert_eq!(requests, 400, "{report}");
    assert!((shares - 1.0).abs() < 1e-9, "{report}");

    // A second run counts only its own calls, and the table names both addresses.
    let output = Command::new(BIN)
        .args(["bench", "grpc", "--target", &https, "--ca"])
        .arg(&ca)
        .args(["--requests", "100", "--connections", "1", "--quiet"])
        .args(["--threads", "1", "--metrics", &metrics])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{table}");
    let spread_lines: Vec<&str> = table.lines().filter(|l| l.starts_with("spread")).collect();
    assert_eq!(spread_lines.len(), 2, "{table}");
    let mut counted = 0;
    for address in &addresses {
        let line = spread_lines
            .iter()
            .find(|l| l.contains(&format!("pachd {address} ")))
            .unwrap_or_else(|| panic!("no line for {address}: {table}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "requests").unwrap();
        counted += words[at - 1].parse::<u64>().unwrap();
    }
    assert_eq!(counted, 100, "{table}");
}
