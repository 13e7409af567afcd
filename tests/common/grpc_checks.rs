//! The verdicts on tests/clients/grpc_checks.py. The script makes one check's calls with
//! grpcio (the official Python gRPC client) and prints what it observed — status codes,
//! details, counts, what the stand-in counted — as JSON on its last line of stdout; what
//! each check must have observed is asserted here, in Rust.

use serde_json::{json, Value};

/// The observations on the last line of a grpc_checks.py run of `check`.
pub fn observed(check: &str, stdout: &str) -> Value {
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("grpc_checks.py {check} printed nothing"));
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("grpc_checks.py {check}: {e} in {last:?}"));
    assert_eq!(report["check"], check);
    report["observed"].clone()
}

/// A call's outcome: its gRPC status name and details.
fn assert_outcome(what: &str, outcome: &Value, code: &str, phrase: Option<&str>) {
    assert_eq!(outcome["code"], code, "{what}: {outcome}");
    if let Some(phrase) = phrase {
        let details = outcome["details"].as_str().unwrap_or_default();
        assert!(
            details.contains(phrase),
            "{what}: {details:?} lacks {phrase:?}"
        );
    }
}

/// An Echo call answered with `payload`.
fn assert_echoed(what: &str, outcome: &Value, payload: &str) {
    assert_eq!(
        outcome,
        &json!({"code": "OK", "details": null, "payload": payload}),
        "{what}"
    );
}

