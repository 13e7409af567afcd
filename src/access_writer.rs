//! The access log's way to stdout, built so that a line costs a proxy worker a format into a
//! reused buffer and one copy under an uncontended lock: no allocation, no system call and no
//! wake-up of another thread per line.
//!
//! Workers append whole lines to a shared byte buffer; the writer thread swaps the buffer
//! out every [`FLUSH_INTERVAL`] and writes it to stdout in one go. When stdout stalls and
//! [`BUFFER_LIMIT`] bytes wait, further lines are dropped and counted, never waited for.
//! [`Guard`] writes out what is left when it is dropped at the end of `main`.
//!
//! tracing-appender's non-blocking writer was the first choice and measured at twice the
//! proxy CPU per gRPC unary call of the log off (benches/README.md): it allocates each line
//! and wakes its writer thread for each one (a futex call and a context switch per line), and
//! tracing-subscriber's JSON formatter goes through serde and `fmt` adapters. Here the JSON
//! line is written directly ([`JsonLayer`]), with the same fields in the same order.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::field::{Field, Visit};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

/// How often the writer thread takes what the workers appended (the log's latency).
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes waiting for stdout before lines are dropped: tens of thousands of lines, seconds of
/// a stalled pipe at the rates one pachgate serves.
const BUFFER_LIMIT: usize = 16 << 20;
/// Buffer capacity the writer keeps between batches; a larger one (after a burst) is freed.
const KEEP_CAPACITY: usize = 1 << 20;
/// How long the guard waits at exit for a stalled stdout to take the rest.
const EXIT_WAIT: Duration = Duration::from_secs(5);

struct Pending {
    lines: Vec<u8>,
    closed: bool,
}

/// Shared by the workers (appending) and the writer thread (taking).
pub struct Sink {
    pending: Mutex<Pending>,
    closing: Condvar,
    dropped: AtomicU64,
}

impl Sink {
    /// Appends one whole line (newline included), or counts it dropped when too much waits.
    fn push(&self, line: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if pending.lines.len() + line.len() > BUFFER_LIMIT {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.lines.extend_from_slice(line);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Writes out what is left when dropped.
pub struct Guard {
    sink: Arc<Sink>,
    done: mpsc::Receiver<()>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.sink
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .closed = true;
        self.sink.closing.notify_all();
        let _ = self.done.recv_timeout(EXIT_WAIT);
    }
}

/// Starts the writer thread on stdout.
pub fn start() -> (Arc<Sink>, Guard) {
    let sink = Arc::new(Sink {
        pending: Mutex::new(Pending {
            lines: Vec::with_capacity(64 * 1024),
            closed: false,
        }),
        closing: Condvar::new(),
        dropped: AtomicU64::new(0),
    });
    let (done_tx, done) = mpsc::channel();
    let writer = sink.clone();
    std::thread::Builder::new()
        .name("pachgate-access-log".into())
        .spawn(move || {
            write_batches(&writer);
            let _ = done_tx.send(());
        })
        .expect("the access-log writer thread starts");
    (sink.clone(), Guard { sink, done })
}

fn write_batches(sink: &Sink) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        let closed = {
            let mut pending = sink.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !pending.closed {
                pending = sink
                    .closing
                    .wait_timeout(pending, FLUSH_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            pending.closed
        };
        if !batch.is_empty() {
            // A failed write (stdout closed) loses this batch; there is nowhere to say so.
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(&batch).and_then(|()| stdout.flush());
        }
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::with_capacity(64 * 1024);
        }
        if closed {
            return;
        }
    }
}

/// The access log's writer for tracing-subscriber's text format (one `write` per line).
#[derive(Clone)]
pub struct SinkWriter(pub Arc<Sink>);

impl std::io::Write for SinkWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for SinkWriter {
    type Writer = SinkWriter;
    fn make_writer(&'a self) -> SinkWriter {
        self.clone()
    }
}

/// Access events as one JSON object per line: `timestamp`, `level`, then the event's fields
/// in their order (`message` first), as tracing-subscriber's flattened JSON had them.
pub struct JsonLayer(pub Arc<Sink>);

thread_local! {
    static LINE: RefCell<String> = RefCell::new(String::with_capacity(1024));
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

impl<S: tracing::Subscriber> Layer<S> for JsonLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        LINE.with(|line| {
            let Ok(mut line) = line.try_borrow_mut() else {
                return;
            };
            line.clear();
            line.push_str("{\"timestamp\":\"");
            push_timestamp(&mut line, SystemTime::now());
            line.push_str("\",\"level\":\"");
            line.push_str(event.metadata().level().as_str());
            line.push('"');
            event.record(&mut JsonFields(&mut line));
            line.push_str("}\n");
            self.0.push(line.as_bytes());
            if line.capacity() > 64 * 1024 {
                *line = String::with_capacity(1024);
            }
        });
    }
}

struct JsonFields<'a>(&'a mut String);

impl JsonFields<'_> {
    fn key(&mut self, field: &Field) {
        self.0.push_str(",\"");
        push_escaped(self.0, field.name());
        self.0.push_str("\":");
    }
}

impl Visit for JsonFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.key(field);
        self.0.push('"');
        push_escaped(self.0, value);
        self.0.push('"');
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.key(field);
        let _ = write!(self.0, "{value}");
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.key(field);
        self.0.push_str(if value { "true" } else { "false" });
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.key(field);
        if !value.is_finite() {
            self.0.push_str("null");
            return;
        }
        let start = self.0.len();
        let _ = write!(self.0, "{value}");
        // Always a JSON float, as serde_json writes one: `2` would read back as an integer.
        if !self.0[start..].contains(['.', 'e']) {
            self.0.push_str(".0");
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        self.0.push('"');
        let _ = write!(Escaping(self.0), "{value:?}");
        self.0.push('"');
    }
}

/// Escapes what is written through it into a JSON string's contents.
struct Escaping<'a>(&'a mut String);

impl std::fmt::Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        push_escaped(self.0, s);
        Ok(())
    }
}

fn push_escaped(out: &mut String, text: &str) {
    let needs = |b: u8| b == b'"' || b == b'\\' || b < 0x20;
    if !text.bytes().any(needs) {
        out.push_str(text);
        return;
    }
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// RFC 3339 UTC with microseconds, `2026-12-05T23:43:29.069403Z`; the part up to the
/// seconds is formatted once per second per thread.
fn push_timestamp(out: &mut String, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let days = (secs / 86_400) as i64;
            let rest = secs % 86_400;
            let (year, month, day) = civil_from_days(days);
            cached.1.clear();
            let _ = write!(
                cached.1,
                "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                rest / 3600,
                rest / 60 % 60,
                rest % 60
            );
            cached.0 = secs;
        }
        out.push_str(&cached.1);
    });
    let _ = write!(out, ".{:06}Z", since.subsec_micros());
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut out = String::new();
        let at = UNIX_EPOCH + Duration::new(1_796_514_209, 69_403_000);
        push_timestamp(&mut out, at);
        assert_eq!(out, "2026-12-05T23:43:29.069403Z");
        out.clear();
        push_timestamp(&mut out, UNIX_EPOCH + Duration::new(951_782_400, 0));
        assert_eq!(out, "2000-02-29T00:00:00.000000Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn strings_are_escaped_for_json() {
        let mut out = String::new();
        push_escaped(&mut out, "plain ü");
        push_escaped(&mut out, "q\"b\\n\nt\t\u{1}");
        assert_eq!(out, "plain üq\\\"b\\\\n\\nt\\t\\u0001");
    }
}
