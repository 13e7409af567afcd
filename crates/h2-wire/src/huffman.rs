//! HPACK's Huffman code (RFC 7541 §5.2, Appendix B): decoding for response header blocks,
//! and a small encoder for tests and fuzzing (pachgate sends its own literals raw).
//!
//! The code is canonical: ordered by (length, symbol), each code is the previous one plus
//! one, shifted left by the growth in length. So the decoder needs only, per code length,
//! the largest (left-aligned) code of that length and where its symbols start in the
//! (length, symbol) order, all built at compile time from [`CODES`]. A symbol whose code is
//! 8 bits or shorter (most of what headers hold) is one look-up by the next 8 bits; a longer
//! one peeks 30 bits, finds its length by comparing with each length's limit and indexes
//! the symbol. About 40 instructions a symbol, no table built per string.

use std::fmt;

/// The code of each symbol 0–255 and of EOS (256): (code, length in bits), right-aligned,
/// as RFC 7541 Appendix B lists them.
pub const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13),     // 0
    (0x7fffd8, 23),   // 1
    (0xfffffe2, 28),  // 2
    (0xfffffe3, 28),  // 3
    (0xfffffe4, 28),  // 4
    (0xfffffe5, 28),  // 5
    (0xfffffe6, 28),  // 6
    (0xfffffe7, 28),  // 7
    (0xfffffe8, 28),  // 8
    (0xffffea, 24),   // 9
    (0x3ffffffc, 30), // 10
    (0xfffffe9, 28),  // 11
    (0xfffffea, 28),  // 12
    (0x3ffffffd, 30), // 13
    (0xfffffeb, 28),  // 14
    (0xfffffec, 28),  // 15
    (0xfffffed, 28),  // 16
    (0xfffffee, 28),  // 17
    (0xfffffef, 28),  // 18
    (0xffffff0, 28),  // 19
    (0xffffff1, 28),  // 20
    (0xffffff2, 28),  // 21
    (0x3ffffffe, 30), // 22
    (0xffffff3, 28),  // 23
    (0xffffff4, 28),  // 24
    (0xffffff5, 28),  // 25
    (0xffffff6, 28),  // 26
    (0xffffff7, 28),  // 27
    (0xffffff8, 28),  // 28
    (0xffffff9, 28),  // 29
    (0xffffffa, 28),  // 30
    (0xffffffb, 28),  // 31
    (0x14, 6),        // ' '
    (0x3f8, 10),      // '!'
    (0x3f9, 10),      // '"'
    (0xffa, 12),      // '#'
    (0x1ff9, 13),     // '$'
    (0x15, 6),        // '%'
    (0xf8, 8),        // '&'
    (0x7fa, 11),      // "'"
    (0x3fa, 10),      // '('
    (0x3fb, 10),      // ')'
    (0xf9, 8),        // '*'
    (0x7fb, 11),      // '+'
    (0xfa, 8),        // ','
    (0x16, 6),        // '-'
    (0x17, 6),        // '.'
    (0x18, 6),        // '/'
    (0x0, 5),         // '0'
    (0x1, 5),         // '1'
    (0x2, 5),         // '2'
    (0x19, 6),        // '3'
    (0x1a, 6),        // '4'
    (0x1b, 6),        // '5'
    (0x1c, 6),        // '6'
    (0x1d, 6),        // '7'
    (0x1e, 6),        // '8'
    (0x1f, 6),        // '9'
    (0x5c, 7),        // ':'
    (0xfb, 8),        // ';'
    (0x7ffc, 15),     // '<'
    (0x20, 6),        // '='
    (0xffb, 12),      // '>'
    (0x3fc, 10),      // '?'
    (0x1ffa, 13),     // '@'
    (0x21, 6),        // 'A'
    (0x5d, 7),        // 'B'
    (0x5e, 7),        // 'C'
    (0x5f, 7),        // 'D'
    (0x60, 7),        // 'E'
    (0x61, 7),        // 'F'
    (0x62, 7),        // 'G'
    (0x63, 7),        // 'H'
    (0x64, 7),        // 'I'
    (0x65, 7),        // 'J'
    (0x66, 7),        // 'K'
    (0x67, 7),        // 'L'
    (0x68, 7),        // 'M'
    (0x69, 7),        // 'N'
    (0x6a, 7),        // 'O'
    (0x6b, 7),        // 'P'
    (0x6c, 7),        // 'Q'
    (0x6d, 7),        // 'R'
    (0x6e, 7),        // 'S'
    (0x6f, 7),        // 'T'
    (0x70, 7),        // 'U'
    (0x71, 7),        // 'V'
    (0x72, 7),        // 'W'
    (0xfc, 8),        // 'X'
    (0x73, 7),        // 'Y'
    (0xfd, 8),        // 'Z'
    (0x1ffb, 13),     // '['
    (0x7fff0, 19),    // '\\'
    (0x1ffc, 13),     // ']'
    (0x3ffc, 14),     // '^'
    (0x22, 6),        // '_'
    (0x7ffd, 15),     // '`'
    (0x3, 5),         // 'a'
    (0x23, 6),        // 'b'
    (0x4, 5),         // 'c'
    (0x24, 6),        // 'd'
    (0x5, 5),         // 'e'
    (0x25, 6),        // 'f'
    (0x26, 6),        // 'g'
    (0x27, 6),        // 'h'
    (0x6, 5),         // 'i'
    (0x74, 7),        // 'j'
    (0x75, 7),        // 'k'
    (0x28, 6),        // 'l'
    (0x29, 6),        // 'm'
    (0x2a, 6),        // 'n'
    (0x7, 5),         // 'o'
    (0x2b, 6),        // 'p'
    (0x76, 7),        // 'q'
    (0x2c, 6),        // 'r'
    (0x8, 5),         // 's'
    (0x9, 5),         // 't'
    (0x2d, 6),        // 'u'
    (0x77, 7),        // 'v'
    (0x78, 7),        // 'w'
    (0x79, 7),        // 'x'
    (0x7a, 7),        // 'y'
    (0x7b, 7),        // 'z'
    (0x7ffe, 15),     // '{'
    (0x7fc, 11),      // '|'
    (0x3ffd, 14),     // '}'
    (0x1ffd, 13),     // '~'
    (0xffffffc, 28),  // 127
    (0xfffe6, 20),    // 128
    (0x3fffd2, 22),   // 129
    (0xfffe7, 20),    // 130
    (0xfffe8, 20),    // 131
    (0x3fffd3, 22),   // 132
    (0x3fffd4, 22),   // 133
    (0x3fffd5, 22),   // 134
    (0x7fffd9, 23),   // 135
    (0x3fffd6, 22),   // 136
    (0x7fffda, 23),   // 137
    (0x7fffdb, 23),   // 138
    (0x7fffdc, 23),   // 139
    (0x7fffdd, 23),   // 140
    (0x7fffde, 23),   // 141
    (0xffffeb, 24),   // 142
    (0x7fffdf, 23),   // 143
    (0xffffec, 24),   // 144
    (0xffffed, 24),   // 145
    (0x3fffd7, 22),   // 146
    (0x7fffe0, 23),   // 147
    (0xffffee, 24),   // 148
    (0x7fffe1, 23),   // 149
    (0x7fffe2, 23),   // 150
    (0x7fffe3, 23),   // 151
    (0x7fffe4, 23),   // 152
    (0x1fffdc, 21),   // 153
    (0x3fffd8, 22),   // 154
    (0x7fffe5, 23),   // 155
    (0x3fffd9, 22),   // 156
    (0x7fffe6, 23),   // 157
    (0x7fffe7, 23),   // 158
    (0xffffef, 24),   // 159
    (0x3fffda, 22),   // 160
    (0x1fffdd, 21),   // 161
    (0xfffe9, 20),    // 162
    (0x3fffdb, 22),   // 163
    (0x3fffdc, 22),   // 164
    (0x7fffe8, 23),   // 165
    (0x7fffe9, 23),   // 166
    (0x1fffde, 21),   // 167
    (0x7fffea, 23),   // 168
    (0x3fffdd, 22),   // 169
    (0x3fffde, 22),   // 170
    (0xfffff0, 24),   // 171
    (0x1fffdf, 21),   // 172
    (0x3fffdf, 22),   // 173
    (0x7fffeb, 23),   // 174
    (0x7fffec, 23),   // 175
    (0x1fffe0, 21),   // 176
    (0x1fffe1, 21),   // 177
    (0x3fffe0, 22),   // 178
    (0x1fffe2, 21),   // 179
    (0x7fffed, 23),   // 180
    (0x3fffe1, 22),   // 181
    (0x7fffee, 23),   // 182
    (0x7fffef, 23),   // 183
    (0xfffea, 20),    // 184
    (0x3fffe2, 22),   // 185
    (0x3fffe3, 22),   // 186
    (0x3fffe4, 22),   // 187
    (0x7ffff0, 23),   // 188
    (0x3fffe5, 22),   // 189
    (0x3fffe6, 22),   // 190
    (0x7ffff1, 23),   // 191
    (0x3ffffe0, 26),  // 192
    (0x3ffffe1, 26),  // 193
    (0xfffeb, 20),    // 194
    (0x7fff1, 19),    // 195
    (0x3fffe7, 22),   // 196
    (0x7ffff2, 23),   // 197
    (0x3fffe8, 22),   // 198
    (0x1ffffec, 25),  // 199
    (0x3ffffe2, 26),  // 200
    (0x3ffffe3, 26),  // 201
    (0x3ffffe4, 26),  // 202
    (0x7ffffde, 27),  // 203
    (0x7ffffdf, 27),  // 204
    (0x3ffffe5, 26),  // 205
    (0xfffff1, 24),   // 206
    (0x1ffffed, 25),  // 207
    (0x7fff2, 19),    // 208
    (0x1fffe3, 21),   // 209
    (0x3ffffe6, 26),  // 210
    (0x7ffffe0, 27),  // 211
    (0x7ffffe1, 27),  // 212
    (0x3ffffe7, 26),  // 213
    (0x7ffffe2, 27),  // 214
    (0xfffff2, 24),   // 215
    (0x1fffe4, 21),   // 216
    (0x1fffe5, 21),   // 217
    (0x3ffffe8, 26),  // 218
    (0x3ffffe9, 26),  // 219
    (0xffffffd, 28),  // 220
    (0x7ffffe3, 27),  // 221
    (0x7ffffe4, 27),  // 222
    (0x7ffffe5, 27),  // 223
    (0xfffec, 20),    // 224
    (0xfffff3, 24),   // 225
    (0xfffed, 20),    // 226
    (0x1fffe6, 21),   // 227
    (0x3fffe9, 22),   // 228
    (0x1fffe7, 21),   // 229
    (0x1fffe8, 21),   // 230
    (0x7ffff3, 23),   // 231
    (0x3fffea, 22),   // 232
    (0x3fffeb, 22),   // 233
    (0x1ffffee, 25),  // 234
    (0x1ffffef, 25),  // 235
    (0xfffff4, 24),   // 236
    (0xfffff5, 24),   // 237
    (0x3ffffea, 26),  // 238
    (0x7ffff4, 23),   // 239
    (0x3ffffeb, 26),  // 240
    (0x7ffffe6, 27),  // 241
    (0x3ffffec, 26),  // 242
    (0x3ffffed, 26),  // 243
    (0x7ffffe7, 27),  // 244
    (0x7ffffe8, 27),  // 245
    (0x7ffffe9, 27),  // 246
    (0x7ffffea, 27),  // 247
    (0x7ffffeb, 27),  // 248
    (0xffffffe, 28),  // 249
    (0x7ffffec, 27),  // 250
    (0x7ffffed, 27),  // 251
    (0x7ffffee, 27),  // 252
    (0x7ffffef, 27),  // 253
    (0x7fffff0, 27),  // 254
    (0x3ffffee, 26),  // 255
    (0x3fffffff, 30), // EOS
];

