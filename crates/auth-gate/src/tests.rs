use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use super::*;

const GET: http::Method = http::Method::GET;
const POST: http::Method = http::Method::POST;

/// A WhoAmI transport with fixed answers that counts calls (pure-logic tests; the real one
/// is exercised end to end against the stand-in pachd).
struct Answers {
    calls: AtomicUsize,
    delay: Duration,
    answer: Box<dyn Fn(&str) -> WhoAmIAnswer + Send + Sync>,
}

impl WhoAmI for Answers {
    fn who_am_i(
        &self,
        token: Option<&str>,
    ) -> Pin<Box<dyn Future<Output = WhoAmIAnswer> + Send + '_>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        // `None` is asked as the empty token: the fixtures answer it like pachd answers a
        // WhoAmI without any token.
        let answer = (self.answer)(token.unwrap_or(""));
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
        "expired" => WhoAmIAnswer::Expired("token expiration is in the past".into()),
        "" => WhoAmIAnswer::Unauthenticated("no authentication token (try logging in)".into()),
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
fn public_methods_are_exact_and_per_line() {
    let v2 = PachydermLine::V2;
    let v1 = PachydermLine::V1;
    assert!(v2.is_public_method("/versionpb_v2.API/GetVersion"));
    assert!(v2.is_public_method("/pfs_v2.API/GetFileTAR"));
    assert!(!v2.is_public_method("/auth.API/WhoAmI"));
    assert!(!v2.is_public_method("/versionpb_v2.API/GetVersionX"));
    assert!(!v2.is_public_method("/pfs_v2.API/ListRepo"));
    assert!(v1.is_public_method("/auth.API/WhoAmI"));
    assert!(v1.is_public_method("/health.Health/Health"));
    assert!(v1.is_public_method("/enterprise.API/Activate"));
    assert!(!v2.is_public_method("/enterprise_v2.API/Activate"));
    assert!(!v1.is_public_method("/auth_v2.API/WhoAmI"));
    assert!(!v1.is_public_method("/pfs_v2.API/GetFileTAR"));
    assert_eq!(v1.who_am_i_method(), "/auth.API/WhoAmI");
}

#[test]
fn pachd_http_surfaces() {
    for (path, want) in [
        (
            "/api/auth_v2.API/Authenticate",
            PachdHttpSurface::Gateway {
                method: "/auth_v2.API/Authenticate",
            },
        ),
        ("/api/", PachdHttpSurface::Gateway { method: "/" }),
        ("/api", PachdHttpSurface::Other),
        ("/apix/y", PachdHttpSurface::Other),
        ("/pfs", PachdHttpSurface::FileServer),
        (
            "/pfs/default/images/master/a.png",
            PachdHttpSurface::FileServer,
        ),
        ("/archive/ASi1L.zip", PachdHttpSurface::Archive),
        ("/pfsx", PachdHttpSurface::Other),
        (
            "/jsonschema/pps_v2/CreatePipelineRequest.schema.json",
            PachdHttpSurface::Other,
        ),
    ] {
        assert_eq!(pachd_http_surface(path), want, "{path}");
    }
}

fn found(token: &str) -> TokenLookup<'_> {
    TokenLookup::Found(token.into())
}

#[test]
fn token_sources() {
    let none: [&[u8]; 0] = [];
    assert_eq!(
        token_from_grpc_metadata([b"t1".as_slice()].into_iter()),
        found("t1")
    );
    assert_eq!(
        token_from_grpc_metadata([b"t1".as_slice(), b"t2".as_slice()].into_iter()),
        TokenLookup::Ambiguous
    );
    assert_eq!(
        token_from_grpc_metadata(none.into_iter()),
        TokenLookup::Missing
    );
    // The console sends an empty header before login, pachyderm-sdk an empty value: a
    // value without a token, which pachd looks up and does not find.
    for blank in [b"".as_slice(), b"  ".as_slice(), b"\xff".as_slice()] {
        assert_eq!(
            token_from_grpc_metadata([blank].into_iter()),
            TokenLookup::Blank
        );
    }
    assert_eq!(
        bearer_token([b"Bearer xyz".as_slice()].into_iter()),
        found("xyz")
    );
    assert_eq!(
        bearer_token([b"Bearer a".as_slice(), b"Bearer b".as_slice()].into_iter()),
        TokenLookup::Ambiguous
    );
    assert_eq!(
        bearer_token([b"Basic dXNlcjpwYXNz".as_slice()].into_iter()),
        TokenLookup::Missing
    );
}

