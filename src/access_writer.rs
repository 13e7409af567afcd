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
//! line is written directly ([`push_json`]), with the same fields in the same order, from the
//! request's record handed over by the proxy (`AccessSink`), not through `tracing`: a
//! `tracing` layer doing the same cost ~10k instructions a line, mostly dispatch, field
//! visits and `fmt`, against ~2k here (benches/README.md).

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pachgate_proxy_core::exchange::AccessRecord;
use tracing_subscriber::fmt::MakeWriter;

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
    pub fn push(&self, line: &[u8]) {
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

thread_local! {
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(1024));
    /// The last second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends one access record as a JSON object line: `timestamp`, `level`, `message`, then the
/// record's fields in their order, `None`s left out — as tracing-subscriber's flattened JSON
/// had them. Written byte by byte into a reused per-thread buffer, without `fmt`.
pub fn push_json(sink: &Sink, record: &AccessRecord<'_>) {
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else {
            return;
        };
        line.clear();
        write_json(&mut line, record, SystemTime::now());
        sink.push(&line);
        if line.capacity() > 64 * 1024 {
            *line = Vec::with_capacity(1024);
        }
    });
}

fn write_json(out: &mut Vec<u8>, r: &AccessRecord<'_>, now: SystemTime) {
    out.reserve(512);
    out.extend_from_slice(b"{\"timestamp\":\"");
    push_timestamp(out, now);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"access\"");
    // The method is an HTTP token (`http` refuses anything else): nothing to escape.
    push_raw_field(out, b",\"method\":\"", r.method);
    push_str_field(out, b",\"path\":\"", r.path);
    // Our own words, never escaped: one copy for the three.
    out.extend_from_slice(protocol_fields(r.protocol, r.kind).as_bytes());
    if let Some(value) = r.upstream_protocol {
        // One of our protocol names.
        push_raw_field(out, b",\"upstream_protocol\":\"", value);
    }
    out.extend_from_slice(b",\"status\":");
    push_u64(out, u64::from(r.status));
    if let Some(value) = r.grpc_status {
        out.extend_from_slice(b",\"grpc_status\":");
        push_u64(out, u64::from(value));
    }
    if let Some(value) = r.grpc_message {
        push_str_field(out, b",\"grpc_message\":\"", value);
    }
    if let Some(value) = r.pachctl_command {
        push_str_field(out, b",\"pachctl_command\":\"", value);
    }
    // As the f64 `micros / 1000.0` printed: shortest digits, always with a fraction.
    let micros = r.duration.as_micros().min(u128::from(u64::MAX)) as u64;
    out.extend_from_slice(b",\"duration_ms\":");
    push_u64(out, micros / 1000);
    out.push(b'.');
    let mut frac = micros % 1000;
    if frac == 0 {
        out.push(b'0');
    } else {
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        push_padded(out, frac, digits);
    }
    out.extend_from_slice(b",\"bytes_received\":");
    push_u64(out, r.bytes_received);
    out.extend_from_slice(b",\"bytes_sent\":");
    push_u64(out, r.bytes_sent);
    // `ip:port` as the standard library prints a socket address.
    push_raw_field(out, b",\"client\":\"", r.client);
    for (key, value) in [
        (&b",\"user_agent\":\""[..], r.user_agent),
        (b",\"authority\":\"", r.authority),
        (b",\"route\":\"", r.route),
        (b",\"upstream\":\"", r.upstream),
        (b",\"request_id\":\"", r.request_id),
    ] {
        if let Some(value) = value {
            push_str_field(out, key, value);
        }
    }
    out.extend_from_slice(b"}\n");
}