/// The end-of-string symbol: never decoded from a string, its leading bits pad the last byte.
const EOS: u16 = 256;
/// The longest code (EOS's).
const MAX_LENGTH: u32 = 30;

/// Why a Huffman-coded string is refused (RFC 7541 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HuffmanError {
    /// More than 7 bits left over after the last symbol.
    PaddingTooLong,
    /// Left-over bits that are not the leading (all one) bits of EOS.
    PaddingNotEos,
    /// The string holds the EOS symbol.
    Eos,
}

impl fmt::Display for HuffmanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HuffmanError::PaddingTooLong => "Huffman padding longer than 7 bits",
            HuffmanError::PaddingNotEos => "Huffman padding that is not EOS's prefix",
            HuffmanError::Eos => "EOS in a Huffman-coded string",
        })
    }
}

impl std::error::Error for HuffmanError {}

/// The codes of one length: every code of this length, left-aligned to [`MAX_LENGTH`] bits,
/// is at least `first` and below `limit`; the symbol of `first` is `SORTED[offset]`.
#[derive(Clone, Copy)]
struct Group {
    limit: u32,
    first: u32,
    length: u32,
    offset: u32,
}

/// The symbols in (length, symbol) order, i.e. in code order.
const SORTED: [u16; 257] = sorted_symbols();
/// The codes of 8 bits or fewer (74 symbols: lowercase, digits, most uppercase and common
/// punctuation), by the 8 bits that start with one: `length << 8 | symbol`, or 0 where a
/// longer code starts.
const SHORT: [u16; 256] = short_codes();
/// One group per code length in use, shortest first (21 of them).
const GROUPS: ([Group; MAX_LENGTH as usize], usize) = groups();

