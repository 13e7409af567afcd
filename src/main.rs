//! The `pachgate` binary: command line, config file → typed config, wiring of the crates,
//! signals. Thin by design: it assembles crates, it does not proxy.

mod config;
mod demo;
mod local;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use pachgate_proxy_core::{Gateway, PlainMode};
use tokio::net::TcpListener;

use crate::config::RuntimeConfig;

#[derive(Parser)]
#[command(
    name = "pachgate",
    version,
    about = "A TLS ingress for Pachyderm: gRPC to pachd, the console and its websockets, one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file.
    Serve {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file; prints file:line:column for each problem and exits non-zero.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Certificate tools.
    Cert {
        #[command(subcommand)]
        command: CertCommand,
    },
    /// Run stand-in pachd and console backends behind pachgate, with a generated certificate.
    Demo(demo::DemoArgs),
    /// TLS on localhost in front of `pachctl port-forward`, with a remembered CA.
    Local(local::LocalArgs),
    /// Measure throughput and latency of a target: pachgate, another proxy, or a backend.
    Bench {
        #[command(subcommand)]
        workload: pachgate_bench::BenchCommand,
        /// Load generator threads (default: one per core).
        #[arg(long, global = true)]
        threads: Option<usize>,
    },
    /// Run only the stand-in backends (for tests and benchmarks).
    #[command(hide = true)]
    Standins {
        #[arg(long, default_value = "127.0.0.1:0")]
        pachd: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:0")]
        console: SocketAddr,
        /// Answer WhoAmI with UNIMPLEMENTED, as a pachd without auth does.
        #[arg(long)]
        auth_inactive: bool,
    },
}

#[derive(Subcommand)]
enum CertCommand {
    /// Write a new CA and a leaf certificate for the given hosts: ca.crt, ca.key, tls.crt,
    /// tls.key (the names a Kubernetes TLS secret uses). Keys get mode 0600.
    Generate {
        #[arg(long)]
        out: PathBuf,
        /// DNS name or IP address for the leaf; repeat for several.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(runtime) => {
                println!(
                    "{}: ok ({} routes, {} upstreams)",
                    config.display(),
                    runtime.route_count,
                    runtime.upstream_count
                );
                ExitCode::SUCCESS
            }
            Err(errors) => report_config_errors(&errors),
        },
        Command::Serve { config } => match config::load(&config) {
            Ok(runtime) => run_blocking(runtime.worker_threads, async move {
                let reload = ConfigReloader { path: config };
                serve_with_reload(runtime, None, Some(reload)).await
            }),
            Err(errors) => report_config_errors(&errors),
        },
        Command::Cert {
            command: CertCommand::Generate { out, hosts },
        } => generate_cert(&out, &hosts),
        Command::Demo(args) => run_blocking(None, demo::run(args)),
        Command::Local(args) => run_blocking(None, local::run(args)),
        Command::Bench { workload, threads } => run_blocking(threads, async move {
            let report = pachgate_bench::run(workload).await?;
            // A run with failures or without a single success is not a measurement.
            if report.ok == 0 || report.error_count() > 0 {
                return Err(format!(
                    "{} ok, {} failed: see the errors above",
                    report.ok,
                    report.error_count()
                ));
            }
            Ok(())
        }),
        Command::Standins {
            pachd,
            console,
            auth_inactive,
        } => run_blocking(None, standins(pachd, console, auth_inactive)),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PACHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn report_config_errors(errors: &[config::ConfigError]) -> ExitCode {
    for error in errors {
        eprintln!("error: {error}");
    }
    eprintln!(
        "{} problem{} found; nothing was started",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
    ExitCode::from(2)
}

/// Worker threads: `PACHGATE_WORKER_THREADS`, else the config's `runtime.worker_threads`,
/// else one per core.
fn worker_threads(configured: Option<usize>) -> Result<usize, String> {
    if let Ok(value) = std::env::var("PACHGATE_WORKER_THREADS") {
        return match value.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "PACHGATE_WORKER_THREADS={value:?} is not a positive integer"
            )),
        };
    }
    Ok(configured.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }))
}

