use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::*;

/// A WhoAmI transport with fixed answers that counts calls (pure-logic tests; the real one
/// is exercised end to end against the stand-in pachd).
struct Answers {
    calls: AtomicUsize,
    delay: Duration,
    answer: Box<dyn Fn(&str) -> WhoAmIAnswer + Send + Sync>,
}

impl WhoAmI for Answers {
    fn who_am_i(&self, token: &str) -> Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = (self.answer)(token);
        let delay = self.delay;
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            answer
        })
    }
}

fn gate(
    settings: PachydermAuthSettings,
    answer: impl Fn(&str) -> WhoAmIAnswer + Send + Sync + 'static,
) -> (PachydermGate, Arc<Answers>) {
    let answers = Arc::new(Answers {
        calls: AtomicUsize::new(0),
        // Long enough that concurrent first requests overlap, short enough for 1,000 calls.
        delay: Duration::from_millis(if settings.cache_capacity < 1000 {
            0
        } else {
            20
        }),
        answer: Box::new(answer),
    });
    (PachydermGate::new(settings, answers.clone()), answers)
}

fn pachd(token: &str) -> WhoAmIAnswer {
    match token {
        "good" => WhoAmIAnswer::Valid {
            username: "user:alice".into(),
            expiration: Some(SystemTime::now() + Duration::from_secs(3600)),
        },
        "expiring" => WhoAmIAnswer::Valid {
            username: "user:bob".into(),
            expiration: Some(SystemTime::now() + Duration::from_millis(100)),
        },
        _ => {
            WhoAmIAnswer::Unauthenticated("provided auth token is corrupted or has expired".into())
        }
    }
}

#[test]
fn grpc_paths() {
    for (path, ok) in [
        ("/pfs_v2.API/ListRepo", true),
        ("/grpc.health.v1.Health/Check", true),
        ("/pfs_v2.API/ListRepo/extra", false),
        ("//pfs_v2.API/ListRepo", false),
        ("/pfs_v2.API/", false),
        ("/pfs_v2.API", false),
        ("pfs_v2.API/ListRepo", false),
        ("/../auth_v2.API/WhoAmI", false),
        ("/auth_v2.API/Who%41mI", false),
        ("/auth_v2.API/WhoAmI?x=1", false),
        ("/.auth_v2.API/WhoAmI", false),
    ] {
        assert_eq!(is_well_formed_grpc_path(path), ok, "{path}");
    }
}

#[test]
fn public_methods_are_exact() {
    assert!(is_public_method("/versionpb_v2.API/GetVersion"));
    assert!(is_public_method("/auth.API/WhoAmI"));
    assert!(!is_public_method("/versionpb_v2.API/GetVersionX"));
    assert!(!is_public_method("/pfs_v2.API/ListRepo"));
}

#[test]
fn token_sources() {
    let none: [&[u8]; 0] = [];
    assert_eq!(
        token_from_grpc_metadata([b"t1".as_slice()].into_iter()),
        TokenLookup::Found("t1")
    );
    assert_eq!(
        token_from_grpc_metadata([b"t1".as_slice(), b"t2".as_slice()].into_iter()),
        TokenLookup::Ambiguous
    );
    assert_eq!(
        token_from_grpc_metadata(none.into_iter()),
        TokenLookup::Missing
    );
    assert_eq!(
        token_from_http(
            none.into_iter(),
            [b"theme=dark; authn-token=abc".as_slice()].into_iter(),
            none.into_iter()
        ),
        TokenLookup::Found("abc")
    );
    assert_eq!(
        token_from_http(
            none.into_iter(),
            none.into_iter(),
            [b"Bearer xyz".as_slice()].into_iter()
        ),
        TokenLookup::Found("xyz")
    );
    assert_eq!(
        token_from_http(
            [b"abc".as_slice()].into_iter(),
            none.into_iter(),
            [b"Bearer abc".as_slice()].into_iter()
        ),
        TokenLookup::Found("abc")
    );
    assert_eq!(
        token_from_http(
            [b"abc".as_slice()].into_iter(),
            none.into_iter(),
            [b"Bearer other".as_slice()].into_iter()
        ),
        TokenLookup::Ambiguous
    );
    assert_eq!(
        token_from_http(
            none.into_iter(),
            none.into_iter(),
            [b"Basic dXNlcjpwYXNz".as_slice()].into_iter()
        ),
        TokenLookup::Missing
    );
}

