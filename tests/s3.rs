//! S3 through pachgate, signed by boto3 (PyPI, the real AWS signer) and checked by the
//! stand-in S3, which verifies SigV4/SigV2 from the request exactly as it arrived: keys whose
//! paths pachgate would otherwise normalise (`//`, `..`, `.`), encoded characters, and
//! presigned URLs, which must reach the S3 gateway rather than the console.

mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

/// Keys a path-normalising proxy breaks, and keys that only need faithful encoding.
const KEYS: &[&str] = &[
    "plain.txt",
    "a//b",
    "x/../y",
    "a/./b",
    "trailing/..",
    "with space",
    "plus+sign",
    "100%",
    "percent%2Eencoded",
    "caf\u{e9}",
    "\u{65e5}\u{672c}/\u{8a9e}",
];

/// The stand-ins with the S3 one: pachd, console, s3.
fn s3_standins() -> Running {
    let mut command = Command::new(BIN);
    command.args(["standins", "--s3", "127.0.0.1:0"]);
    start(command, 3)
}

/// The 2.x preset as shipped, its upstreams pointed at the stand-ins.
fn pachgate_with_s3_preset(standins: &Running) -> Proxy {
    pachgate_with_preset(standins, |preset| {
        assert!(
            preset.contains("s3-presigned-v4") && preset.contains("forward_path = \"as-sent\"")
        );
        preset
    })
}

