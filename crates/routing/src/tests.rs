//! The route table's behaviour through its public API: the Pachyderm preset's order, host,
//! gRPC, header and query matching, and compile errors.

use crate::*;

struct Facts<'a> {
    host: Option<&'a str>,
    path: &'a str,
    grpc: bool,
    headers: &'a [(&'a str, &'a str)],
    query: Option<&'a str>,
}

impl RequestFacts for Facts<'_> {
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn is_grpc(&self) -> bool {
        self.grpc
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_bytes())
    }
    fn query(&self) -> Option<&str> {
        self.query
    }
}

fn spec(host: Option<&str>, path: Option<&str>, grpc: Option<bool>) -> MatchSpec {
    MatchSpec {
        host: host.map(str::to_string),
        path_prefix: path.map(str::to_string),
        grpc,
        header: None,
        query: Vec::new(),
    }
}

fn s3_header() -> MatchSpec {
    MatchSpec {
        header: Some(HeaderSpec {
            name: "Authorization".into(),
            exact: None,
            prefix: Some("AWS4-HMAC-SHA256".into()),
        }),
        ..MatchSpec::default()
    }
}

fn query(names: &[&str]) -> MatchSpec {
    MatchSpec {
        query: names.iter().map(|n| n.to_string()).collect(),
        ..MatchSpec::default()
    }
}

/// The Pachyderm 2.x table from DESIGN.md, in its order, with pachgate's presigned-URL
/// routes next to the signed-header one.
fn pachyderm_table() -> RouteTable<&'static str> {
    RouteTable::compile([
        (
            "grpc".to_string(),
            spec(None, None, Some(true)),
            "pachd-grpc",
        ),
        ("s3".to_string(), s3_header(), "pachd-s3"),
        (
            "s3-presigned-v4".to_string(),
            query(&["X-Amz-Signature"]),
            "pachd-s3",
        ),
        (
            "s3-presigned-v2".to_string(),
            query(&["Signature", "AWSAccessKeyId"]),
            "pachd-s3",
        ),
        ("dex".to_string(), spec(None, Some("/dex"), None), "dex"),
        (
            "oidc".to_string(),
            spec(None, Some("/authorization-code/callback"), None),
            "oidc",
        ),
        (
            "archive".to_string(),
            spec(None, Some("/archive/"), None),
            "pachd-http",
        ),
        (
            "api".to_string(),
            spec(None, Some("/api/"), None),
            "pachd-http",
        ),
        (
            "console".to_string(),
            spec(None, Some("/"), None),
            "console",
        ),
    ])
    .unwrap()
}

#[test]
fn pachyderm_preset_routes_first_match_wins() {
    let table = pachyderm_table();
    // (path[?query], is gRPC, headers, expected target)
    type Case<'a> = (&'a str, bool, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("/pfs_v2.API/ListRepo", true, &[], "pachd-grpc"),
        (
            "/bucket/key?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=abc",
            false,
            &[],
            "pachd-s3",
        ),
        (
            "/bucket/key?AWSAccessKeyId=AK&Expires=1&Signature=abc",
            false,
            &[],
            "pachd-s3",
        ),
        // Only half of a v2 presigned URL's names: the console's.
        ("/bucket/key?Signature=abc", false, &[], "console"),
        ("/dex/auth?X-Amz-Signature", false, &[], "pachd-s3"),
        // gRPC wins over any path rule, even one that looks like another route.
        ("/dex/whatever", true, &[], "pachd-grpc"),
        (
            "/bucket/key",
            false,
            &[("authorization", "AWS4-HMAC-SHA256 Credential=x")],
            "pachd-s3",
        ),
        ("/dex", false, &[], "dex"),
        ("/dex/auth", false, &[], "dex"),
        ("/dexter", false, &[], "console"),
        ("/authorization-code/callback", false, &[], "oidc"),
        ("/archive/abc.zip", false, &[], "pachd-http"),
        ("/archive", false, &[], "pachd-http"),
        ("/archived", false, &[], "console"),
        ("/api/v1/x", false, &[], "pachd-http"),
        ("/", false, &[], "console"),
        ("/lineage/default", false, &[], "console"),
    ];
    for (target, grpc, headers, want) in cases {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (*target, None),
        };
        let facts = Facts {
            host: Some("pach.example.com"),
            path,
            grpc: *grpc,
            headers,
            query,
        };
        let got = table.pick(&facts).map(|r| r.target);
        assert_eq!(got, Some(*want), "target {target} grpc {grpc}");
    }
}

#[test]
fn host_matching_exact_and_wildcard() {
    let table = RouteTable::compile([
        (
            "exact".into(),
            spec(Some("Console.Example.com"), None, None),
            1,
        ),
        (
            "wild".into(),
            spec(Some("*.pach.example.com"), None, None),
            2,
        ),
    ])
    .unwrap();
    let cases: &[(Option<&str>, Option<i32>)] = &[
        (Some("console.example.com"), Some(1)),
        (Some("CONSOLE.EXAMPLE.COM"), Some(1)),
        (Some("console.example.com."), Some(1)),
        (Some("a.pach.example.com"), Some(2)),
        (Some("a.b.pach.example.com"), Some(2)),
        (Some("pach.example.com"), None),
        (Some("xpach.example.com"), None),
        (Some("other.example.com"), None),
        (None, None),
    ];
    for (host, want) in cases {
        let facts = Facts {
            host: *host,
            path: "/",
            grpc: false,
            headers: &[],
            query: None,
        };
        assert_eq!(table.pick(&facts).map(|r| r.target), *want, "host {host:?}");
    }
}