/// `,"protocol":"…","kind":"…"` as one static copy for the values the proxy reports.
fn protocol_fields(protocol: &str, kind: &str) -> std::borrow::Cow<'static, str> {
    macro_rules! pair {
        ($protocol:literal, $kind:literal) => {
            concat!(",\"protocol\":\"", $protocol, "\",\"kind\":\"", $kind, "\"")
        };
    }
    let fields = match (protocol, kind) {
        ("HTTP/2", "grpc") => pair!("HTTP/2", "grpc"),
        ("HTTP/2", "http") => pair!("HTTP/2", "http"),
        ("HTTP/2", "websocket") => pair!("HTTP/2", "websocket"),
        ("HTTP/1.1", "grpc") => pair!("HTTP/1.1", "grpc"),
        ("HTTP/1.1", "http") => pair!("HTTP/1.1", "http"),
        ("HTTP/1.1", "websocket") => pair!("HTTP/1.1", "websocket"),
        ("HTTP/1.0", "http") => pair!("HTTP/1.0", "http"),
        _ => {
            let mut out = Vec::new();
            push_str_field(&mut out, b",\"protocol\":\"", protocol);
            push_str_field(&mut out, b",\"kind\":\"", kind);
            return String::from_utf8(out)
                .expect("escaped UTF-8 stays UTF-8")
                .into();
        }
    };
    fields.into()
}

/// `prefix` is the field's `,"key":"` (keys are ours: nothing to escape).
#[inline(always)]
fn push_str_field(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    out.extend_from_slice(prefix);
    push_escaped(out, value);
    out.push(b'"');
}