/// What `check` must have observed (`o`, from `observed`).
pub fn verify(check: &str, o: &Value) {
    match check {
        "large" => {
            let size = 64 * 1024 * 1024;
            assert_eq!(o["sent_bytes"], size);
            assert_eq!(o["server_saw_bytes"], size, "the upstream's count: {o}");
            assert_eq!(o["reply_bytes"], size, "{o}");
            assert_eq!(o["first_difference"], Value::Null, "the echo differs: {o}");
        }
        "bidi-100k" => {
            assert_eq!(o["replies"], 100_000, "{o}");
            assert_eq!(o["out_of_sequence"], json!([]), "{o}");
            assert_eq!(o["payload_differs"], json!([]), "{o}");
        }
        "client-stream" => assert_eq!(o, &json!({"messages": 500, "bytes": 500_000})),
        "many-concurrent" => {
            assert_eq!(
                o,
                &json!({"calls": 2000, "mixed_up": [], "streamed": 2000}),
                "calls answered with another call's payload, or stream messages lost"
            );
        }
        "deadline" => {
            assert_eq!(o["code"], "DEADLINE_EXCEEDED", "{o}");
            let received = o["received"].as_u64().unwrap();
            assert!(
                received >= 3,
                "only {received} messages before the deadline"
            );
            assert!(received < 1000, "the stream was not cut by the deadline");
            assert!(o["seconds"].as_f64().unwrap() < 30.0, "{o}");
        }
        "trailers" => {
            let after_data = &o["after_data"];
            assert_eq!(after_data["messages"], 3, "{after_data}");
            assert_eq!(after_data["code"], "FAILED_PRECONDITION", "{after_data}");
            assert_eq!(after_data["details"], "after three messages: ü");
            assert_eq!(after_data["x-standin-trailer"], "kept");
            assert_eq!(
                after_data["grpc-status-details-bin"],
                "standin-status-details"
            );
            let only = &o["trailers_only"];
            assert_eq!(only["code"], "NOT_FOUND", "{only}");
            assert_eq!(only["details"], "no such repo");
            assert_eq!(only["x-standin-trailer"], "kept");
        }
        "pachd-methods" => {
            let version = &o["version"];
            assert_eq!(version["code"], "OK", "{version}");
            let reply = version["reply"].as_str().unwrap();
            assert!(reply.starts_with("\u{8}\u{2}"), "not major 2: {reply:?}");
            let who_am_i = &o["who_am_i"];
            assert_eq!(who_am_i["code"], "OK", "{who_am_i}");
            assert!(who_am_i["reply"].as_str().unwrap().contains("robot:demo"));
            assert_outcome(
                "WhoAmI without a token",
                &o["who_am_i_without_token"],
                "UNAUTHENTICATED",
                Some("no authentication token"),
            );
        }
        "unavailable" => assert_outcome("a down upstream", o, "UNAVAILABLE", Some("pachgate")),
        "unrouted" => assert_outcome("an unrouted call", o, "UNIMPLEMENTED", None),
        "upstream-timeout" => {
            assert_outcome("a slow upstream", o, "DEADLINE_EXCEEDED", Some("pachgate"))
        }
        "cancel" => {
            assert_eq!(o["code"], "CANCELLED", "{o}");
            assert_eq!(
                o["upstream_cancelled"], 1,
                "streams reset at the upstream: {o}"
            );
        }
        "upstream-dies" => {
            assert!(o["received"].as_u64().unwrap() >= 3, "{o}");
            let code = o["code"].as_str().unwrap();
            assert!(
                ["UNAVAILABLE", "INTERNAL", "CANCELLED"].contains(&code),
                "the stream ended with {code}, not an error for a dead upstream"
            );
            assert!(
                o["seconds"].as_f64().unwrap() < 60.0,
                "it waited for its deadline"
            );
        }
        "auth-gate" => {
            let version = &o["version_without_token"];
            assert_eq!(
                version["code"], "OK",
                "a public method needs no token: {version}"
            );
            assert!(version["reply"].as_str().unwrap().starts_with("\u{8}\u{2}"));
            let token = Some;
            assert_outcome(
                "no token",
                &o["no_token"],
                "UNAUTHENTICATED",
                token("no authentication token"),
            );
            assert_outcome(
                "a bad token",
                &o["bad_token"],
                "UNAUTHENTICATED",
                token("corrupted or has expired"),
            );
            // pachd's own answer with auth on (auth.GetAuthToken): code 2.
            assert_outcome(
                "two tokens",
                &o["two_tokens"],
                "UNKNOWN",
                token("multiple authentication token keys found in context"),
            );
            assert_outcome("a malformed path", &o["bad_path"], "UNIMPLEMENTED", None);
            assert_outcome("denied", &o["denied"], "UNAUTHENTICATED", None);
            assert_eq!(o["denied_reached_pachd"], 0, "a denied call reached pachd");
            assert_eq!(
                o["thousand_calls"],
                json!({"not_echoed": 0, "reached_pachd": 1000, "who_am_i_calls": 0}),
                "1000 calls with one cached token"
            );
            assert_eq!(
                o["concurrent_first_calls"],
                json!({"not_echoed": 0, "who_am_i_calls": 1}),
                "50 concurrent first calls with a new token share one WhoAmI"
            );
        }
        "auth-bypass" => {
            for (path, code) in o["paths"].as_object().unwrap() {
                assert_ne!(code, "OK", "{path} was let through without a token");
            }
            assert_eq!(o["paths"].as_object().unwrap().len(), 9);
            // Two values get pachd's own refusal (code 2), as pachd would answer them.
            for (why, code) in o["tokens"].as_object().unwrap() {
                let expected = if why == "empty token" {
                    "UNAUTHENTICATED"
                } else {
                    "UNKNOWN"
                };
                assert_eq!(code, expected, "{why}");
            }
            assert_eq!(o["tokens"].as_object().unwrap().len(), 3);
            assert_eq!(o["reached_pachd"], 0, "tricked calls reached pachd");
        }
        "auth-expiry" => {
            assert_echoed("a short-lived token while valid", &o["while_valid"], "s");
            // pachd's own answer for an expired token, which clients read as "log in
            // again" (not UNAVAILABLE, which they would retry).
            assert_outcome(
                "an expired token",
                &o["expired"],
                "INTERNAL",
                Some("token expiration is in the past"),
            );
        }
        "auth-not-active" => assert_outcome(
            "auth not active",
            o,
            "PERMISSION_DENIED",
            Some("not activated"),
        ),
        "auth-allow-when-disabled" => {
            assert_echoed("with a token", &o["with_token"], "open");
            // pachd without auth serves every call: the auth state is learned from pachd.
            assert_echoed("without a token", &o["without_token"], "no token");
        }
        "auth-unavailable" => assert_outcome(
            "pachd unreachable",
            o,
            "UNAVAILABLE",
            Some("pachgate cannot verify the token"),
        ),
        "auth-rate-limit" => {
            let calls = o["calls"].as_array().unwrap();
            assert_eq!(calls.len(), 4);
            for call in &calls[..3] {
                assert_outcome(
                    "a bad token within the budget",
                    call,
                    "UNAUTHENTICATED",
                    None,
                );
            }
            assert_outcome(
                "a bad token past the budget",
                &calls[3],
                "RESOURCE_EXHAUSTED",
                Some("too many"),
            );
        }
        "tls-upstream-wrong-ca" => assert_outcome(
            "an upstream that does not verify",
            o,
            "UNAVAILABLE",
            Some("TLS verification failed"),
        ),
        "stream-survives-drain" => assert_eq!(
            o,
            &json!({"received": 30, "out_of_order": [], "code": "OK"}),
            "the in-flight stream was cut by the drain"
        ),
        "idle-timeout" => {
            assert_eq!(o["replies"], 2, "the quiet stream: {o}");
            let took = o["seconds"].as_f64().unwrap();
            assert!(took >= 4.5, "{took:.1}s: its messages were not 2.5 s apart");
            assert_echoed(
                "the call after the idle close",
                &o["after_idle"],
                "after idle",
            );
        }
        other => panic!("no verdict written for grpc_checks.py {other}"),
    }
}

/// `observed` then `verify`, on a finished run's stdout.
pub fn verify_output(check: &str, stdout: &str) -> Value {
    let o = observed(check, stdout);
    verify(check, &o);
    o
}