#[test]
fn file_downloads_take_the_query_token_first_as_pachd_does() {
    let none: [&[u8]; 0] = [];
    let header = |v: &'static str| [v.as_bytes()].into_iter();
    // Query before header; the other is not looked at, so not ambiguous.
    assert_eq!(
        token_for_pachd_files(Some("authn-token=q1&x=1"), header("h1")),
        found("q1")
    );
    // An empty query token falls through to the header, as in pachd.
    assert_eq!(
        token_for_pachd_files(Some("authn-token=&x=1"), header("h1")),
        found("h1")
    );
    assert_eq!(token_for_pachd_files(None, header("h1")), found("h1"));
    // The first query value is the one Go's url.Query().Get returns.
    assert_eq!(
        token_for_pachd_files(Some("authn-token=a&authn-token=b"), none.into_iter()),
        found("a")
    );
    // Percent and plus decoding, in the value and in the name.
    assert_eq!(
        token_for_pachd_files(Some("authn%2Dtoken=a%2Bb+c"), none.into_iter()),
        found("a+b c")
    );
    // Names that only resemble it are not it.
    assert_eq!(
        token_for_pachd_files(Some("xauthn-token=a&authn-tokens=b"), none.into_iter()),
        TokenLookup::Missing
    );
    // As Go's url.ParseQuery: a pair with a malformed escape or a `;` is skipped (so a
    // later one counts), and nothing is trimmed; a malformed escape never panics.
    assert_eq!(
        token_for_pachd_files(Some("authn-token=%"), none.into_iter()),
        TokenLookup::Missing
    );
    assert_eq!(
        token_for_pachd_files(Some("authn-token=%zz&authn-token=good"), none.into_iter()),
        found("good")
    );
    assert_eq!(
        token_for_pachd_files(Some("authn-token=x;y&authn-token=good"), header("h1")),
        found("good")
    );
    assert_eq!(
        token_for_pachd_files(Some("authn-token=%4"), header("h1")),
        found("h1")
    );
    assert_eq!(
        token_for_pachd_files(Some("authn-token=+good"), none.into_iter()),
        found(" good")
    );
    assert_eq!(
        token_for_pachd_files(Some("authn-token"), none.into_iter()),
        TokenLookup::Missing
    );
}

#[tokio::test]
async fn grpc_gateway_paths_follow_the_methods_rules() {
    let (gate, answers) = gate(PachydermAuthSettings::default(), pachd);
    let public = Decision::Allow {
        username: None,
        reason: AllowReason::PublicMethod,
    };
    // The console logs in without a token.
    assert_eq!(
        gate.check_http(&POST, "/api/auth_v2.API/Authenticate", TokenLookup::Missing)
            .await,
        public
    );
    assert_eq!(
        gate.check_http(
            &POST,
            "/api/versionpb_v2.API/GetVersion",
            TokenLookup::Missing
        )
        .await,
        public
    );
    assert_eq!(
        gate.check_http(&POST, "/api/pfs_v2.API/ListProject", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::MissingToken)
    );
    assert_eq!(
        gate.check_http(&POST, "/api/pfs_v2.API/ListProject", found("expired"))
            .await,
        Decision::Deny(DenyReason::ExpiredToken(
            "token expiration is in the past".into()
        ))
    );
    // A file's preview or download needs a token.
    assert_eq!(
        gate.check_http(&GET, "/pfs/default/r/master/f", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::MissingToken)
    );
    // A 1.x name is not public on a 2.x gate.
    assert_eq!(
        gate.check_http(&POST, "/api/auth.API/Authenticate", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::MissingToken)
    );
    assert_eq!(
        answers.calls.load(Ordering::SeqCst),
        1,
        "only the expired one asked"
    );
}