const fn sorted_symbols() -> [u16; 257] {
    let mut sorted = [0u16; 257];
    let mut next = 0;
    let mut length = 1;
    while length <= MAX_LENGTH as u8 {
        let mut symbol = 0;
        while symbol < 257 {
            if CODES[symbol].1 == length {
                sorted[next] = symbol as u16;
                next += 1;
            }
            symbol += 1;
        }
        length += 1;
    }
    sorted
}

const fn short_codes() -> [u16; 256] {
    let mut short = [0u16; 256];
    let mut symbol = 0;
    while symbol < 257 {
        let (code, length) = CODES[symbol];
        if length <= 8 {
            let first = (code << (8 - length)) as usize;
            let mut byte = first;
            while byte < first + (1 << (8 - length)) {
                short[byte] = (length as u16) << 8 | symbol as u16;
                byte += 1;
            }
        }
        symbol += 1;
    }
    short
}

const fn groups() -> ([Group; MAX_LENGTH as usize], usize) {
    let empty = Group {
        limit: 0,
        first: 0,
        length: 0,
        offset: 0,
    };
    let mut groups = [empty; MAX_LENGTH as usize];
    let mut count = 0;
    let mut at = 0;
    while at < 257 {
        let symbol = SORTED[at] as usize;
        let (code, length) = CODES[symbol];
        let shift = MAX_LENGTH - length as u32;
        if count == 0 || groups[count - 1].length != length as u32 {
            groups[count] = Group {
                limit: 0,
                first: code << shift,
                length: length as u32,
                offset: at as u32,
            };
            count += 1;
        }
        // Canonical codes only: the decoder's arithmetic depends on it.
        let group = &groups[count - 1];
        assert!(group.first + ((at as u32 - group.offset) << shift) == code << shift);
        groups[count - 1].limit = (code + 1) << shift;
        at += 1;
    }
    // Every 30-bit pattern falls in some group (the code is complete), so a scan ends.
    assert!(groups[count - 1].limit == 1 << MAX_LENGTH);
    (groups, count)
}

