//! Log output: diagnostics (filtered by `PACHGATE_LOG`) to stderr, and the access log — one
//! line per request or tunnel, JSON or text as the config says — to stdout.
//!
//! The access log is on by default, so a line must cost a proxy worker next to nothing: the
//! worker formats a JSON line itself (handed the record by the proxy, not through `tracing`)
//! straight into a shared buffer; a thread of its own
//! writes that to stdout in batches (`access_writer`). When stdout cannot keep up, lines
//! are dropped and counted (`pachgate_access_log_dropped_total`) rather than stalling
//! requests. The guard that [`init`] returns writes out the rest when dropped, at the end of
//! `main`.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use tracing::subscriber::Interest;
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::access_writer::{self, Sink, SinkWriter};
use crate::{AccessRecord, AccessSink};

/// The access log's format, as the config's `log.access` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccessFormat {
    Json,
    Text,
    Off,
}

const ACCESS_TARGET: &str = "pachgate::access";
/// The access log's buffer, once [`init`] has run.
static ACCESS_SINK: OnceLock<Arc<Sink>> = OnceLock::new();

/// The access-log format now in force (reload may change it); JSON until a config says.
static ACCESS_FORMAT: AtomicU8 = AtomicU8::new(0);

fn format_code(format: AccessFormat) -> u8 {
    match format {
        AccessFormat::Json => 0,
        AccessFormat::Text => 1,
        AccessFormat::Off => 2,
    }
}

pub fn set_access_format(format: AccessFormat) {
    ACCESS_FORMAT.store(format_code(format), Ordering::Relaxed);
}

/// Enables access events for one format, decided per event so a reload can switch formats.
fn access_filter<S: tracing::Subscriber>(
    format: AccessFormat,
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

/// Writes JSON access lines straight into the sink; the text format goes through `tracing`.
struct JsonAccess(Arc<Sink>);

impl AccessSink for JsonAccess {
    fn record(&self, record: &AccessRecord<'_>) -> bool {
        if ACCESS_FORMAT.load(Ordering::Relaxed) != format_code(AccessFormat::Json) {
            return false;
        }
        access_writer::push_json(&self.0, record);
        true
    }
}

/// Access-log lines dropped so far because the writer thread fell behind.
pub fn access_log_dropped() -> u64 {
    ACCESS_SINK.get().map_or(0, |sink| sink.dropped())
}

/// Installs the subscriber. Keep the returned guard until the process ends: dropping it
/// writes out every waiting access-log line.
#[must_use = "dropping the guard stops the access-log writer"]
pub fn init() -> access_writer::Guard {
    let diagnostics_filter = EnvFilter::try_from_env("PACHGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{ACCESS_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
    let (sink, guard) = access_writer::start();
    let _ = ACCESS_SINK.set(sink.clone());
    use std::io::IsTerminal;
    let diagnostics = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .with_filter(diagnostics_filter);
    crate::set_access_sink(Box::new(JsonAccess(sink.clone())));
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_writer(SinkWriter(sink))
        .with_filter(access_filter(AccessFormat::Text));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(text)
        .init();
    guard
}