#[tokio::test]
async fn without_a_token_the_auth_state_is_learned_from_pachd_and_cached() {
    let allow = PachydermAuthSettings {
        when_auth_disabled: WhenAuthDisabled::Allow,
        ..PachydermAuthSettings::default()
    };
    let (off, answers) = gate(allow.clone(), |_| WhoAmIAnswer::AuthNotActive);
    for _ in 0..3 {
        assert_eq!(
            off.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Missing)
                .await,
            Decision::Allow {
                username: None,
                reason: AllowReason::AuthNotActive,
            }
        );
    }
    assert_eq!(answers.calls.load(Ordering::SeqCst), 1, "asked per call");
    // Auth on: no token is still no token, in pachd's words.
    let (on, _) = gate(allow, pachd);
    assert_eq!(
        on.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::MissingToken)
    );
    // A blank token passes with auth off too, and with auth on gets pachd's answer to the
    // empty token it would look up: its bad-token error, not "no token".
    assert_eq!(
        off.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Blank)
            .await,
        Decision::Allow {
            username: None,
            reason: AllowReason::AuthNotActive,
        }
    );
    assert_eq!(
        on.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Blank)
            .await,
        Decision::Deny(DenyReason::InvalidToken(
            "provided auth token is corrupted or has expired (try logging in again)".into()
        ))
    );
    // With "deny", pachd is not even asked.
    let (deny, asked) = gate(PachydermAuthSettings::default(), |_| {
        WhoAmIAnswer::AuthNotActive
    });
    assert_eq!(
        deny.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::MissingToken)
    );
    assert_eq!(asked.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn only_answers_already_known_valid_count_as_known_valid() {
    let (gate, _) = gate(PachydermAuthSettings::default(), pachd);
    assert!(!gate.knows_valid("good"), "never asked yet");
    gate.check_grpc("/p.A/M", found("good")).await;
    gate.check_grpc("/p.A/M", found("bad")).await;
    assert!(gate.knows_valid("good"));
    assert!(!gate.knows_valid("bad"));
}

/// A token pachd vouched for stays known valid after its cached answer ages (the limiter's
/// exemption must outlast `cache_ttl`), until the token's own expiration passes or pachd
/// rejects it.
#[tokio::test]
async fn a_vouched_token_stays_known_past_the_cache_until_it_expires_or_is_revoked() {
    let revoked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let revoking = revoked.clone();
    let settings = PachydermAuthSettings {
        cache_ttl: Duration::from_millis(50),
        negative_cache_ttl: Duration::from_millis(50),
        cache_capacity: 10,
        ..PachydermAuthSettings::default()
    };
    let (gate, asked) = gate(settings, move |token| {
        if token == "good" && revoking.load(Ordering::SeqCst) {
            return pachd("bad");
        }
        pachd(token)
    });
    gate.check_grpc("/p.A/M", found("good")).await;
    gate.check_grpc("/p.A/M", found("expiring")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(gate.knows_valid("good"), "forgotten when the cache aged");
    assert!(!gate.knows_valid("expiring"), "known past its expiration");

    revoked.store(true, Ordering::SeqCst);
    assert!(matches!(
        gate.check_grpc("/p.A/M", found("good")).await,
        Decision::Deny(DenyReason::InvalidToken(_))
    ));
    assert_eq!(asked.calls.load(Ordering::SeqCst), 3, "pachd asked again");
    assert!(
        !gate.knows_valid("good"),
        "still known once pachd rejected it"
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
            Decision::Deny(DenyReason::MultipleTokens),
        ),
        (
            "/pfs_v2.API/ListRepo",
            found("good"),
            Decision::Allow {
                username: Some("user:alice".into()),
                reason: AllowReason::ValidToken,
            },
        ),
        (
            "/pfs_v2.API/ListRepo",
            found("bad"),
            Decision::Deny(DenyReason::InvalidToken(
                "provided auth token is corrupted or has expired".into(),
            )),
        ),
        (
            "/pfs_v2.API/ListRepo/x",
            found("good"),
            Decision::Deny(DenyReason::MalformedMethod),
        ),
    ];
    for (method, token, want) in cases {
        let shown = format!("{method} {token:?}");
        assert_eq!(gate.check_grpc(method, token).await, want, "{shown}");
    }
}

#[tokio::test]
async fn auth_not_active_denies_unless_allowed() {
    let (deny, _) = gate(PachydermAuthSettings::default(), |_| {
        WhoAmIAnswer::AuthNotActive
    });
    assert_eq!(
        deny.check_grpc("/pfs_v2.API/ListRepo", found("any")).await,
        Decision::Deny(DenyReason::AuthNotActive)
    );
    let settings = PachydermAuthSettings {
        when_auth_disabled: WhenAuthDisabled::Allow,
        ..PachydermAuthSettings::default()
    };
    let (allow, _) = gate(settings, |_| WhoAmIAnswer::AuthNotActive);
    assert_eq!(
        allow.check_grpc("/pfs_v2.API/ListRepo", found("any")).await,
        Decision::Allow {
            username: None,
            reason: AllowReason::AuthNotActive,
        }
    );
}

/// Several `authn-token` values: pachd asks whether auth is active before it reads the
/// token, so with auth off (and `when_auth_disabled = "allow"`) it serves the call; with
/// auth on it refuses with code 2 and "multiple authentication token keys".
#[tokio::test]
async fn several_tokens_are_refused_as_pachd_refuses_them() {
    let allow = PachydermAuthSettings {
        when_auth_disabled: WhenAuthDisabled::Allow,
        ..PachydermAuthSettings::default()
    };
    let (off, _) = gate(allow.clone(), |_| WhoAmIAnswer::AuthNotActive);
    assert_eq!(
        off.check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Ambiguous)
            .await,
        Decision::Allow {
            username: None,
            reason: AllowReason::AuthNotActive,
        }
    );
    let (on, _) = gate(allow, pachd);
    let denied = on
        .check_grpc("/pfs_v2.API/ListRepo", TokenLookup::Ambiguous)
        .await;
    assert_eq!(denied, Decision::Deny(DenyReason::MultipleTokens));
    assert_eq!(
        DenyReason::MultipleTokens.message(),
        "multiple authentication token keys found in context"
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
            gate.check_grpc("/pfs_v2.API/ListRepo", found("good")).await
        }));
    }
    for task in tasks {
        assert!(matches!(task.await.unwrap(), Decision::Allow { .. }));
    }
    assert_eq!(answers.calls.load(Ordering::SeqCst), 1);
    // And later requests within the TTL reuse the answer.
    gate.check_grpc("/pfs_v2.API/ListRepo", found("good")).await;
    assert_eq!(answers.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn answers_expire_with_the_token_and_failures_are_not_kept() {
    let (expiring, answers) = gate(PachydermAuthSettings::default(), pachd);
    expiring.check_grpc("/p.A/M", found("expiring")).await;
    tokio::time::sleep(Duration::from_millis(150)).await;
    expiring.check_grpc("/p.A/M", found("expiring")).await;
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
            down.check_grpc("/p.A/M", found("good")).await,
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
        bounded.check_grpc("/p.A/M", found(&token)).await;
    }
    assert!(bounded.cache.len() <= 100, "{}", bounded.cache.len());
}