#[tokio::test]
async fn decisions() {
    let (gate, _) = gate(PachydermAuthSettings::default(), pachd);
    let cases = [
        (
            "/versionpb_v2.API/GetVersion",
            TokenLookup::Missing,
            Decision::Allow {
                username: None,
                reason: AllowReason::PublicMethod,
            },
        ),
        (
            "/pfs_v2.API/ListRepo",
            TokenLookup::Missing,
            Decision::Deny(DenyReason::MissingToken),
        ),
        (
            "/pfs_v2.API/ListRepo",
            TokenLookup::Ambiguous,
            Decision::Deny(DenyReason::AmbiguousToken),
        ),
        (
            "/pfs_v2.API/ListRepo",
            TokenLookup::Found("good"),
            Decision::Allow {
                username: Some("user:alice".into()),
                reason: AllowReason::ValidToken,
            },
        ),
        (
            "/pfs_v2.API/ListRepo",
            TokenLookup::Found("bad"),
            Decision::Deny(DenyReason::InvalidToken(
                "provided auth token is corrupted or has expired".into(),
            )),
        ),
        (
            "/pfs_v2.API/ListRepo/x",
            TokenLookup::Found("good"),
            Decision::Deny(DenyReason::MalformedMethod),
        ),
    ];
    for (method, token, want) in cases {
        assert_eq!(
            gate.check_grpc(method, token).await,
            want,
            "{method} {token:?}"
        );
    }
}

#[tokio::test]
async fn auth_not_active_denies_unless_allowed() {
    let (deny, _) = gate(PachydermAuthSettings::default(), |_| {
        WhoAmIAnswer::AuthNotActive
    });
    assert_eq!(
        deny.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Found("any"))
            .await,
        Decision::Deny(DenyReason::AuthNotActive)
    );
    let settings = PachydermAuthSettings {
        when_auth_disabled: WhenAuthDisabled::Allow,
        ..PachydermAuthSettings::default()
    };
    let (allow, _) = gate(settings, |_| WhoAmIAnswer::AuthNotActive);
    assert_eq!(
        allow
            .check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Found("any"))
            .await,
        Decision::Allow {
            username: None,
            reason: AllowReason::AuthNotActive,
        }
    );
}

#[tokio::test]
async fn concurrent_first_requests_make_one_call() {
    let (gate, answers) = gate(PachydermAuthSettings::default(), pachd);
    let gate = Arc::new(gate);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            gate.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Found("good"))
                .await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Decision::Allow { .. }));
    }
    assert_eq!(answers.calls.load(Ordering::SeqCst), 1);
    // And later requests within the TTL reuse the answer.
    gate.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Found("good"))
        .await;
    assert_eq!(answers.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answers_expire_with_the_token_and_failures_are_not_kept() {
    let (expiring, answers) = gate(PachydermAuthSettings::default(), pachd);
    expiring
        .check_grpc("/p.A/M", TokenLookup::Found("expiring"))
        .await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    expiring
        .check_grpc("/p.A/M", TokenLookup::Found("expiring"))
        .await;
    assert_eq!(
        answers.calls.load(Ordering::SeqCst),
        2,
        "cached past expiration"
    );

    let (down, calls) = gate(PachydermAuthSettings::default(), |_| {
        WhoAmIAnswer::Unavailable("connection refused".into())
    });
    for _ in 0..3 {
        assert!(matches!(
            down.check_grpc("/p.A/M", TokenLookup::Found("good")).await,
            Decision::Deny(DenyReason::CheckUnavailable(_))
        ));
    }
    assert_eq!(
        calls.calls.load(Ordering::SeqCst),
        3,
        "an outage was cached"
    );
}

#[tokio::test]
async fn cache_is_bounded() {
    let settings = PachydermAuthSettings {
        cache_capacity: 100,
        ..PachydermAuthSettings::default()
    };
    let (bounded, _) = gate(settings, pachd);
    for i in 0..1000 {
        let token = format!("t{i}");
        bounded
            .check_grpc("/p.A/M", TokenLookup::Found(&token))
            .await;
    }
    assert!(bounded.cache.len() <= 100, "{}", bounded.cache.len());
}
