//! The `pachgate` binary: command line, config file → typed config, wiring of the crates,
//! signals. Thin by design: it assembles crates, it does not proxy.

mod admin;
mod announce;
mod config;
mod demo;
mod local;
mod serve;
mod signals;
mod workers;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::net::TcpListener;

pub use crate::serve::serve_embedded;
use crate::signals::ShutdownSignals;

/// mimalloc (built with `no_thp`): less CPU per request than glibc's malloc, and no
/// transparent huge pages, which would raise memory per idle connection (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Also run the stand-in S3 gateway (signature-checking) on this address.
        #[arg(long)]
        s3: Option<SocketAddr>,
        #[command(flatten)]
        pachyderm: PachydermStandinArgs,
    },
}

/// The stand-ins' Pachyderm-faithful extras (pachd's auth interceptor, its HTTP server,
/// dex and the OIDC callback), all opt-in.
#[derive(clap::Args)]
struct PachydermStandinArgs {
    /// Enforce tokens on every gRPC method outside pachd's public list, as pachd does.
    #[arg(long)]
    enforce_auth: bool,
    /// Also run pachd's HTTP server (/pfs, /archive, /api, /jsonschema), dex and the OIDC
    /// callback: listeners standin-pachd-http, standin-dex, standin-oidc.
    #[arg(long)]
    pachyderm_http: bool,
    #[arg(long, default_value = "127.0.0.1:0")]
    pachd_http: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    dex: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    oidc: SocketAddr,
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
    // Dropped when main returns, after the runtime and its workers: it writes out every
    // access-log line still queued (graceful stop, demo and local included).
    let _access_log = pachgate_observe::logging::init();
    // Dropped before the access log's guard: the "listening on" lines still queued reach
    // stdout before the process exits.
    let _announcements = announce::Written;
    // A panic is counted and logged once, then ends only the task it happened in: the
    // release build unwinds (Cargo.toml), and every connection, h2 stream and upstream
    // connection runs in a task of its own.
    pachgate_observe::metrics::install_panic_hook();
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
        Command::Serve { config } => {
            match config::read(&config).and_then(|loaded| {
                config::from_bytes(&config, &loaded).map(|runtime| (runtime, loaded))
            }) {
                Ok((runtime, loaded)) => {
                    pachgate_observe::logging::set_access_format(runtime.access_log.into());
                    let file = serve::ConfigFile {
                        path: config,
                        loaded,
                    };
                    // The main thread runs the control plane; serve() starts the proxy workers.
                    run_on(
                        1,
                        async move { serve::serve(runtime, None, Some(file)).await },
                    )
                }
                Err(errors) => report_config_errors(&errors),
            }
        }
        Command::Cert {
            command: CertCommand::Generate { out, hosts },
        } => generate_cert(&out, &hosts),
        // Both serve an embedded config: the proxy work runs on serve()'s workers.
        Command::Demo(args) => run_on(1, demo::run(args)),
        Command::Local(args) => run_on(1, local::run(args)),
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
            s3,
            pachyderm,
        } => run_blocking(None, standins(pachd, console, auth_inactive, s3, pachyderm)),
    }
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
pub(crate) fn worker_threads(configured: Option<usize>) -> Result<usize, String> {
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
    match worker_threads(configured_threads) {
        Ok(threads) => run_on(threads, task),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run_on(threads: usize, task: impl std::future::Future<Output = Result<(), String>>) -> ExitCode {
    // One thread: the current-thread scheduler, cheaper per task for the reasons in
    // src/workers.rs (serve's control plane, a one-thread load generator). More: the
    // multi-thread one (`bench --threads N`).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = match builder.enable_all().build() {
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

async fn standins(
    pachd: SocketAddr,
    console: SocketAddr,
    auth_inactive: bool,
    s3: Option<SocketAddr>,
    pachyderm: PachydermStandinArgs,
) -> Result<(), String> {
    let mut shutdown = ShutdownSignals::register()?;
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
        enforce_auth: pachyderm.enforce_auth,
        record_calls: pachyderm.enforce_auth || pachyderm.pachyderm_http,
        ..Default::default()
    };
    let state = std::sync::Arc::new(pachgate_standins::PachdState::new(options));
    // pachd's HTTP server, dex and the OIDC callback, sharing the gRPC pachd's tokens.
    if pachyderm.pachyderm_http {
        let mut bound = Vec::new();
        for (name, address) in [
            ("standin-pachd-http", pachyderm.pachd_http),
            ("standin-dex", pachyderm.dex),
            ("standin-oidc", pachyderm.oidc),
        ] {
            let listener = TcpListener::bind(address)
                .await
                .map_err(|e| format!("{name} on {address}: {e}"))?;
            println!(
                "pachgate: {name} listening on {}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            bound.push(listener);
        }
        let oidc = bound.pop().expect("three listeners");
        let dex = bound.pop().expect("three listeners");
        let http = bound.pop().expect("three listeners");
        tokio::spawn(pachgate_standins::serve_pachd_http(http, state.clone()));
        tokio::spawn(pachgate_standins::serve_dex(dex, state.clone()));
        tokio::spawn(pachgate_standins::serve_oidc(oidc, state.clone()));
    }
    tokio::spawn(pachgate_standins::serve_pachd_shared(pachd_listener, state));
    tokio::spawn(pachgate_standins::serve_console(console_listener));
    if let Some(s3) = s3 {
        let s3_listener = TcpListener::bind(s3)
            .await
            .map_err(|e| format!("stand-in S3 on {s3}: {e}"))?;
        println!(
            "pachgate: standin-s3 listening on {}",
            s3_listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(pachgate_standins::serve_s3(s3_listener));
    }
    shutdown.recv().await;
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
