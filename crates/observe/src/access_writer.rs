//! The access log's way to stdout, built so that a line costs a proxy worker a format in
//! place under an uncontended lock: no allocation, no copy, no system call and no wake-up of
//! another thread per line.
//!
//! Past 600 lines (about 250 of them tests) on purpose: the buffer, the in-place formatter
//! and the writer thread share invariants — room reserved under the lock for a line's worst
//! case, the escaping width, when the thread is woken — that are checked in one place.
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

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{AccessRecord, RequestIdText};
use tracing_subscriber::fmt::MakeWriter;

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
    /// the waiting bytes past [`BUFFER_LIMIT`] (the line is to be dropped).
    #[inline]
    fn make_room(&mut self, room: usize) -> bool {
        let end = self.used + room;
        if end > BUFFER_LIMIT {
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
        let _ = self.done.recv_timeout(EXIT_WAIT);
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
            // A failed write (stdout closed) loses this batch; there is nowhere to say so.
            let mut stdout = std::io::stdout().lock();
            let _ = stdout
                .write_all(&batch[..used])
                .and_then(|()| stdout.flush());
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

/// Asks the core to fetch, for writing, the cache lines the next line will be formatted
/// into, while the worker goes on with other requests.
///
/// Why: those lines were last read by the writer thread, on another core, a batch ago. A
/// store to them waits for the line's ownership, and the lock's release right after the
/// line (a locked instruction, which drains the stores before it) waited for all of them:
/// `perf` put about 0.1 µs a line on that one instruction, a quarter to a third of the log's
/// cost to the worker (benches/README.md, sixth round). A prefetch is not ordered with locked
/// instructions, so it is fetched in the background, and the next line finds its room
/// owned. A plain (read) prefetch did not help: it leaves the line shared with the reader.
#[inline(always)]
fn warm_next_room(lines: &[u8], from: usize) {
    #[cfg(target_arch = "x86_64")]
    for at in room_ahead(lines, from) {
        let line = lines[at..].as_ptr();
        // SAFETY: PREFETCHW is a hint (the CPU has it: `can_prefetch_for_write`): it never
        // faults, reads or writes nothing the program sees, and touches no register, flag
        // or stack; `line` points into `lines`.
        unsafe {
            std::arch::asm!(
                "prefetchw [{line}]",
                line = in(reg) line,
                options(nostack, preserves_flags, readonly)
            );
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (lines, from);
}

/// Room past the last line whose cache lines are fetched: a gRPC call's line is about 430
/// bytes.
#[cfg(any(target_arch = "x86_64", test))]
const WARM_AHEAD: usize = 512;

/// Offsets into `lines`, one in each cache line (by address: the buffer need not be
/// aligned) of the [`WARM_AHEAD`] bytes from `from` on, all within `lines`.
#[cfg(any(target_arch = "x86_64", test))]
#[inline(always)]
fn room_ahead(lines: &[u8], from: usize) -> impl Iterator<Item = usize> {
    // Walked by address from the start of `from`'s cache line, which `from` itself stands
    // for (that start may lie before the buffer's); none when no room is left.
    let base = lines.as_ptr() as usize;
    let start = base + from;
    let end = base + lines.len().min(from + WARM_AHEAD);
    let first_line = if start < end { start & !63 } else { end };
    (first_line..end)
        .step_by(64)
        .map(move |line| line.max(start) - base)
}

/// Whether the CPU reports `PREFETCHW` (CPUID 8000_0001h, ECX bit 8). Without it, the next
/// line's room is not warmed.
fn can_prefetch_for_write() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        // `__cpuid` is a safe fn in recent Rust, an unsafe one in older releases
        // (rust-version is 1.80).
        #[allow(unused_unsafe)]
        // SAFETY: every x86_64 CPU has CPUID and its leaf 8000_0001h (which reports long
        // mode itself).
        let extended = unsafe { std::arch::x86_64::__cpuid(0x8000_0001) };
        extended.ecx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
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

/// A line being formatted into room made for it: each piece a store at `at`, checked only
/// against the room's end. Out-of-line helpers take the buffer and `at` by value, never
/// `&mut Line`: a `Line` whose address escapes is kept in memory, with a store and a reload
/// of `at` around every piece.
struct Line<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Line<'_> {
    /// Our own bytes (keys, punctuation): copied as they are.
    #[inline(always)]
    fn literal(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// `prefix` is the field's `,"key":"` (keys are ours: nothing to escape).
    #[inline(always)]
    fn str_field(&mut self, prefix: &[u8], value: &str) {
        self.literal(prefix);
        self.escaped(value.as_bytes());
        self.literal(b"\"");
    }

    /// A value that cannot hold a byte JSON escapes (checked in debug builds).
    #[inline(always)]
    fn raw_field(&mut self, prefix: &[u8], value: &str) {
        debug_assert!(
            !value.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\'),
            "{value:?} needs escaping"
        );
        self.literal(prefix);
        self.bytes(value.as_bytes());
        self.literal(b"\"");
    }

    /// Bytes to copy as they are, of a length known only at run time: a few words as
    /// words, more with `memcpy` (which moves 32 bytes at a time).
    #[inline(always)]
    fn bytes(&mut self, bytes: &[u8]) {
        if bytes.len() <= 32 {
            self.copy_words(bytes, false);
            self.at += bytes.len();
        } else {
            self.literal(bytes);
        }
    }

    /// The path's closing quote and `,"protocol":"…","kind":"…"` as one static copy for
    /// the values the proxy reports.
    #[inline(always)]
    fn protocol_fields(&mut self, protocol: &str, kind: &str) {
        macro_rules! pair {
            ($protocol:literal, $kind:literal) => {
                concat!(
                    "\",\"protocol\":\"",
                    $protocol,
                    "\",\"kind\":\"",
                    $kind,
                    "\""
                )
                .as_bytes()
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
                self.literal(b"\"");
                self.str_field(b",\"protocol\":\"", protocol);
                self.str_field(b",\"kind\":\"", kind);
                return;
            }
        };
        self.literal(fields);
    }

    /// The contents of a JSON string: `"`, `\\` and control characters escaped, other bytes
    /// (UTF-8 included) as they are. Most values need no escape: they are copied a word at a
    /// time while checked, and escaped byte by byte only when a word says so.
    #[inline]
    fn escaped(&mut self, text: &[u8]) {
        if self.copy_words(text, true) == 0 {
            self.at += text.len();
        } else {
            self.at = escaped_bytes(self.buf, self.at, text);
        }
    }

    /// Stores `text` at `at` eight bytes at a time (the last word overlapping the one
    /// before it; a text under eight bytes as one word padded with spaces, so up to eight
    /// bytes past the text are overwritten) without moving `at`. With `check`, returns
    /// non-zero when a byte needs a JSON escape.
    #[inline(always)]
    fn copy_words(&mut self, text: &[u8], check: bool) -> u64 {
        let n = text.len();
        let out = &mut self.buf[self.at..];
        let mut flags = 0;
        if n < 8 {
            let word = short_word(text);
            if check {
                flags = escape_flags(word);
            }
            out[..8].copy_from_slice(&word.to_le_bytes());
            return flags;
        }
        let out = &mut out[..n];
        // Exact chunks, so that no index needs a bounds check.
        for (from, to) in text.chunks_exact(8).zip(out.chunks_exact_mut(8)) {
            let word = u64::from_le_bytes(from.try_into().expect("eight bytes"));
            if check {
                flags |= escape_flags(word);
            }
            to.copy_from_slice(&word.to_le_bytes());
        }
        if n % 8 != 0 {
            let word = u64::from_le_bytes(text[n - 8..].try_into().expect("eight bytes"));
            if check {
                flags |= escape_flags(word);
            }
            out[n - 8..].copy_from_slice(&word.to_le_bytes());
        }
        flags
    }

    /// In decimal. Most numbers on a line (status codes, small byte counts, durations in
    /// milliseconds) are under 1000: one table load and one four-byte store for those.
    #[inline(always)]
    fn number(&mut self, value: u64) {
        if value < 1000 {
            let entry = SHORT_NUMBERS[value as usize];
            // The fourth byte stored is the length; the next piece overwrites it (the room
            // has a word of slack past any piece).
            self.buf[self.at..self.at + 4].copy_from_slice(&entry.to_le_bytes());
            self.at += (entry >> 24) as usize;
        } else {
            self.at = long_number(self.buf, self.at, value);
        }
    }

    /// `.` and the thousandths (`0` to `999`) as f64's Display ends them: trailing zeros
    /// left out, `.0` for none. One table load and one store.
    #[inline(always)]
    fn fraction(&mut self, thousandths: u64) {
        let entry = FRACTIONS[thousandths as usize % 1000];
        self.buf[self.at..self.at + 8].copy_from_slice(&entry.to_le_bytes());
        self.at += (entry >> 32) as usize;
    }
}

/// `text` at `at` with JSON's escapes, byte by byte (the rare value that needs one); returns
/// where the line goes on.
#[cold]
fn escaped_bytes(buf: &mut [u8], at: usize, text: &[u8]) -> usize {
    let mut line = Line { buf, at };
    for &b in text {
        match b {
            b'"' => line.literal(b"\\\""),
            b'\\' => line.literal(b"\\\\"),
            b'\n' => line.literal(b"\\n"),
            b'\r' => line.literal(b"\\r"),
            b'\t' => line.literal(b"\\t"),
            0..=0x1f => line.literal(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => line.literal(&[b]),
        }
    }
    line.at
}

/// `value` at `at` in decimal, two digits per division, written back to front in place;
/// returns where the line goes on.
fn long_number(buf: &mut [u8], at: usize, value: u64) -> usize {
    let len = value.checked_ilog10().map_or(1, |log| log as usize + 1);
    let out = &mut buf[at..at + len];
    let mut end = len;
    let mut value = value;
    while value >= 100 {
        end -= 2;
        out[end..end + 2].copy_from_slice(digit_pair(value % 100));
        value /= 100;
    }
    if value >= 10 {
        out[..2].copy_from_slice(digit_pair(value));
    } else {
        out[0] = b'0' + value as u8;
    }
    at + len
}

/// `0` to `999` in decimal: the digits' bytes from the lowest, the length in the top byte.
static SHORT_NUMBERS: [u32; 1000] = short_numbers();

const fn short_numbers() -> [u32; 1000] {
    let mut table = [0; 1000];
    let mut value = 0;
    while value < 1000 {
        let (hundreds, tens, ones) = (
            ascii_digit(value / 100) as u32,
            ascii_digit(value / 10 % 10) as u32,
            ascii_digit(value % 10) as u32,
        );
        table[value] = if value >= 100 {
            hundreds | tens << 8 | ones << 16 | 3 << 24
        } else if value >= 10 {
            tens | ones << 8 | 2 << 24
        } else {
            ones | 1 << 24
        };
        value += 1;
    }
    table
}

const fn ascii_digit(digit: usize) -> u8 {
    b'0' + digit as u8
}

/// `.` and the thousandths `0` to `999` as f64's Display ends a number with them (`.5`,
/// `.25`, `.125`, `.0`): the bytes from the lowest, the length in bits 32 and up.
static FRACTIONS: [u64; 1000] = fractions();

const fn fractions() -> [u64; 1000] {
    let mut table = [0; 1000];
    let mut value = 0;
    while value < 1000 {
        let digits = b'.' as u64
            | (ascii_digit(value / 100) as u64) << 8
            | (ascii_digit(value / 10 % 10) as u64) << 16
            | (ascii_digit(value % 10) as u64) << 24;
        // Trailing zeros left out, keeping one digit.
        let len = if value % 100 == 0 {
            2
        } else if value % 10 == 0 {
            3
        } else {
            4
        };
        let kept = digits & ((1 << (8 * len)) - 1);
        table[value] = kept | (len as u64) << 32;
        value += 1;
    }
    table
}

/// A text under eight bytes as a little-endian word, padded with spaces (which need no
/// escape): the bytes loaded in at most two overlapping reads, without a copy loop.
#[inline(always)]
fn short_word(text: &[u8]) -> u64 {
    let n = text.len();
    debug_assert!(n < 8);
    let word = if n >= 4 {
        let low = u32::from_le_bytes(text[..4].try_into().expect("four bytes"));
        let high = u32::from_le_bytes(text[n - 4..].try_into().expect("four bytes"));
        u64::from(low) | u64::from(high) << (8 * (n - 4))
    } else if n > 0 {
        u64::from(text[0])
            | u64::from(text[n / 2]) << (8 * (n / 2))
            | u64::from(text[n - 1]) << (8 * (n - 1))
    } else {
        0
    };
    word | u64::from_le_bytes([b' '; 8]) << (8 * n)
}

/// "00" to "99", for writing numbers two digits per division.
const DIGIT_PAIRS: &[u8; 200] = b"00010203040506070809101112131415161718192021222324252627282930313233343536373839404142434445464748495051525354555657585960616263646566676869707172737475767778798081828384858687888990919293949596979899";

#[inline(always)]
fn digit_pair(value: u64) -> &'static [u8] {
    let at = value as usize * 2;
    &DIGIT_PAIRS[at..at + 2]
}

/// Non-zero when any of the eight bytes is below 0x20, `"` or `\\` (the classic "has a byte
/// less than n" and "has a zero byte" bit tricks; exact as to whether one exists).
#[inline(always)]
fn escape_flags(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGHS;
    control | has_zero(word ^ (ONES * u64::from(b'"'))) | has_zero(word ^ (ONES * u64::from(b'\\')))
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The last second an RFC 3339 timestamp with a four-digit year can show.
const LAST_SECOND: u64 = 253_402_300_799;

/// RFC 3339 UTC timestamps with microseconds, `2026-12-05T23:43:29.069403Z`; the part up to
/// the seconds is formatted once per second.
///
/// A line's time is the instant its request ended (read once by the data path for the
/// duration as well), placed on the wall clock through an anchor — an instant and the wall
/// time at it — taken again every [`ANCHOR_INTERVAL`]: no wall-clock read per line, and a
/// step of the system clock shows within that interval.
#[derive(Default)]
struct Clock {
    anchor: Option<(Instant, u64)>,
    second: Option<u64>,
    prefix: [u8; 19],
}

/// How long a wall-clock anchor is used.
const ANCHOR_INTERVAL: Duration = Duration::from_secs(1);

impl Clock {
    /// Microseconds since the Unix epoch at `ended`.
    #[inline]
    fn micros_at(&mut self, ended: Instant) -> u64 {
        if let Some((at, wall)) = self.anchor {
            if let Some(since) = ended.checked_duration_since(at) {
                if since < ANCHOR_INTERVAL {
                    return wall + since.as_micros() as u64;
                }
            } else {
                return Self::before_anchor(at, wall, ended);
            }
        }
        self.reanchor(ended)
    }

    /// A request that ended before the anchor was taken (another worker's line took it
    /// while this one waited for the lock).
    #[cold]
    fn before_anchor(at: Instant, wall: u64, ended: Instant) -> u64 {
        wall.saturating_sub(at.saturating_duration_since(ended).as_micros() as u64)
    }

    #[cold]
    fn reanchor(&mut self, ended: Instant) -> u64 {
        let at = Instant::now();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        self.anchor = Some((at, wall));
        // `ended` is at or before now (a line is written after its request ended).
        Self::before_anchor(at, wall, ended)
    }

    fn stamp(&mut self, micros_since_epoch: u64) -> [u8; 27] {
        let secs = (micros_since_epoch / 1_000_000).min(LAST_SECOND);
        if self.second != Some(secs) {
            self.prefix = second_prefix(secs);
            self.second = Some(secs);
        }
        let micros = micros_since_epoch % 1_000_000;
        let mut out = [0; 27];
        out[..19].copy_from_slice(&self.prefix);
        out[19] = b'.';
        out[20..22].copy_from_slice(digit_pair(micros / 10_000));
        out[22..24].copy_from_slice(digit_pair(micros / 100 % 100));
        out[24..26].copy_from_slice(digit_pair(micros % 100));
        out[26] = b'Z';
        out
    }
}

/// `YYYY-MM-DDTHH:MM:SS` for a second up to [`LAST_SECOND`].
fn second_prefix(secs: u64) -> [u8; 19] {
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    let year = year as u64;
    let mut out = *b"0000-00-00T00:00:00";
    for (at, value) in [
        (0, year / 100),
        (2, year % 100),
        (5, u64::from(month)),
        (8, u64::from(day)),
        (11, rest / 3600),
        (14, rest / 60 % 60),
        (17, rest % 60),
    ] {
        out[at..at + 2].copy_from_slice(digit_pair(value));
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's method).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
    use crate::ConnectionMemo;

    /// What [`Line`] makes of one piece, in room as a line would have it.
    fn written(text_len: usize, write: impl FnOnce(&mut Line<'_>)) -> Vec<u8> {
        let mut buf = vec![0xaa; LINE_FIXED_ROOM + 6 * text_len];
        let mut line = Line {
            buf: &mut buf,
            at: 0,
        };
        write(&mut line);
        let at = line.at;
        buf.truncate(at);
        buf
    }

    fn escaped(text: &str) -> Vec<u8> {
        written(text.len(), |line| line.escaped(text.as_bytes()))
    }

    #[test]
    fn line_times_come_from_the_end_instant_through_an_anchor() {
        let wall_now = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let mut clock = Clock::default();
        // The first line anchors the clock: its time is the wall clock's, less how long ago
        // its request ended.
        let before = wall_now();
        let start = Instant::now();
        let first = clock.micros_at(start);
        let after = wall_now();
        assert!(
            first >= before && first <= after,
            "{before} {first} {after}"
        );
        // Within the interval, later instants are the anchor plus their distance from it.
        let (at, wall) = clock.anchor.unwrap();
        let later = at + Duration::from_micros(250_000);
        assert_eq!(clock.micros_at(later), wall + 250_000);
        // An instant from before the anchor (another worker's line, written later) is
        // placed back from it; one past the interval takes a new anchor.
        if let Some(earlier) = at.checked_sub(Duration::from_millis(5)) {
            assert_eq!(clock.micros_at(earlier), wall - 5_000);
            assert_eq!(clock.anchor.unwrap().0, at);
        }
        let far = Instant::now() + Duration::from_secs(2);
        let anchored = clock.anchor.unwrap().0;
        clock.micros_at(far);
        assert_ne!(clock.anchor.unwrap().0, anchored);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let mut clock = Clock::default();
        assert_eq!(
            &clock.stamp(1_796_514_209_069_403),
            b"2026-12-05T23:43:29.069403Z"
        );
        // The same second again (the cached part), then another.
        assert_eq!(
            &clock.stamp(1_796_514_209_999_999),
            b"2026-12-05T23:43:29.999999Z"
        );
        assert_eq!(
            &clock.stamp(951_782_400_000_000),
            b"2000-02-29T00:00:00.000000Z"
        );
        assert_eq!(
            &clock.stamp((LAST_SECOND + 86_400) * 1_000_000 + 5),
            b"9999-12-31T23:59:59.000005Z"
        );
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn the_room_ahead_names_each_cache_line_of_the_next_512_bytes_once_within_the_buffer() {
        let backing = vec![0u8; 4096 + 64];
        // Every alignment of the buffer against cache lines, whatever the allocator gives.
        for (len, skew) in [0, 1, 63, 64, 65, 511, 512, 513, 1000, 4096]
            .into_iter()
            .flat_map(|len| (0..64).map(move |skew| (len, skew)))
        {
            let lines = &backing[skew..skew + len];
            let cache_line = |at: usize| (lines.as_ptr() as usize + at) / 64;
            for from in 0..=len {
                let offsets: Vec<usize> = room_ahead(lines, from).collect();
                assert!(
                    offsets.iter().all(|&at| at < len),
                    "{len} {skew} {from}: {offsets:?}"
                );
                let fetched: Vec<usize> = offsets.iter().map(|&at| cache_line(at)).collect();
                let end = len.min(from + WARM_AHEAD);
                let mut wanted: Vec<usize> = (from..end).map(cache_line).collect();
                wanted.dedup();
                assert_eq!(fetched, wanted, "{len} {skew} {from}");
            }
        }
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
            let out = written(0, |line| line.number(value));
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
        // Every value the table holds, and past it.
        for value in 0..2000 {
            let out = written(0, |line| line.number(value));
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
    }

    #[test]
    fn every_fraction_is_written_as_f64_display_ends_it() {
        for thousandths in 0..1000u64 {
            let out = written(0, |line| {
                line.number(7);
                line.fraction(thousandths);
            });
            let printed = format!("{:?}", (7000 + thousandths) as f64 / 1000.0);
            assert_eq!(String::from_utf8(out).unwrap(), printed);
        }
    }

    #[test]
    fn strings_are_escaped_for_json() {
        let mut out = escaped("plain ü");
        out.extend(escaped("q\"b\\n\nt\t\u{1}\u{1f}"));
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
                    escape_flags(u64::from_le_bytes(word)) != 0,
                    needs,
                    "{byte} at {at}"
                );
            }
        }
        let out = escaped("0123456789abcdef\"0123456\n");
        assert_eq!(out, b"0123456789abcdef\\\"0123456\\n");
        // An escape only in the tail after whole clean words, and a clean short tail.
        for (text, escaped_text) in [
            ("abcdefgh\u{7f}ok\\", &b"abcdefgh\x7fok\\\\"[..]),
            ("abcdefgh12", b"abcdefgh12"),
            ("abcdefgh", b"abcdefgh"),
            ("a\"", b"a\\\""),
            ("", b""),
        ] {
            assert_eq!(escaped(text), escaped_text, "{text:?}");
        }
    }

    /// The record's line with the wall clock at `at` when the record ended.
    fn json_line(record: &AccessRecord<'_>, at: SystemTime) -> String {
        let mut pending = Pending::new();
        let wall = at.duration_since(UNIX_EPOCH).unwrap().as_micros() as u64;
        pending.clock.anchor = Some((record.ended, wall));
        assert!(write_json(&mut pending, record));
        String::from_utf8(pending.lines[..pending.used].to_vec()).unwrap()
    }

    #[test]
    fn every_length_and_position_escapes_as_serde_json_does() {
        // Word-wide copies: under eight bytes, whole words, and an overlapping last word.
        for len in 0..40 {
            let clean: String = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"[..len].into();
            let expect = |text: &str| serde_json::to_string(text).unwrap();
            let got = String::from_utf8(escaped(&clean)).unwrap();
            assert_eq!(format!("\"{got}\""), expect(&clean), "{clean:?}");
            for at in 0..len {
                for bad in ['"', '\\', '\n', '\u{0}', '\u{1f}'] {
                    let mut text = clean.clone().into_bytes();
                    text[at] = bad as u8;
                    let text = String::from_utf8(text).unwrap();
                    let got = String::from_utf8(escaped(&text)).unwrap();
                    assert_eq!(format!("\"{got}\""), expect(&text), "{text:?}");
                }
            }
        }
        let raw = written(20, |line| line.raw_field(b",\"k\":\"", "10.0.0.7:50123"));
        assert_eq!(raw, b",\"k\":\"10.0.0.7:50123\"");
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
}