fn run_blocking(
    configured_threads: Option<usize>,
    task: impl std::future::Future<Output = Result<(), String>>,
) -> ExitCode {
    let threads = match worker_threads(configured_threads) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses a config built in code (`demo`, `local`) and starts serving it. Returns the running
/// server and its bound https address once every listener is up.
pub async fn serve_embedded(
    name: &str,
    text: &str,
) -> Result<(tokio::task::JoinHandle<Result<(), String>>, SocketAddr), String> {
    let runtime = config::parse(std::path::Path::new(name), text, std::path::Path::new("."))
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(runtime, Some(ready_tx)));
    match ready_rx.await {
        Ok(Some(addr)) => Ok((server, addr)),
        _ => Err(match server.await {
            Ok(Err(e)) => e,
            Ok(Ok(())) => "the server stopped before it was ready".into(),
            Err(e) => e.to_string(),
        }),
    }
}

/// Binds every listener, then serves until SIGINT/SIGTERM. `ready` hears the bound https
/// address (the demo prints it).
pub async fn serve(
    runtime: RuntimeConfig,
    ready: Option<tokio::sync::oneshot::Sender<Option<SocketAddr>>>,
) -> Result<(), String> {
    serve_with_reload(runtime, ready, None).await
}

/// Re-reads the config file on SIGHUP. A valid file replaces routes, upstreams, auth and
/// limits for new requests (in-flight ones finish on the old snapshot); an invalid one is
/// logged with file:line:column and changes nothing. Listener addresses and TLS settings are
/// read at start only.
struct ConfigReloader {
    path: PathBuf,
}

impl ConfigReloader {
    /// Registers for SIGHUP now, before any listener is announced, so an early SIGHUP is a
    /// reload request rather than the default "terminate".
    #[cfg(unix)]
    fn listen(self) -> Option<(Self, tokio::signal::unix::Signal)> {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hangups) => Some((self, hangups)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; config reload is off");
                None
            }
        }
    }

    #[cfg(unix)]
    async fn run(self, mut hangups: tokio::signal::unix::Signal, gateway: std::sync::Arc<Gateway>) {
        while hangups.recv().await.is_some() {
            match config::load(&self.path) {
                Ok(runtime) => {
                    gateway.replace_snapshot(runtime.snapshot);
                    tracing::info!(
                        file = %self.path.display(),
                        routes = runtime.route_count,
                        "config reloaded"
                    );
                }
                Err(errors) => {
                    for error in &errors {
                        tracing::error!(%error, "config reload refused; the running config stays");
                    }
                }
            }
        }
    }
}

async fn serve_with_reload(
    runtime: RuntimeConfig,
    ready: Option<tokio::sync::oneshot::Sender<Option<SocketAddr>>>,
    reload: Option<ConfigReloader>,
) -> Result<(), String> {
    #[cfg(unix)]
    let reload = reload.and_then(ConfigReloader::listen);
    #[cfg(not(unix))]
    let _ = reload;
    let drain_timeout = runtime.limits.drain_timeout;
    let gateway = Gateway::new(runtime.snapshot, runtime.limits);
    let mut https_addr = None;
    if let Some(addr) = runtime.https {
        let source = runtime
            .tls
            .as_ref()
            .ok_or("listen.https is set but [tls] is missing")?;
        let tls = source
            .server_config()
            .map_err(|e| format!("TLS certificate: {e}"))?;
        let listener = bind(addr, "https").await?;
        https_addr = Some(listener.local_addr().map_err(|e| e.to_string())?);
        tokio::spawn(gateway.clone().serve_tls(
            listener,
            tls.config.clone(),
            runtime.proxy_protocol,
        ));
        tokio::spawn(tls.watch(CERTIFICATE_RECHECK));
    }
    if let Some((addr, mut mode)) = runtime.http {
        if let (PlainMode::Redirect { https_port }, Some(bound)) = (&mut mode, https_addr) {
            // With `https = "…:0"` the real port is only known now.
            *https_port = bound.port();
        }
        let listener = bind(addr, "http").await?;
        tokio::spawn(
            gateway
                .clone()
                .serve_plain(listener, mode, runtime.proxy_protocol),
        );
    }
    if let Some(addr) = runtime.admin {
        let listener = bind(addr, "admin").await?;
        tokio::spawn(admin::serve(listener, gateway.clone()));
    }
    #[cfg(unix)]
    if let Some((reload, hangups)) = reload {
        tokio::spawn(reload.run(hangups, gateway.clone()));
    }
    if let Some(ready) = ready {
        let _ = ready.send(https_addr);
    }
    shutdown_signal().await;
    // Graceful drain: /readyz fails at once (the load balancer stops sending), listeners
    // close, h2 clients get GOAWAY and HTTP/1 clients `Connection: close`, and what is in
    // flight gets up to drain_timeout. A second signal ends it at once.
    eprintln!("pachgate: draining for up to {drain_timeout:?}; a second signal exits now");
    gateway.begin_drain();
    tokio::select! {
        _ = gateway.drained() => eprintln!("pachgate: drained; exiting"),
        _ = tokio::time::sleep(drain_timeout) => {
            eprintln!("pachgate: drain_timeout reached; closing what is left")
        }
        _ = shutdown_signal() => eprintln!("pachgate: second signal; exiting now"),
    }
    Ok(())
}

