//! The access log's way to stdout, built so that a line costs a proxy worker a format in
//! place under an uncontended lock: no allocation, no copy, no system call and no wake-up of
//! another thread per line.
//!
//! This module holds the buffer, the writer thread and the line's layout ([`write_json`]),
//! which share one invariant: room for a line's worst case is reserved under the lock before
//! any piece is stored. The pieces themselves are in `line`, the timestamp in `clock`, and
//! the buffer's warming for the next line in `prefetch`, and the writer thread's way
//! onto stdout (a failing or non-blocking one included) in `output`.
//!
//! Workers format whole lines straight into a shared byte buffer (room for the line's worst
//! case is made first, then each piece is a plain store, strings a word at a time); the
//! writer thread swaps the buffer out every [`FLUSH_INTERVAL`] and writes it to stdout in
//! one go. When stdout stalls and
//! [`BUFFER_LIMIT`] bytes wait, further lines are dropped and counted, never waited for.
//! [`Guard`] writes out what is left when it is dropped at the end of `main`.
//!
//! tracing-appender's non-blocking writer was the first choice and measured at twice the
//! proxy CPU per gRPC unary call of the log off (benches/README.md): it allocates each line
//! and wakes its writer thread for each one (a futex call and a context switch per line), and
//! tracing-subscriber's JSON formatter goes through serde and `fmt` adapters. Here the JSON
//! line is written directly ([`push_json`]), with the same fields in the same order, from the
//! request's record handed over by the proxy (`AccessSink`), not through `tracing`: a
//! `tracing` layer doing the same cost ~10k instructions a line, mostly dispatch, field
//! visits and `fmt`, against ~1k here (benches/README.md).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::{AccessRecord, RequestIdText};
use tracing_subscriber::fmt::MakeWriter;

mod clock;
mod line;
mod output;
mod prefetch;

pub use clock::civil_from_days;
use clock::Clock;
use line::{short_word, Line};
use output::OutputState;
use prefetch::{can_prefetch_for_write, warm_next_room};

/// How often the writer thread takes what the workers appended (the log's latency).
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Bytes waiting for stdout before lines are dropped: tens of thousands of lines, seconds of
/// a stalled pipe at the rates one pachgate serves.
const BUFFER_LIMIT: usize = 16 << 20;
/// The size each buffer starts with.
const INITIAL_ROOM: usize = 64 * 1024;
/// Buffer size the writer keeps between batches; a larger one (after a burst) is freed.
/// Above what 20 ms of lines fill at the rates one worker serves (about 1 MB at 120,000
/// lines/s): a buffer freed after every batch is regrown by the workers, zero-filling fresh
/// memory, at every batch (benches/README.md, fifth round).
const KEEP_CAPACITY: usize = 4 << 20;
/// How long the guard waits at exit for a stalled stdout to take the rest.
const EXIT_WAIT: Duration = Duration::from_secs(5);
/// Room a JSON line needs besides its strings: the keys, six numbers of up to 20 digits,
/// the timestamp, and a word of slack for the last string's word-wide store (with margin).
const LINE_FIXED_ROOM: usize = 1024;

struct Pending {
    /// `lines[..used]` waits for stdout. The rest is initialised room that lines are
    /// formatted into in place: after one room check per line, each piece is a plain store.
    lines: Vec<u8>,
    used: usize,
    clock: Clock,
    closed: bool,
    /// Whether [`warm_next_room`] may prefetch (the CPU has `PREFETCHW`).
    warm: bool,
}

impl Pending {
    fn new() -> Self {
        Pending {
            lines: vec![0; INITIAL_ROOM],
            used: 0,
            clock: Clock::default(),
            closed: false,
            warm: can_prefetch_for_write(),
        }
    }

    /// Makes `room` bytes writable after the waiting lines; `false` when that would take
    /// the waiting bytes past [`BUFFER_LIMIT`], or when the writer has taken its last batch
    /// (the line is to be dropped).
    #[inline]
    fn make_room(&mut self, room: usize) -> bool {
        let end = self.used + room;
        if end > BUFFER_LIMIT || self.closed {
            return false;
        }
        if end > self.lines.len() {
            self.grow(end);
        }
        true
    }

