//! `pachgate local`: TLS on localhost in front of `pachctl port-forward`, with a generated
//! CA that is remembered, and the exact lines to point pachctl at it. It fronts every port
//! the port-forward opens, routed as the 2.x preset routes them: pachd gRPC (30650), the S3
//! gateway (30600, by AWS signature), Dex (30658, `/dex`), the OIDC callback (30657) and the
//! console (4000). pachd's HTTP API (1659: `/pfs`, `/archive`, `/api/`, `/jsonschema/`) is
//! not forwarded by pachctl, so those routes are left out and such requests reach the
//! console.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args)]
pub struct LocalArgs {
    /// Where pachgate listens (TLS).
    #[arg(long, default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// pachd's gRPC port as `pachctl port-forward` exposes it.
    #[arg(long, default_value = "127.0.0.1:30650")]
    pachd: String,
    /// The console (2.x) as `pachctl port-forward` exposes it.
    #[arg(long, default_value = "127.0.0.1:4000")]
    console: String,
    /// pachd's S3 gateway as `pachctl port-forward` exposes it.
    #[arg(long, default_value = "127.0.0.1:30600")]
    s3: String,
    /// The OIDC login callback (2.x) as `pachctl port-forward` exposes it.
    #[arg(long, default_value = "127.0.0.1:30657")]
    oidc: String,
    /// Dex, the identity provider (2.x), as `pachctl port-forward` exposes it.
    #[arg(long, default_value = "127.0.0.1:30658")]
    dex: String,
    /// Pachyderm 1.x: the dash UI and its websocket instead of console
    /// (`--dash` and `--dash-ws` pick their ports).
    #[arg(long)]
    v1: bool,
    #[arg(long, default_value = "127.0.0.1:30080")]
    dash: String,
    #[arg(long, default_value = "127.0.0.1:30081")]
    dash_ws: String,
    /// Where the CA and certificate are kept (default: the user's config directory).
    #[arg(long)]
    cert_dir: Option<PathBuf>,
}

/// The user's config directory. There is no fallback to a shared one (`/tmp`): anyone
/// there could have placed a CA and key of their own for pachgate to reuse.
fn default_cert_dir() -> Result<PathBuf, String> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|home| !home.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })
        .ok_or(
            "neither XDG_CONFIG_HOME nor HOME is set: give the CA's directory with --cert-dir",
        )?;
    Ok(base.join("pachgate").join("local"))
}

