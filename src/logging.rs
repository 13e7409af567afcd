//! Log output: diagnostics (filtered by `PACHGATE_LOG`) to stderr, and the access log — one
//! line per request or tunnel, JSON or text as the config says — to stdout.
//!
//! The access log is on by default, so a line must cost a proxy worker next to nothing: the
//! worker formats it and hands it to a bounded queue (tracing-appender's non-blocking
//! writer); one thread of its own writes the queue to stdout in batches. When stdout cannot
//! keep up and the queue is full, lines are dropped and counted
//! (`pachgate_access_log_dropped_total`) rather than stalling requests. The guard that
//! [`init`] returns flushes the queue when dropped, at the end of `main`.

use std::io::BufWriter;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use tracing::subscriber::Interest;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::AccessLog;

const ACCESS_TARGET: &str = "pachgate::access";
/// Lines the access-log queue holds before it drops: about a second of traffic at tens of
/// thousands of requests per second, some 15 MB of backlog at most (~450-byte lines).
const ACCESS_QUEUE_LINES: usize = 32 * 1024;
/// The writer thread's buffer: the lines it finds queued go to stdout together, flushed
/// whenever the queue runs empty (stdout is line-buffered, so whole lines pass straight on).
const ACCESS_WRITE_BUFFER: usize = 64 * 1024;

/// The access-log writer's count of dropped lines, once [`init`] has run.
static ACCESS_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// The access-log format now in force (reload may change it); JSON until a config says.
static ACCESS_FORMAT: AtomicU8 = AtomicU8::new(0);

fn format_code(format: AccessLog) -> u8 {
    match format {
        AccessLog::Json => 0,
        AccessLog::Text => 1,
        AccessLog::Off => 2,
    }
}

pub fn set_access_format(format: AccessLog) {
    ACCESS_FORMAT.store(format_code(format), Ordering::Relaxed);
}

/// Enables access events for one format, decided per event so a reload can switch formats.
fn access_filter<S: tracing::Subscriber>(
    format: AccessLog,
) -> impl tracing_subscriber::layer::Filter<S> {
    let code = format_code(format);
    DynFilterFn::new(move |metadata, _| {
        metadata.target() == ACCESS_TARGET && ACCESS_FORMAT.load(Ordering::Relaxed) == code
    })
    .with_callsite_filter(|metadata| {
        if metadata.target() == ACCESS_TARGET {
            Interest::sometimes()
        } else {
            Interest::never()
        }
    })
}

/// Access-log lines dropped so far because the writer thread fell behind.
pub fn access_log_dropped() -> u64 {
    ACCESS_DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

/// Installs the subscriber. Keep the returned guard until the process ends: dropping it
/// writes out every queued access-log line.
#[must_use = "dropping the guard stops the access-log writer"]
pub fn init() -> WorkerGuard {
    let diagnostics_filter = EnvFilter::try_from_env("PACHGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{ACCESS_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    let (access_writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(ACCESS_QUEUE_LINES)
        .thread_name("pachgate-access-log")
        .finish(BufWriter::with_capacity(
            ACCESS_WRITE_BUFFER,
            std::io::stdout(),
        ));
    let _ = ACCESS_DROPPED.set(access_writer.error_counter());
    use std::io::IsTerminal;
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(diagnostics_filter);
    let json = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_writer(access_writer.clone())
        .with_filter(access_filter(AccessLog::Json));
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_writer(access_writer)
        .with_filter(access_filter(AccessLog::Text));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(json)
        .with(text)
        .init();
    guard
}