    #[cold]
    fn grow(&mut self, end: usize) {
        let len = end.max((self.lines.len() * 2).min(BUFFER_LIMIT));
        self.lines.resize(len, 0);
    }
}

/// Shared by the workers (appending) and the writer thread (taking).
pub struct Sink {
    pending: Mutex<Pending>,
    closing: Condvar,
    dropped: AtomicU64,
}

impl Sink {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends one whole line (newline included), or counts it dropped when too much waits.
    pub fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if !pending.make_room(line.len()) {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let at = pending.used;
        pending.lines[at..at + line.len()].copy_from_slice(line);
        pending.used += line.len();
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
        self.sink.lock().closed = true;
        self.sink.closing.notify_all();
        if self.done.recv_timeout(EXIT_WAIT).is_err() {
            // stdout has not taken the last batch in time; the process exits without it.
            let _ = writeln!(
                std::io::stderr(),
                "pachgate: stdout did not take the access log's last lines within {}s; \
                 they are lost",
                EXIT_WAIT.as_secs()
            );
        }
        // The counter is in /metrics, which nobody scrapes once the process is gone.
        let dropped = self.sink.dropped();
        if dropped > 0 {
            let _ = writeln!(
                std::io::stderr(),
                "pachgate: {dropped} access-log lines were dropped in this run (stdout fell \
                 behind or failed)"
            );
        }
    }
}