/// Appends the decoded `input` to `out`.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HuffmanError> {
    // The shortest code is 5 bits.
    out.reserve(input.len() * 8 / 5);
    let groups = &GROUPS.0[..GROUPS.1];
    // Bits not yet decoded, left-aligned; `held` of them are input.
    let mut bits: u64 = 0;
    let mut held: u32 = 0;
    let mut rest = input;
    loop {
        while held <= 56 {
            let Some((&byte, tail)) = rest.split_first() else {
                break;
            };
            bits |= u64::from(byte) << (56 - held);
            held += 8;
            rest = tail;
        }
        if held == 0 {
            return Ok(());
        }
        let short = SHORT[(bits >> 56) as usize];
        let length = u32::from(short >> 8);
        if short != 0 && length <= held {
            out.push(short as u8);
            bits <<= length;
            held -= length;
            continue;
        }
        let peek = (bits >> (64 - MAX_LENGTH)) as u32;
        let mut group = &groups[0];
        for next in groups {
            group = next;
            if peek < next.limit {
                break;
            }
        }
        if group.length > held {
            // What is left is shorter than the code it starts: padding.
            if held > 7 {
                return Err(HuffmanError::PaddingTooLong);
            }
            let ones = !0u64 << (64 - held);
            if bits & ones != ones {
                return Err(HuffmanError::PaddingNotEos);
            }
            return Ok(());
        }
        let symbol =
            SORTED[(group.offset + ((peek - group.first) >> (MAX_LENGTH - group.length))) as usize];
        if symbol == EOS {
            return Err(HuffmanError::Eos);
        }
        out.push(symbol as u8);
        bits <<= group.length;
        held -= group.length;
    }
}

