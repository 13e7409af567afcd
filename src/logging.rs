//! Log output: diagnostics (filtered by `PACHGATE_LOG`) to stderr, and the access log — one
//! line per request or tunnel, JSON or text as the config says — to stdout.

use std::sync::atomic::{AtomicU8, Ordering};

use tracing::subscriber::Interest;
use tracing_subscriber::filter::{DynFilterFn, EnvFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

use crate::config::AccessLog;

const ACCESS_TARGET: &str = "pachgate::access";

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

pub fn init() {
    let diagnostics_filter = EnvFilter::try_from_env("PACHGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info"))
        .add_directive(
            format!("{ACCESS_TARGET}=off")
                .parse()
                .expect("a valid directive"),
        );
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
        .with_writer(std::io::stdout)
        .with_filter(access_filter(AccessLog::Json));
    let text = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stdout().is_terminal())
        .with_target(false)
        .with_writer(std::io::stdout)
        .with_filter(access_filter(AccessLog::Text));
    tracing_subscriber::registry()
        .with(diagnostics)
        .with(json)
        .with(text)
        .init();
}