/// A full cache drops rejections before valid answers: a flood of distinct bad tokens does
/// not push out the answers for valid ones (which would cost each holder a WhoAmI per call).
#[tokio::test]
async fn a_flood_of_bad_tokens_does_not_evict_valid_answers() {
    let settings = PachydermAuthSettings {
        cache_capacity: 100,
        ..PachydermAuthSettings::default()
    };
    let (gate, asked) = gate(settings, |token| match token.starts_with("good") {
        true => pachd("good"),
        false => pachd(token),
    });
    let valid: Vec<String> = (0..50).map(|i| format!("good-{i}")).collect();
    for token in &valid {
        gate.check_grpc("/p.A/M", found(token)).await;
    }
    for i in 0..1000 {
        gate.check_grpc("/p.A/M", found(&format!("guess-{i}")))
            .await;
    }
    let before = asked.calls.load(Ordering::SeqCst);
    for token in &valid {
        let decision = gate.check_grpc("/p.A/M", found(token)).await;
        assert!(matches!(decision, Decision::Allow { .. }), "{decision:?}");
    }
    let asked_again = asked.calls.load(Ordering::SeqCst) - before;
    assert_eq!(asked_again, 0, "valid answers evicted");
}

/// A check refused by the budget, or abandoned while pachd is asked, leaves no slot behind:
/// guesses refused unasked must not fill the cache for good.
#[tokio::test]
async fn checks_that_never_got_an_answer_leave_no_slot() {
    struct OutOfBudget;
    impl AskBudget for OutOfBudget {
        fn ask<'a>(
            &'a self,
            _vouched: bool,
            _question: WhoAmIFuture<'a>,
        ) -> Pin<Box<dyn Future<Output = Result<WhoAmIAnswer, Duration>> + Send + 'a>> {
            Box::pin(async { Err(Duration::from_secs(2)) })
        }
    }
    let (gate, calls) = gate(PachydermAuthSettings::default(), pachd);
    for i in 0..50 {
        let token = format!("guess-{i}");
        let refused = gate
            .check_grpc_within("/p.A/M", found(&token), &OutOfBudget)
            .await;
        assert!(matches!(
            refused,
            Decision::Deny(DenyReason::RateLimited {
                retry_after_secs: 2
            })
        ));
    }
    assert_eq!(calls.calls.load(Ordering::SeqCst), 0, "none was asked");
    assert_eq!(gate.cache.len(), 0);
    // Abandoned while pachd takes its time (the fixture waits 20 ms).
    let abandoned = tokio::time::timeout(
        Duration::from_millis(1),
        gate.check_grpc("/p.A/M", found("slow-guess")),
    )
    .await;
    assert!(abandoned.is_err());
    assert_eq!(gate.cache.len(), 0);
    // An answered check stays cached.
    gate.check_grpc("/p.A/M", found("good")).await;
    assert_eq!(gate.cache.len(), 1);
}