/// The re-check behind the file-system watch on certificate files, in case an event is
/// missed (network file systems, for example).
const CERTIFICATE_RECHECK: std::time::Duration = std::time::Duration::from_secs(10);

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for {what} on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // Tests and scripts wait for this line; it is the contract for "ready on this port".
    println!("pachgate: {what} listening on {local}");
    Ok(listener)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

async fn standins(
    pachd: SocketAddr,
    console: SocketAddr,
    auth_inactive: bool,
) -> Result<(), String> {
    let pachd_listener = TcpListener::bind(pachd)
        .await
        .map_err(|e| format!("stand-in pachd on {pachd}: {e}"))?;
    let console_listener = TcpListener::bind(console)
        .await
        .map_err(|e| format!("stand-in console on {console}: {e}"))?;
    println!(
        "pachgate: standin-pachd listening on {}",
        pachd_listener.local_addr().map_err(|e| e.to_string())?
    );
    println!(
        "pachgate: standin-console listening on {}",
        console_listener.local_addr().map_err(|e| e.to_string())?
    );
    let options = pachgate_standins::PachdOptions {
        auth_active: !auth_inactive,
        ..Default::default()
    };
    tokio::spawn(pachgate_standins::serve_pachd(pachd_listener, options));
    tokio::spawn(pachgate_standins::serve_console(console_listener));
    shutdown_signal().await;
    Ok(())
}

fn generate_cert(out: &std::path::Path, hosts: &[String]) -> ExitCode {
    match pachgate_tls::generate_into(out, hosts) {
        Ok(paths) => {
            let fingerprint = pachgate_tls::fingerprint_sha256(&paths.ca_cert)
                .unwrap_or_else(|e| format!("(unavailable: {e})"));
            println!("CA certificate:   {}", paths.ca_cert.display());
            println!("CA key:           {}", paths.ca_key.display());
            println!("leaf certificate: {}", paths.cert.display());
            println!("leaf key:         {}", paths.key.display());
            println!("hosts:            {}", hosts.join(", "));
            println!("CA SHA-256:       {fingerprint}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

mod admin {
    //! The admin listener's liveness and readiness probes.
    use std::convert::Infallible;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{Request, Response, StatusCode};
    use http_body_util::Full;
    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use pachgate_proxy_core::Gateway;
    use tokio::net::TcpListener;

    fn answer(path: &str, draining: bool) -> Response<Full<Bytes>> {
        let (status, body) = match path {
            "/healthz" => (StatusCode::OK, "ok\n"),
            // Listeners are bound before this one and the config is loaded; a draining
            // instance must leave the load balancer's rotation.
            "/readyz" if draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            "/readyz" => (StatusCode::OK, "ready\n"),
            _ => (StatusCode::NOT_FOUND, "not found\n"),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response
    }

    pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let gateway = gateway.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let response = answer(request.uri().path(), gateway.is_draining());
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    }
}