/// Checks every forward at once and says, one line each, which are missing: the port and
/// what it is for. pachgate keeps running; requests for a missing one get 503 / UNAVAILABLE.
async fn check_port_forwards(forwards: &[(&'static str, u16, &str)]) {
    let mut checks = Vec::with_capacity(forwards.len());
    for (_, _, address) in forwards {
        let address = address.to_string();
        checks.push(tokio::spawn(async move {
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(address),
            )
            .await
            .is_ok_and(|r| r.is_ok())
        }));
    }
    for ((what, default_port, address), check) in forwards.iter().zip(checks) {
        if !check.await.unwrap_or(false) {
            eprintln!(
                "warning: nothing answers on {address} ({what}; `pachctl port-forward` \
                 puts it on port {default_port}). pachgate keeps running and answers those \
                 requests with 503 (gRPC: UNAVAILABLE) until it is up."
            );
        }
    }
}

pub async fn run(args: LocalArgs) -> Result<(), String> {
    let cert_dir = match args.cert_dir.clone() {
        Some(dir) => dir,
        None => default_cert_dir()?,
    };
    let ui_routes = if args.v1 {
        format!(
            r#"
[upstreams.dash-ws]
endpoints = ["{dash_ws}"]
protocol = "http1"

[upstreams.dash]
endpoints = ["{dash}"]
protocol = "http1"

[[routes]]
name = "dash-websocket"
match = {{ path_prefix = "/ws" }}
upstream = "dash-ws"

[[routes]]
name = "dash"
match = {{ path_prefix = "/" }}
upstream = "dash"
"#,
            dash = args.dash,
            dash_ws = args.dash_ws
        )
    } else {
        // The 2.x preset's routes for what the port-forward opens (see the module comment
        // for pachd's HTTP port, which it does not).
        format!(
            r#"
[upstreams.pachd-identity]
endpoints = ["{dex}"]
protocol = "http1"

[upstreams.pachd-oidc]
endpoints = ["{oidc}"]
protocol = "http1"

[upstreams.console]
endpoints = ["{console}"]
protocol = "http1"

[[routes]]
name = "dex"
match = {{ path_prefix = "/dex" }}
upstream = "pachd-identity"
timeout = "60s"

[[routes]]
name = "oidc-callback"
match = {{ path_prefix = "/authorization-code/callback" }}
upstream = "pachd-oidc"
timeout = "60s"

[[routes]]
name = "console"
match = {{ path_prefix = "/" }}
upstream = "console"
idle_timeout = "600s"
"#,
            dex = args.dex,
            oidc = args.oidc,
            console = args.console
        )
    };
    let who_am_i = if args.v1 {
        "/auth.API/WhoAmI"
    } else {
        "/auth_v2.API/WhoAmI"
    };
    let text = format!(
        r#"
[listen]
https = "{listen}"

[tls]
self_signed = true
self_signed_dir = {dir:?}
hosts = ["localhost", "127.0.0.1", "::1"]

[auth.pachyderm]
upstream = "pachd"
who_am_i_method = "{who_am_i}"
# A local cluster often runs without auth; pachgate listens on localhost only.
when_auth_disabled = "allow"

[upstreams.pachd]
endpoints = ["{pachd}"]
protocol = "h2c"

[upstreams.pachd-s3]
endpoints = ["{s3}"]
protocol = "http1"

[[routes]]
name = "pachd-grpc"
match = {{ grpc = true }}
upstream = "pachd"
auth = "pachyderm"

[[routes]]
name = "s3-sigv4"
match = {{ header = {{ name = "authorization", prefix = "AWS4-HMAC-SHA256" }} }}
upstream = "pachd-s3"
forward_path = "as-sent"
idle_timeout = "600s"

[[routes]]
name = "s3-sigv2"
match = {{ header = {{ name = "authorization", prefix = "AWS " }} }}
upstream = "pachd-s3"
forward_path = "as-sent"
idle_timeout = "600s"

[[routes]]
name = "s3-presigned-v4"
match = {{ query = ["X-Amz-Signature"] }}
upstream = "pachd-s3"
forward_path = "as-sent"
idle_timeout = "600s"

[[routes]]
name = "s3-presigned-v2"
match = {{ query = ["Signature", "AWSAccessKeyId"] }}
upstream = "pachd-s3"
forward_path = "as-sent"
idle_timeout = "600s"
{ui_routes}"#,
        listen = args.listen,
        dir = cert_dir.display().to_string(),
        pachd = args.pachd,
        s3 = args.s3,
    );

    let mut forwards = vec![
        (
            "pachd gRPC, for pachctl and the SDKs",
            30650,
            args.pachd.as_str(),
        ),
        ("the S3 gateway", 30600, args.s3.as_str()),
    ];
    if args.v1 {
        forwards.push(("the dash UI", 30080, args.dash.as_str()));
        forwards.push(("the dash websocket", 30081, args.dash_ws.as_str()));
    } else {
        forwards.push(("the OIDC login callback", 30657, args.oidc.as_str()));
        forwards.push(("Dex, the login provider", 30658, args.dex.as_str()));
        forwards.push(("the console", 4000, args.console.as_str()));
    }
    check_port_forwards(&forwards).await;

    let (server, https) = crate::serve_embedded("<local>", &text).await?;
    let ca = cert_dir.join("ca.crt");
    let port = https.port();
    crate::announce::announce(format!(
        r#"
pachgate local is running: TLS on localhost:{port} in front of pachd at {pachd}.
  CA certificate (kept, trust it once): {ca}

Point pachctl at it:
  pachctl connect grpcs://localhost:{port}
  pachctl config update context --server-cas "$(base64 -w0 < {ca})"

Browser: https://localhost:{port}/  (trust {ca} to avoid the warning)
S3 clients: endpoint https://localhost:{port} (AWS-signed requests go to the S3 gateway)

Press Ctrl-C to stop."#,
        pachd = args.pachd,
        ca = ca.display(),
    ));
    server.await.map_err(|e| e.to_string())?
}