/// Starts the writer thread on stdout.
pub fn start() -> (Arc<Sink>, Guard) {
    let sink = Arc::new(Sink {
        pending: Mutex::new(Pending::new()),
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
    let mut batch = vec![0; INITIAL_ROOM];
    let mut output = OutputState::default();
    loop {
        let (used, closed) = {
            let mut pending = sink.lock();
            if !pending.closed {
                pending = sink
                    .closing
                    .wait_timeout(pending, FLUSH_INTERVAL)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            std::mem::swap(&mut pending.lines, &mut batch);
            (std::mem::take(&mut pending.used), pending.closed)
        };
        if used > 0 {
            let lost = output.put(&mut std::io::stdout().lock(), &batch[..used]);
            if lost > 0 {
                sink.dropped.fetch_add(lost, Ordering::Relaxed);
            }
        }
        if batch.len() > KEEP_CAPACITY {
            batch = vec![0; INITIAL_ROOM];
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

/// Appends one access record as a JSON object line: `timestamp`, `level`, `message`, then the
/// record's fields in their order, `None`s left out — as tracing-subscriber's flattened JSON
/// had them. Formatted straight into the shared buffer under its lock, without `fmt`.
pub fn push_json(sink: &Sink, record: &AccessRecord<'_>) {
    let mut pending = sink.lock();
    if !write_json(&mut pending, record) {
        drop(pending);
        sink.dropped.fetch_add(1, Ordering::Relaxed);
    }
}

/// Formats the line after the waiting ones; `false` when there is no room for it.
fn write_json(pending: &mut Pending, r: &AccessRecord<'_>) -> bool {
    // The connection's shared fields as its first line rendered them, when they still apply.
    let memo = r.connection.get::<SharedFields>();
    let shared = memo.filter(|shared| shared.apply_to(r));
    let shared_room = match shared {
        Some(shared) => shared.json.len(),
        None => {
            6 * (r.client.len()
                + r.user_agent.map_or(0, str::len)
                + r.authority.map_or(0, str::len)
                + r.route.map_or(0, str::len)
                + r.upstream.map_or(0, str::len))
        }
    };
    let strings = r.method.len()
        + r.path.len()
        + r.protocol.len()
        + r.kind.len()
        + r.upstream_protocol.map_or(0, str::len)
        + r.grpc_message.map_or(0, str::len)
        + r.pachctl_command.map_or(0, str::len)
        + r.request_id.map_or(0, |id| id.as_bytes().len());
    // An escape is at most six bytes (`\u001f`) for one.
    let room = LINE_FIXED_ROOM + 6 * strings + shared_room;
    if !pending.make_room(room) {
        return false;
    }
    let micros = pending.clock.micros_at(r.ended);
    let stamp = pending.clock.stamp(micros);
    let start = pending.used;
    let mut out = Line {
        buf: &mut pending.lines[start..start + room],
        at: 0,
    };
    out.literal(b"{\"timestamp\":\"");
    out.literal(&stamp);
    // The method is an HTTP token (`http` refuses anything else): nothing to escape.
    debug_assert!(!r
        .method
        .bytes()
        .any(|b| b < 0x20 || b == b'"' || b == b'\\'));
    out.literal(b"\",\"level\":\"INFO\",\"message\":\"access\",\"method\":\"");
    out.bytes(r.method.as_bytes());
    out.literal(b"\",\"path\":\"");
    out.escaped(r.path.as_bytes());
    out.protocol_fields(r.protocol, r.kind);
    if let Some(value) = r.upstream_protocol {
        // One of our protocol names.
        out.raw_field(b",\"upstream_protocol\":\"", value);
    }
    out.literal(b",\"status\":");
    out.number(u64::from(r.status));
    if let Some(value) = r.grpc_status {
        out.literal(b",\"grpc_status\":");
        out.number(u64::from(value));
    }
    if let Some(value) = r.grpc_message {
        out.str_field(b",\"grpc_message\":\"", value);
    }
    if let Some(value) = r.pachctl_command {
        out.str_field(b",\"pachctl_command\":\"", value);
    }
    // As the f64 `micros / 1000.0` printed: shortest digits, always with a fraction.
    let micros = r.duration.as_micros().min(u128::from(u64::MAX)) as u64;
    out.literal(b",\"duration_ms\":");
    out.number(micros / 1000);
    out.fraction(micros % 1000);
    out.literal(b",\"bytes_received\":");
    out.number(r.bytes_received);
    out.literal(b",\"bytes_sent\":");
    out.number(r.bytes_sent);
    match shared {
        Some(shared) => out.bytes(&shared.json),
        None => {
            let start = out.at;
            // `ip:port` as the standard library prints a socket address.
            out.raw_field(b",\"client\":\"", r.client);
            if let Some(value) = r.user_agent {
                out.str_field(b",\"user_agent\":\"", value);
            }
            if let Some(value) = r.authority {
                out.str_field(b",\"authority\":\"", value);
            }
            if let Some(value) = r.route {
                out.str_field(b",\"route\":\"", value);
            }
            if let Some(value) = r.upstream {
                out.str_field(b",\"upstream\":\"", value);
            }
            if memo.is_none() {
                r.connection.set(SharedFields {
                    user_agent: r.user_agent.map(Into::into),
                    authority: r.authority.map(Into::into),
                    route: r.route.map(Into::into),
                    upstream: r.upstream.map(Into::into),
                    json: out.buf[start..out.at].into(),
                });
            }
        }
    }
    match r.request_id {
        Some(RequestIdText::Made(digits)) => {
            out.literal(b",\"request_id\":\"");
            out.literal(digits);
            out.literal(b"\"}\n");
        }
        // Visible ASCII: valid UTF-8, though a client's may hold `"` or `\`.
        Some(RequestIdText::Sent(value)) => {
            out.literal(b",\"request_id\":\"");
            out.escaped(value);
            out.literal(b"\"}\n");
        }
        None => out.literal(b"}\n"),
    }
    debug_assert!(out.at + 8 <= room, "the line outgrew its room");
    pending.used += out.at;
    if pending.warm {
        warm_next_room(&pending.lines, pending.used);
    }
    true
}

/// The part of a line from `client` to `upstream` as a connection's first line had it, and
/// the values it was made from: the client is the connection's, and the user agent,
/// authority, route and upstream are nearly always the same on all of a connection's
/// requests, so later lines compare four strings instead of escaping five.
struct SharedFields {
    user_agent: Option<Box<str>>,
    authority: Option<Box<str>>,
    route: Option<Box<str>>,
    upstream: Option<Box<str>>,
    json: Box<[u8]>,
}

impl SharedFields {
    #[inline]
    fn apply_to(&self, r: &AccessRecord<'_>) -> bool {
        same(self.user_agent.as_deref(), r.user_agent)
            && same(self.authority.as_deref(), r.authority)
            && same(self.route.as_deref(), r.route)
            && same(self.upstream.as_deref(), r.upstream)
    }
}

/// Equal strings, compared a word at a time (these are short: a call to `memcmp` would
/// cost more than the comparison).
#[inline(always)]
fn same(a: Option<&str>, b: Option<&str>) -> bool {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a.as_bytes(), b.as_bytes()),
        (a, b) => return a.is_none() && b.is_none(),
    };
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n < 8 {
        return short_word(a) == short_word(b);
    }
    let word = |text: &[u8], at: usize| {
        u64::from_le_bytes(text[at..at + 8].try_into().expect("eight bytes"))
    };
    let mut differ = word(a, n - 8) ^ word(b, n - 8);
    let mut at = 0;
    while at + 8 < n {
        differ |= word(a, at) ^ word(b, at);
        at += 8;
    }
    differ == 0
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::ConnectionMemo;

    /// The record's line with the wall clock at `at` when the record ended.
    fn json_line(record: &AccessRecord<'_>, at: SystemTime) -> String {
        let mut pending = Pending::new();
        let wall = at.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        pending.clock.anchor = Some((record.ended, wall));
        assert!(write_json(&mut pending, record));
        String::from_utf8(pending.lines[..pending.used].to_vec()).unwrap()
    }

    #[test]
    fn a_connections_later_lines_reuse_its_shared_fields_only_while_they_apply() {
        let at = UNIX_EPOCH + Duration::new(1_796_514_209, 69_403_000);
        let memo: &'static ConnectionMemo = Box::leak(Box::new(ConnectionMemo::new()));
        let fresh = |r: &AccessRecord<'_>| {
            let mut alone = AccessRecord { ..*r };
            alone.connection = Box::leak(Box::new(ConnectionMemo::new()));
            json_line(&alone, at)
        };
        let mut first = record(Duration::from_micros(5));
        first.connection = memo;
        json_line(&first, at);
        assert!(
            memo.get::<SharedFields>().is_some(),
            "the first line sets the memo"
        );
        // Each of the four compared fields changed (value, length, presence), then as before.
        let mut variants = Vec::new();
        for change in 0..9 {
            let mut r = record(Duration::from_micros(7));
            r.connection = memo;
            match change {
                0 => r.user_agent = Some("grpc-go/1.3"),
                1 => r.user_agent = None,
                2 => r.authority = Some("pachd.example:443"),
                3 => r.route = Some("pachd\"x"),
                4 => r.route = None,
                5 => r.upstream = Some("10.0.0.9:1651"),
                6 => r.upstream = Some("10.0.0.9:16500"),
                7 => r.client = "10.0.0.7:50123",
                _ => r.path = "/other",
            }
            variants.push(r);
        }
        for r in &variants {
            assert_eq!(json_line(r, at), fresh(r));
        }
        let line: serde_json::Value = serde_json::from_str(&json_line(&variants[3], at)).unwrap();
        assert_eq!(line["route"], "pachd\"x");
        assert_eq!(line["upstream"], "10.0.0.9:1650");
        assert!(same(Some("abcdefghijk"), Some("abcdefghijk")));
        assert!(!same(Some("abcdefghijk"), Some("abcdefghijj")));
        assert!(!same(Some("xbcdefghijk"), Some("abcdefghijk")));
        assert!(!same(Some("abc"), Some("abd")));
        assert!(!same(Some(""), None));
        assert!(same(None, None));
    }

    fn record(duration: Duration) -> AccessRecord<'static> {
        AccessRecord {
            method: "POST",
            path: "/pfs_v2.API/ListRepo",
            protocol: "HTTP/2",
            kind: "grpc",
            upstream_protocol: Some("h2c"),
            status: 200,
            grpc_status: Some(5),
            grpc_message: Some("repo \"x\" not found"),
            pachctl_command: None,
            duration,
            ended: Instant::now(),
            bytes_received: 5,
            bytes_sent: 1_234_567,
            client: "10.0.0.7:50123",
            connection: Box::leak(Box::new(ConnectionMemo::new())),
            user_agent: Some("grpc-go/1.2"),
            authority: None,
            route: Some("pachd"),
            upstream: Some("10.0.0.9:1650"),
            request_id: Some(RequestIdText::Sent(b"abc")),
        }
    }

    #[test]
    fn json_lines_have_the_tracing_layout_and_floats_as_f64_printed_them() {
        let at = UNIX_EPOCH + Duration::new(1_796_514_209, 69_403_000);
        assert_eq!(
            json_line(&record(Duration::from_micros(92_288)), at),
            "{\"timestamp\":\"2026-12-05T23:43:29.069403Z\",\"level\":\"INFO\",\
             \"message\":\"access\",\"method\":\"POST\",\"path\":\"/pfs_v2.API/ListRepo\",\
             \"protocol\":\"HTTP/2\",\"kind\":\"grpc\",\"upstream_protocol\":\"h2c\",\
             \"status\":200,\"grpc_status\":5,\"grpc_message\":\"repo \\\"x\\\" not found\",\
             \"duration_ms\":92.288,\"bytes_received\":5,\"bytes_sent\":1234567,\
             \"client\":\"10.0.0.7:50123\",\"user_agent\":\"grpc-go/1.2\",\"route\":\"pachd\",\
             \"upstream\":\"10.0.0.9:1650\",\"request_id\":\"abc\"}\n"
        );
        for micros in [
            0,
            1,
            10,
            100,
            999,
            1000,
            1500,
            2000,
            12_340,
            7_000_001,
            3_600_000_000,
        ] {
            let line = json_line(&record(Duration::from_micros(micros)), at);
            let shown = line.split("\"duration_ms\":").nth(1).unwrap();
            let shown = &shown[..shown.find(',').unwrap()];
            // What the tracing layer wrote: the f64's Display, `.0` added when it had no dot.
            let mut old = format!("{}", micros as f64 / 1000.0);
            if !old.contains('.') {
                old.push_str(".0");
            }
            assert_eq!(shown, old, "{micros}");
        }
        let mut v6 = record(Duration::ZERO);
        v6.client = "[::1]:443";
        v6.protocol = "HTTP/3\"";
        v6.kind = "grpc";
        let line: serde_json::Value = serde_json::from_str(&json_line(&v6, at)).unwrap();
        assert_eq!(line["client"], "[::1]:443");
        assert_eq!(line["protocol"], "HTTP/3\"");
        assert_eq!(line["kind"], "grpc");
        let mut quoted = record(Duration::ZERO);
        quoted.request_id = Some(RequestIdText::Sent(b"a\"b\\c"));
        let line: serde_json::Value = serde_json::from_str(&json_line(&quoted, at)).unwrap();
        assert_eq!(line["request_id"], "a\"b\\c");
        let mut made = record(Duration::ZERO);
        made.request_id = Some(RequestIdText::Made(b"0123456789abcdef0123456789abcdef"));
        let text = json_line(&made, at);
        assert!(
            text.ends_with(",\"request_id\":\"0123456789abcdef0123456789abcdef\"}\n"),
            "{text}"
        );
        let line: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(line["request_id"], "0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn lines_after_the_last_batch_are_counted_as_dropped() {
        let sink = Sink {
            pending: Mutex::new(Pending::new()),
            closing: Condvar::new(),
            dropped: AtomicU64::new(0),
        };
        sink.push(b"kept\n");
        sink.lock().closed = true;
        sink.push(b"too late\n");
        assert_eq!(sink.dropped(), 1);
        let pending = sink.lock();
        assert_eq!(&pending.lines[..pending.used], b"kept\n");
    }
}