/// A value that cannot hold a byte JSON escapes (checked in debug builds).
#[inline(always)]
fn push_raw_field(out: &mut Vec<u8>, prefix: &[u8], value: &str) {
    debug_assert!(
        !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
        "{value:?} needs escaping"
    );
    out.extend_from_slice(prefix);
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// "00" to "99", for writing numbers two digits per division.
const DIGIT_PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

fn push_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    while value >= 100 {
        let pair = (value % 100) as usize * 2;
        value /= 100;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if value >= 10 {
        let pair = value as usize * 2;
        at -= 2;
        digits[at..at + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        digits[at] = b'0' + value as u8;
    }
    out.extend_from_slice(&digits[at..]);
}

/// `value` in exactly `width` digits, zeros in front.
fn push_padded(out: &mut Vec<u8>, mut value: u64, width: usize) {
    let start = out.len();
    out.resize(start + width, b'0');
    for at in (start..start + width).rev() {
        out[at] = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

/// The contents of a JSON string: `"`, `\\` and control characters escaped, runs of other
/// bytes (UTF-8 included) copied whole.
fn push_escaped(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    // Most values need no escape: checked eight bytes at a time, the tail padded with
    // spaces, and then copied in one go.
    let mut words = bytes.chunks_exact(8);
    let mut clean = 0;
    for word in &mut words {
        if needs_escape(u64::from_le_bytes(word.try_into().expect("eight bytes"))) {
            break;
        }
        clean += 8;
    }
    let tail = words.remainder();
    if clean + tail.len() == bytes.len() {
        // Spaces with the tail's bytes XORed in (a copy here would be a memcpy call).
        let mut padded = u64::from_le_bytes([b' '; 8]);
        for (i, &byte) in tail.iter().enumerate() {
            padded ^= u64::from(byte ^ b' ') << (8 * i);
        }
        if !needs_escape(padded) {
            out.extend_from_slice(bytes);
            return;
        }
    }
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate().skip(clean) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        run = i + 1;
    }
    out.extend_from_slice(&bytes[run..]);
}

/// Whether any of the eight bytes is below 0x20, `"` or `\\` (the classic "has a byte less
/// than n" and "has a zero byte" bit tricks; exact as to whether one exists).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    (control
        | has_zero(word ^ (ONES * u64::from(b'"')))
        | has_zero(word ^ (ONES * u64::from(b'\\'))))
        != 0
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// RFC 3339 UTC with microseconds, `2026-12-05T23:43:29.069403Z`; the part up to the
/// seconds is formatted once per second per thread.
fn push_timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != secs {
            let days = (secs / 86_400) as i64;
            let rest = secs % 86_400;
            let (year, month, day) = civil_from_days(days);
            cached.1.clear();
            let _ = std::fmt::Write::write_fmt(
                &mut cached.1,
                format_args!(
                    "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
                    rest / 3600,
                    rest / 60 % 60,
                    rest % 60
                ),
            );
            cached.0 = secs;
        }
        out.extend_from_slice(cached.1.as_bytes());
    });
    out.push(b'.');
    push_padded(out, u64::from(since.subsec_micros()), 6);
    out.push(b'Z');
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
        let mut out = Vec::new();
        let at = UNIX_EPOCH + Duration::new(1_796_514_209, 69_403_000);
        push_timestamp(&mut out, at);
        assert_eq!(out, b"2026-12-05T23:43:29.069403Z");
        out.clear();
        push_timestamp(&mut out, UNIX_EPOCH + Duration::new(951_782_400, 0));
        assert_eq!(out, b"2000-02-29T00:00:00.000000Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        for value in [
            0,
            7,
            10,
            99,
            100,
            101,
            999,
            1000,
            65_535,
            1_234_567,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_u64(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn strings_are_escaped_for_json() {
        let mut out = Vec::new();
        push_escaped(&mut out, "plain ü");
        push_escaped(&mut out, "q\"b\\n\nt\t\u{1}\u{1f}");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "plain üq\\\"b\\\\n\\nt\\t\\u0001\\u001f"
        );
    }

    #[test]
    fn the_escape_check_finds_each_byte_that_needs_one_in_any_position() {
        for byte in 0..=255u8 {
            let needs = byte < 0x20 || byte == b'"' || byte == b'\\';
            for at in 0..8 {
                let mut word = *b"abcdefgh";
                word[at] = byte;
                assert_eq!(
                    needs_escape(u64::from_le_bytes(word)),
                    needs,
                    "{byte} at {at}"
                );
            }
        }
        let mut out = Vec::new();
        push_escaped(&mut out, "0123456789abcdef\"0123456\n");
        assert_eq!(out, b"0123456789abcdef\\\"0123456\\n");
        // An escape only in the tail after whole clean words, and a clean short tail.
        for (text, escaped) in [
            ("abcdefgh\u{7f}ok\\", &b"abcdefgh\x7fok\\\\"[..]),
            ("abcdefgh12", b"abcdefgh12"),
            ("abcdefgh", b"abcdefgh"),
            ("a\"", b"a\\\""),
            ("", b""),
        ] {
            out.clear();
            push_escaped(&mut out, text);
            assert_eq!(out, escaped, "{text:?}");
        }
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
            bytes_received: 5,
            bytes_sent: 1_234_567,
            client: "10.0.0.7:50123",
            user_agent: Some("grpc-go/1.2"),
            authority: None,
            route: Some("pachd"),
            upstream: Some("10.0.0.9:1650"),
            request_id: Some("abc"),
        }
    }

    #[test]
    fn json_lines_have_the_tracing_layout_and_floats_as_f64_printed_them() {
        let at = UNIX_EPOCH + Duration::new(1_796_514_209, 69_403_000);
        let mut out = Vec::new();
        write_json(&mut out, &record(Duration::from_micros(92_288)), at);
        assert_eq!(
            String::from_utf8(out).unwrap(),
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
            let mut out = Vec::new();
            write_json(&mut out, &record(Duration::from_micros(micros)), at);
            let line = String::from_utf8(out).unwrap();
            let shown = line.split("\"duration_ms\":").nth(1).unwrap();
            let shown = &shown[..shown.find(',').unwrap()];
            // What the tracing layer wrote: the f64's Display, `.0` added when it had no dot.
            let mut old = format!("{}", micros as f64 / 1000.0);
            if !old.contains('.') {
                old.push_str(".0");
            }
            assert_eq!(shown, old, "{micros}");
        }
        let mut out = Vec::new();
        let mut v6 = record(Duration::ZERO);
        v6.client = "[::1]:443";
        v6.protocol = "HTTP/3\"";
        v6.kind = "grpc";
        write_json(&mut out, &v6, at);
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["client"], "[::1]:443");
        assert_eq!(line["protocol"], "HTTP/3\"");
        assert_eq!(line["kind"], "grpc");
    }
}
