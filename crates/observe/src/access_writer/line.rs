//! The pieces of a JSON line, each stored in place into room made for the whole line: our
//! own bytes, strings a word at a time with JSON's escapes, numbers from tables.
//!
//! The room is the caller's to size (`write_json` in the parent module): six bytes for each
//! byte of a string (an escape's widest) plus `LINE_FIXED_ROOM`, which holds the keys,
//! the numbers and the word of slack these pieces store past their end (a string's last
//! word, a fraction's eight bytes, a short number's four). Too little room panics at a
//! slice bound; it never writes outside the buffer.

/// A line being formatted into room made for it: each piece a store at `at`, checked only
/// against the room's end. Out-of-line helpers take the buffer and `at` by value, never
/// `&mut Line`: a `Line` whose address escapes is kept in memory, with a store and a reload
/// of `at` around every piece.
pub(super) struct Line<'a> {
    pub(super) buf: &'a mut [u8],
    pub(super) at: usize,
}

impl Line<'_> {
    /// Our own bytes (keys, punctuation): copied as they are.
    #[inline(always)]
    pub(super) fn literal(&mut self, bytes: &[u8]) {
        self.buf[self.at..self.at + bytes.len()].copy_from_slice(bytes);
        self.at += bytes.len();
    }

    /// `prefix` is the field's `,"key":"` (keys are ours: nothing to escape).
    #[inline(always)]
    pub(super) fn str_field(&mut self, prefix: &[u8], value: &str) {
        self.literal(prefix);
        self.escaped(value.as_bytes());
        self.literal(b"\"");
    }

    /// A value that cannot hold a byte JSON escapes (checked in debug builds).
    #[inline(always)]
    pub(super) fn raw_field(&mut self, prefix: &[u8], value: &str) {
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
    pub(super) fn bytes(&mut self, bytes: &[u8]) {
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
    pub(super) fn protocol_fields(&mut self, protocol: &str, kind: &str) {
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
    pub(super) fn escaped(&mut self, text: &[u8]) {
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
    pub(super) fn number(&mut self, value: u64) {
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
    pub(super) fn fraction(&mut self, thousandths: u64) {
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
pub(super) fn short_word(text: &[u8]) -> u64 {
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
pub(super) fn digit_pair(value: u64) -> &'static [u8] {
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

#[cfg(test)]
mod tests {
    use super::super::LINE_FIXED_ROOM;
    use super::*;

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
}
