//! `pachgate local`: TLS on localhost in front of `pachctl port-forward`, with a generated
//! CA that is remembered, and the exact lines to point pachctl at it.

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

fn default_cert_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("pachgate").join("local")
}

/// Says clearly which port-forward is missing, instead of failing on the first request.
async fn check_port_forward(what: &str, address: &str) {
    let reachable = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(address),
    )
    .await
    .map(|r| r.is_ok())
    .unwrap_or(false);
    if !reachable {
        eprintln!(
            "warning: nothing answers on {address} ({what}). Start the port-forward with \
             `pachctl port-forward` (it forwards pachd to 30650 and the console to 4000); \
             pachgate keeps running and answers UNAVAILABLE until it is up."
        );
    }
}

pub async fn run(args: LocalArgs) -> Result<(), String> {
    let cert_dir = args.cert_dir.clone().unwrap_or_else(default_cert_dir);
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
        format!(
            r#"
[upstreams.console]
endpoints = ["{console}"]
protocol = "http1"

[[routes]]
name = "console"
match = {{ path_prefix = "/" }}
upstream = "console"
"#,
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

[[routes]]
name = "pachd-grpc"
match = {{ grpc = true }}
upstream = "pachd"
auth = "pachyderm"
{ui_routes}"#,
        listen = args.listen,
        dir = cert_dir.display().to_string(),
        pachd = args.pachd,
    );

    check_port_forward("pachd", &args.pachd).await;
    if args.v1 {
        check_port_forward("dash", &args.dash).await;
    } else {
        check_port_forward("console", &args.console).await;
    }

    let (server, https) = crate::serve_embedded("<local>", &text).await?;
    let ca = cert_dir.join("ca.crt");
    let port = https.port();
    println!(
        r#"
pachgate local is running: TLS on localhost:{port} in front of pachd at {pachd}.
  CA certificate (kept, trust it once): {ca}

Point pachctl at it:
  pachctl connect grpcs://localhost:{port}
  pachctl config update context --server-cas "$(base64 -w0 < {ca})"

Browser: https://localhost:{port}/  (trust {ca} to avoid the warning)

Press Ctrl-C to stop."#,
        pachd = args.pachd,
        ca = ca.display(),
    );
    server.await.map_err(|e| e.to_string())?
}