#[test]
fn file_handlers_answer_some_requests_before_any_token() {
    let head = http::Method::HEAD;
    let put = http::Method::PUT;
    for (method, path, answered) in [
        // /pfs: GET and HEAD of /pfs/<project>/<repo>/<commit|branch>/<path…> use the token.
        (&GET, "/pfs/default/images/master/a.png", false),
        (&head, "/pfs/default/images/master/a.png", false),
        (&GET, "/pfs/default/images/master/", false),
        // Anything else is answered first: 405, 404, or 301 to the path and a slash.
        (&POST, "/pfs/default/images/master/a.png", true),
        (&put, "/pfs/default/images/master/a.png", true),
        (&GET, "/pfs/default/images/master", true),
        (&GET, "/pfs/default/images/", true),
        (&GET, "/pfs", true),
        // pachd splits the decoded path: an encoded slash is a part too.
        (&GET, "/pfs/default/images/master%2Fa.png", false),
        (&GET, "/pfs/default/images/master%2fa.png", false),
        (&GET, "/pfs/default/images%2F", true),
        // A websocket over HTTP/2 reaches pachd as a GET.
        (
            &http::Method::CONNECT,
            "/pfs/default/images/master/a.png",
            false,
        ),
        (&http::Method::CONNECT, "/archive/ASi1L.zip", false),
        // /archive: only a method other than GET is answered before the token.
        (&GET, "/archive/ASi1L.zip", false),
        (&POST, "/archive/ASi1L.zip", true),
        (&head, "/archive/ASi1L.zip", true),
        // Nothing else is a file handler.
        (&POST, "/api/pfs_v2.API/ListRepo", false),
        (&put, "/jsonschema/x.json", false),
    ] {
        assert_eq!(
            pachd_http_surface(path).answers_without_token(method, path),
            answered,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn file_handlers_get_the_requests_pachd_answers_itself() {
    let (gate, answers) = gate(PachydermAuthSettings::default(), pachd);
    let answered_by_pachd = Decision::Allow {
        username: None,
        reason: AllowReason::AnsweredByPachd,
    };
    // pachd's 301 and 405 on /pfs need no token.
    assert_eq!(
        gate.check_http(&GET, "/pfs/default/r/master", TokenLookup::Missing)
            .await,
        answered_by_pachd
    );
    assert_eq!(
        gate.check_http(&POST, "/pfs/default/r/master/f", found("bad"))
            .await,
        answered_by_pachd
    );
    // /archive reports a refused token inside its 200 ZIP: pachd's answer, not the gate's.
    for token in [TokenLookup::Missing, found("bad"), found("expired")] {
        assert_eq!(
            gate.check_http(&GET, "/archive/ASi1L.zip", token).await,
            answered_by_pachd
        );
    }
    // With `when_auth_disabled = "deny"`, a request without a token is not passed to a
    // pachd whose auth is off (it would serve the archive): asked, and refused.
    let (off, asked) = self::gate(PachydermAuthSettings::default(), |_| {
        WhoAmIAnswer::AuthNotActive
    });
    assert_eq!(
        off.check_http(&GET, "/archive/ASi1L.zip", TokenLookup::Missing)
            .await,
        Decision::Deny(DenyReason::AuthNotActive)
    );
    assert_eq!(asked.calls.load(Ordering::SeqCst), 1);
    // A good token passes as everywhere, with its user.
    assert!(matches!(
        gate.check_http(&GET, "/archive/ASi1L.zip", found("good"))
            .await,
        Decision::Allow {
            reason: AllowReason::ValidToken,
            ..
        }
    ));
    // The tokens were still checked (the failed-authentication budget counts them), and
    // whether auth is on was asked once for the request without one.
    assert_eq!(answers.calls.load(Ordering::SeqCst), 4);
}