#[test]
fn grpc_false_excludes_grpc_and_header_presence() {
    let table = RouteTable::compile([
        ("not-grpc".into(), spec(None, None, Some(false)), 1),
        (
            "has-header".into(),
            MatchSpec {
                header: Some(HeaderSpec {
                    name: "x-pach".into(),
                    ..HeaderSpec::default()
                }),
                ..MatchSpec::default()
            },
            2,
        ),
        (
            "exact".into(),
            MatchSpec {
                header: Some(HeaderSpec {
                    name: "x-env".into(),
                    exact: Some("prod".into()),
                    prefix: None,
                }),
                ..MatchSpec::default()
            },
            3,
        ),
    ])
    .unwrap();
    let pick = |grpc, headers: &[(&str, &str)]| {
        table
            .pick(&Facts {
                host: None,
                path: "/x",
                grpc,
                headers,
                query: None,
            })
            .map(|r| r.target)
    };
    assert_eq!(pick(false, &[]), Some(1));
    assert_eq!(pick(true, &[("x-pach", "")]), Some(2));
    assert_eq!(pick(true, &[("x-env", "prod")]), Some(3));
    assert_eq!(pick(true, &[("x-env", "production")]), None);
    assert_eq!(pick(true, &[]), None);
}

#[test]
fn query_names_match_exactly_and_all_of_them() {
    let v2 = query(&["Signature", "AWSAccessKeyId"]);
    // (query as sent, does the v2 presigned matcher match)
    let cases: &[(Option<&str>, bool)] = &[
        (Some("AWSAccessKeyId=AK&Expires=1&Signature=s"), true),
        (Some("Signature=s&AWSAccessKeyId=AK"), true),
        // A name without `=` is still a name.
        (Some("Signature&AWSAccessKeyId"), true),
        (Some("x=1&Signature=&AWSAccessKeyId=&y"), true),
        (None, false),
        (Some(""), false),
        (Some("Signature=s"), false),
        (Some("AWSAccessKeyId=AK"), false),
        // Case-sensitive, as AWS sends them.
        (Some("signature=s&awsaccesskeyid=AK"), false),
        // A name that extends another is another name.
        (Some("SignatureX=s&AWSAccessKeyId=AK"), false),
        (Some("Signature=s&AWSAccessKeyIdX=AK"), false),
        (Some("XSignature=s&AWSAccessKeyId=AK"), false),
        // A value reading like a name is a value.
        (Some("a=Signature&b=AWSAccessKeyId"), false),
        (Some("a=Signature&AWSAccessKeyId=Signature"), false),
        // Not decoded: `%53` is not `S` to the matcher.
        (Some("%53ignature=s&AWSAccessKeyId=AK"), false),
    ];
    let table = RouteTable::compile([("v2".to_string(), v2, ())]).unwrap();
    for (query, want) in cases {
        let facts = Facts {
            host: None,
            path: "/bucket/key",
            grpc: false,
            headers: &[],
            query: *query,
        };
        assert_eq!(table.pick(&facts).is_some(), *want, "query {query:?}");
    }
}

#[test]
fn compile_errors_name_the_route() {
    let bad: &[(MatchSpec, RouteError)] = &[
        (spec(Some("*"), None, None), RouteError::BadHost("*".into())),
        (
            spec(Some("a.*.com"), None, None),
            RouteError::BadHost("a.*.com".into()),
        ),
        (
            spec(Some("bad host"), None, None),
            RouteError::BadHost("bad host".into()),
        ),
        (
            spec(None, Some("dex"), None),
            RouteError::BadPathPrefix("dex".into()),
        ),
        (
            MatchSpec {
                header: Some(HeaderSpec {
                    name: "bad name".into(),
                    ..HeaderSpec::default()
                }),
                ..MatchSpec::default()
            },
            RouteError::BadHeaderName("bad name".into()),
        ),
        (
            MatchSpec {
                header: Some(HeaderSpec {
                    name: "x".into(),
                    exact: Some("a".into()),
                    prefix: Some("a".into()),
                }),
                ..MatchSpec::default()
            },
            RouteError::HeaderExactAndPrefix,
        ),
        (query(&[""]), RouteError::BadQueryName("".into())),
        (query(&["a=b"]), RouteError::BadQueryName("a=b".into())),
        (query(&["a b"]), RouteError::BadQueryName("a b".into())),
        (query(&["a&b"]), RouteError::BadQueryName("a&b".into())),
    ];
    for (spec, want) in bad {
        let result = RouteTable::compile([
            ("ok".to_string(), MatchSpec::default(), ()),
            ("bad".to_string(), spec.clone(), ()),
        ]);
        assert_eq!(result.err(), Some((1, want.clone())), "spec {spec:?}");
    }
}
