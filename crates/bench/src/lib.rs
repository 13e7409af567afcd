//! The load generator behind `pachgate bench`: gRPC (unary and server streaming), websocket
//! echo, HTTP/1.1 and h2 requests, and TLS connection workloads (held idle connections,
//! handshake rate), against any target — pachgate, another proxy, or a backend directly.
//!
//! Closed loop by default; `--rate` switches to an open loop on a fixed schedule, and a call
//! that starts behind schedule is measured from its scheduled start, so a stalled target
//! cannot hide its queueing (coordinated omission). It measures; it does not judge.

mod connect;
mod driver;
mod grpc;
mod h2_calls;
mod http;
mod report;
mod spread;
mod ws;

use std::time::Duration;

pub use driver::Plan;
pub use report::Report;
pub use spread::AddressShare;

/// `pachgate bench …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum BenchCommand {
    /// gRPC calls over h2 (TLS with --ca/--insecure, or h2c with an http:// target).
    Grpc(GrpcArgs),
    /// Websocket echo round trips over ws:// or wss://.
    Ws(WsArgs),
    /// HTTP/1.1 or h2 GET/POST requests.
    Http(HttpArgs),
    /// Hold many idle TLS h2 connections, or measure new TLS handshakes per second.
    Connections(ConnectionsArgs),
}

#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// https://host:port (TLS), http://host:port (plaintext/h2c), wss:// or ws://.
    #[arg(long)]
    pub target: String,
    /// PEM CA certificate to trust for TLS targets.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Accept any server certificate (benchmarking only).
    #[arg(long)]
    pub insecure: bool,
    /// TLS server name to send and verify, if not the target's host.
    #[arg(long)]
    pub server_name: Option<String>,
    /// Connections to open.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// How long to run, e.g. 10s, 500ms, 2m.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many operations instead (whichever comes first).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop: start this many operations per second in total, on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// pachgate's admin `/metrics` URL (`http://127.0.0.1:9901/metrics`): its per-address
    /// request counters are read before and after the run, and the report shows how the
    /// calls spread over each upstream's addresses (pods).
    #[arg(long, value_name = "URL")]
    pub metrics: Option<String>,
}

#[derive(clap::Args, Debug, Clone)]
pub struct GrpcArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Concurrent streams per connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Payload bytes per request message (and per response message for server streaming).
    #[arg(long, default_value_t = 16)]
    pub size: usize,
    /// `unary` (echo), or `server-stream` (each call receives --messages messages).
    #[arg(long, default_value = "unary")]
    pub mode: GrpcMode,
    /// Messages per server-streaming call.
    #[arg(long, default_value_t = 1000)]
    pub messages: u32,
    /// Full method path; the default is the stand-in pachd's echo.
    #[arg(long)]
    pub method: Option<String>,
    /// Request metadata `name=value`, repeatable (e.g. `authn-token=…` for a gated pachd).
    #[arg(long = "metadata", value_name = "NAME=VALUE")]
    pub metadata: Vec<String>,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcMode {
    Unary,
    ServerStream,
}

#[derive(clap::Args, Debug, Clone)]
pub struct WsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Bytes per message.
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
}

#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// `h1` (one request at a time per connection) or `h2` (multiplexed).
    #[arg(long, default_value = "h2")]
    pub protocol: HttpProtocol,
    /// Concurrent streams per h2 connection.
    #[arg(long, default_value_t = 16)]
    pub streams: usize,
    /// Request body bytes; 0 sends GET, more sends POST.
    #[arg(long, default_value_t = 0)]
    pub size: usize,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    H1,
    H2,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ConnectionsArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// `hold`: open --connections TLS h2 connections and keep them idle for --duration;
    /// `handshakes`: new full TLS handshakes in a loop (no resumption) on --connections tasks.
    #[arg(long, default_value = "hold")]
    pub mode: ConnectionsMode,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionsMode {
    Hold,
    Handshakes,
}

impl BenchCommand {
    fn common(&self) -> &CommonArgs {
        match self {
            BenchCommand::Grpc(args) => &args.common,
            BenchCommand::Ws(args) => &args.common,
            BenchCommand::Http(args) => &args.common,
            BenchCommand::Connections(args) => &args.common,
        }
    }
}

/// Runs one benchmark and prints its report (table or JSON) on stdout.
pub async fn run(command: BenchCommand) -> Result<Report, String> {
    let metrics = command.common().metrics.clone();
    let before = match &metrics {
        Some(url) => Some(spread::scrape(url).await?),
        None => None,
    };
    let (mut report, json) = match command {
        BenchCommand::Grpc(args) => {
            let json = args.common.json;
            (grpc::run(args).await?, json)
        }
        BenchCommand::Ws(args) => {
            let json = args.common.json;
            (ws::run(args).await?, json)
        }
        BenchCommand::Http(args) => {
            let json = args.common.json;
            (http::run(args).await?, json)
        }
        BenchCommand::Connections(args) => {
            let json = args.common.json;
            (http::connections(args).await?, json)
        }
    };
    if let (Some(url), Some(before)) = (&metrics, before) {
        let after = spread::scrape(url).await?;
        report.spread = Some(spread::shares(&before, &after));
    }
    let text = if json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n"
    } else {
        report.table()
    };
    // A closed stdout (`| head`) is the reader's choice, not a reason to panic.
    let mut stdout = std::io::stdout();
    let _ = std::io::Write::write_all(&mut stdout, text.as_bytes());
    // Before any error line on stderr, so the two read in order on a terminal.
    let _ = std::io::Write::flush(&mut stdout);
    Ok(report)
}

/// `"500ms"`, `"10s"`, `"2m"` → Duration.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("{text:?}: add a unit (ms, s, m)"))?;
    let (number, unit) = text.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}