/// The Huffman-coded length of `input`, in bytes.
pub fn encoded_len(input: &[u8]) -> usize {
    let bits: usize = input
        .iter()
        .map(|&b| usize::from(CODES[usize::from(b)].1))
        .sum();
    bits.div_ceil(8)
}

/// Appends `input` Huffman-coded, its last byte padded with EOS's leading (one) bits.
pub fn encode(input: &[u8], out: &mut Vec<u8>) {
    let mut bits: u64 = 0;
    let mut held: u32 = 0;
    for &byte in input {
        let (code, length) = CODES[usize::from(byte)];
        bits = (bits << length) | u64::from(code);
        held += u32::from(length);
        while held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
        bits &= (1 << held) - 1;
    }
    if held > 0 {
        let pad = 8 - held;
        out.push(((bits << pad) | ((1 << pad) - 1)) as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoded(input: &[u8]) -> Result<Vec<u8>, HuffmanError> {
        let mut out = Vec::new();
        decode(input, &mut out).map(|()| out)
    }

    fn encoded(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(input, &mut out);
        assert_eq!(out.len(), encoded_len(input));
        out
    }

    #[test]
    fn the_typed_table_is_a_complete_canonical_code() {
        // Kraft: the code lengths fill the code space exactly (no gap, no overlap).
        let space: u64 = CODES.iter().map(|&(_, length)| 1u64 << (30 - length)).sum();
        assert_eq!(space, 1 << 30);
        // Canonical, rebuilt from the lengths alone: in (length, symbol) order each code is
        // the last plus one, shifted by the growth in length.
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&symbol| (CODES[symbol].1, symbol));
        let mut code = 0u32;
        let mut last = CODES[order[0]].1;
        for (i, &symbol) in order.iter().enumerate() {
            let length = CODES[symbol].1;
            if i > 0 {
                code = (code + 1) << (length - last);
            }
            last = length;
            assert_eq!(CODES[symbol].0, code, "symbol {symbol}");
        }
        assert_eq!(CODES[256], (0x3fff_ffff, 30));
        assert_eq!(GROUPS.1, 21);
    }

    #[test]
    fn every_symbol_round_trips_alone_and_in_a_run() {
        for symbol in 0..=255u8 {
            let coded = encoded(&[symbol]);
            assert_eq!(decoded(&coded), Ok(vec![symbol]), "symbol {symbol}");
            // After a 5-bit symbol, so that codes start off byte boundaries.
            let pair = [b'a', symbol, symbol, b'0'];
            assert_eq!(
                decoded(&encoded(&pair)),
                Ok(pair.to_vec()),
                "symbol {symbol}"
            );
        }
        let all: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
        assert_eq!(decoded(&encoded(&all)), Ok(all));
        assert_eq!(decoded(&[]), Ok(Vec::new()));
    }

    #[test]
    fn rfc_7541_appendix_c4_and_c6_strings() {
        let cases: [(&[u8], &[u8]); 8] = [
            (
                &[
                    0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90, 0xf4, 0xff,
                ],
                b"www.example.com",
            ),
            (&[0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf], b"no-cache"),
            (
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f],
                b"custom-key",
            ),
            (
                &[0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf],
                b"custom-value",
            ),
            (&[0x64, 0x02], b"302"),
            (&[0xae, 0xc3, 0x77, 0x1a, 0x4b], b"private"),
            (
                &[
                    0xd0, 0x7a, 0xbe, 0x94, 0x10, 0x54, 0xd4, 0x44, 0xa8, 0x20, 0x05, 0x95, 0x04,
                    0x0b, 0x81, 0x66, 0xe0, 0x82, 0xa6, 0x2d, 0x1b, 0xff,
                ],
                b"Mon, 21 Oct 2013 20:13:21 GMT",
            ),
            (
                &[
                    0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae,
                    0x82, 0xae, 0x43, 0xd3,
                ],
                b"https://www.example.com",
            ),
        ];
        for (coded, plain) in cases {
            assert_eq!(decoded(coded).as_deref(), Ok(plain));
            assert_eq!(encoded(plain), coded);
        }
    }

    #[test]
    fn padding_past_seven_bits_not_of_ones_or_holding_eos_is_refused() {
        // 'a' is 00011 (5 bits): three bits of one pad it to a byte.
        assert_eq!(decoded(&[0b0001_1111]), Ok(b"a".to_vec()));
        assert_eq!(decoded(&[0b0001_1101]), Err(HuffmanError::PaddingNotEos));
        assert_eq!(decoded(&[0b0001_1011]), Err(HuffmanError::PaddingNotEos));
        // A whole byte of ones: eight bits of padding.
        assert_eq!(decoded(&[0xff]), Err(HuffmanError::PaddingTooLong));
        assert_eq!(
            decoded(&[0b0001_1111, 0xff]),
            Err(HuffmanError::PaddingTooLong)
        );
        // Seven bits of padding after a byte-aligned symbol run ('0' '1' '2' 'a' 'c'...).
        let mut coded = encoded(b"ab");
        assert_eq!(coded.len(), 2); // 5 + 6 bits, then 5 bits of padding
        assert_eq!(decoded(&coded), Ok(b"ab".to_vec()));
        coded.push(0xff);
        assert_eq!(decoded(&coded), Err(HuffmanError::PaddingTooLong));
        // EOS itself, however padded: 30 ones then two.
        assert_eq!(decoded(&[0xff; 4]), Err(HuffmanError::Eos));
        // EOS after a symbol: 'a' (5 bits), 30 ones, 5 ones of padding.
        assert_eq!(
            decoded(&[0b0001_1111, 0xff, 0xff, 0xff, 0xff]),
            Err(HuffmanError::Eos)
        );
        // A truncated long code: the first 16 bits of a 28-bit code.
        assert_eq!(decoded(&[0xff, 0xff]), Err(HuffmanError::PaddingTooLong));
        // Zero bits that start a 5-bit code but end short: padding of zeros.
        assert_eq!(decoded(&[0b0001_1000]), Err(HuffmanError::PaddingNotEos));
    }
}