/// What the stand-in S3 received so far: `STATUS METHOD TARGET` lines.
fn s3_seen(standins: &Running) -> Vec<String> {
    let url = format!(
        "http://{}/_standin/requests",
        standins.address("standin-s3")
    );
    let output = Command::new("curl").args(["-s", &url]).output().unwrap();
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn s3_client(endpoint: &str, ca: Option<&Proxy>, args: &[&str]) -> Value {
    let ca_path = ca.map(|p| p.ca().to_str().unwrap().to_string());
    let mut all = vec!["--endpoint", endpoint];
    if let Some(ca) = &ca_path {
        all.extend(["--ca", ca.as_str()]);
    }
    all.extend(args);
    let output = python("s3_client.py", &all);
    serde_json::from_slice(&output.stdout).expect("s3_client.py prints JSON")
}

/// PUTs and GETs every key; asserts each round trip and that the stand-in received each
/// request target exactly as boto3 signed and sent it.
fn assert_round_trips(endpoint: &str, ca: Option<&Proxy>, standins: &Running) {
    let keys = serde_json::to_string(KEYS).unwrap();
    let results = s3_client(endpoint, ca, &["roundtrip", &keys]);
    let results = results.as_array().unwrap();
    assert_eq!(results.len(), KEYS.len());
    let seen = s3_seen(standins);
    for result in results {
        let key = result["key"].as_str().unwrap();
        for (method, step) in [("PUT", &result["put"]), ("GET", &result["get"])] {
            assert_eq!(step["status"], 200, "{method} {key:?}: {result:#}");
            let target = step["target"].as_str().unwrap();
            let line = format!("200 {method} {target}");
            assert!(
                seen.contains(&line),
                "{method} {key:?}: the stand-in did not receive {target:?} as sent; it saw {seen:#?}"
            );
        }
        assert_eq!(result["get"]["body_matches"], true, "{key:?}: {result:#}");
    }
    // The client really sent the awkward forms (boto3 keeps them; a proxy must too).
    let target = |key: &str| {
        results.iter().find(|r| r["key"] == key).unwrap()["put"]["target"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(target("a//b"), "/bucket/a//b");
    assert_eq!(target("x/../y"), "/bucket/x/../y");
    assert_eq!(target("a/./b"), "/bucket/a/./b");
    assert_eq!(target("trailing/.."), "/bucket/trailing/..");
    assert_eq!(target("percent%2Eencoded"), "/bucket/percent%252Eencoded");
    assert_eq!(target("caf\u{e9}"), "/bucket/caf%C3%A9");
}

/// A PUT signed for one path and sent to another is refused by the stand-in.
fn assert_tampered_put_is_refused(endpoint: &str, ca: Option<&Proxy>, standins: &Running) {
    let result = s3_client(endpoint, ca, &["tamper", "tampered-key"]);
    assert_eq!(result["status"], 403, "{result:#}");
    assert_eq!(result["code"], "SignatureDoesNotMatch", "{result:#}");
    let line = format!("403 PUT {}", result["target"].as_str().unwrap());
    assert!(s3_seen(standins).contains(&line), "{line}");
}

/// Control: boto3 straight to the stand-in. Its verifier accepts real boto3 signatures
/// (payload signed with SHA-256 over plain HTTP) and rejects a changed path.
#[test]
fn standin_s3_verifies_real_boto3_signatures() {
    let standins = s3_standins();
    let endpoint = format!("http://{}", standins.address("standin-s3"));
    assert_round_trips(&endpoint, None, &standins);
    assert_tampered_put_is_refused(&endpoint, None, &standins);
}

/// Through pachgate with the 2.x preset: every request reaches S3 as signed (over TLS,
/// boto3 streams aws-chunked bodies with a trailing checksum), while other routes still
/// forward the normal form of the path.
#[test]
fn s3_requests_pass_through_the_preset_as_sent() {
    let standins = s3_standins();
    let proxy = pachgate_with_s3_preset(&standins);
    let endpoint = format!("https://127.0.0.1:{}", proxy.https().port());
    assert_round_trips(&endpoint, Some(&proxy), &standins);
    assert_tampered_put_is_refused(&endpoint, Some(&proxy), &standins);

    // The console route keeps the default: its upstream gets the normalised path.
    let output = Command::new("curl")
        .args(["-s", "--path-as-is", "--cacert"])
        .arg(proxy.ca())
        .arg(format!("{endpoint}/x/..//./headers"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("GET /headers "), "{text}");
}

/// Presigned URLs (signature in the query, no `authorization`) from boto3, fetched with curl
/// as they are: they go to the S3 upstream (the console would answer its HTML page), the
/// stand-in receives the exact target, and a changed URL is refused.
#[test]
fn presigned_urls_reach_s3_as_sent() {
    let standins = s3_standins();
    let proxy = pachgate_with_s3_preset(&standins);
    let endpoint = format!("https://127.0.0.1:{}", proxy.https().port());
    let key = "pre//signed/../caf\u{e9} 1+1";
    let keys = serde_json::to_string(&[key]).unwrap();
    let stored = s3_client(&endpoint, Some(&proxy), &["roundtrip", &keys]);
    assert_eq!(stored[0]["put"]["status"], 200, "{stored:#}");
    let object = stored[0]["get"]["body"].as_str().unwrap().to_string();

    let fetch = |url: &str| {
        let output = Command::new("curl")
            .args(["-s", "--path-as-is", "-w", "\n%{http_code}", "--cacert"])
            .arg(proxy.ca())
            .arg(url)
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_string(), body.to_string())
    };
    for (version, flags) in [("v4", &[][..]), ("v2", &["--v2"][..])] {
        let mut args = vec!["presign", key];
        args.extend(flags);
        let presigned = s3_client(&endpoint, Some(&proxy), &args);
        let url = presigned["url"].as_str().unwrap();
        let target = presigned["target"].as_str().unwrap();
        let signature_name = if version == "v4" {
            "X-Amz-Signature="
        } else {
            "Signature="
        };
        assert!(
            target.starts_with("/bucket/pre//signed/../") && target.contains(signature_name),
            "{version}: {url}"
        );

        let (status, body) = fetch(url);
        assert_eq!(status, "200", "{version}: {body}");
        assert_eq!(body, object, "{version}: not the object (console?)");
        let line = format!("200 GET {target}");
        assert!(
            s3_seen(&standins).contains(&line),
            "{version}: the stand-in did not receive {target:?}"
        );

        // One character of the path changed: S3, reached, refuses the signature.
        let tampered = url.replacen("/signed/", "/signeD/", 1);
        let (status, body) = fetch(&tampered);
        assert_eq!(status, "403", "{version}: {body}");
        assert!(
            body.contains("<Code>SignatureDoesNotMatch</Code>"),
            "{body}"
        );
    }
}
