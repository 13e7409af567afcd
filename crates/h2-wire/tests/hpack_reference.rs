//! Our HPACK decoder against loona-hpack's (the one pachgate used before) on the same
//! blocks: field lists encoded by loona's encoder (dynamic table references), by a small
//! encoder here (Huffman literals, every representation, size updates), and those blocks
//! with bytes mutated. Both must give the same fields, or both fail; the one known
//! difference is where a table size update may stand (RFC 7541 §4.2: only at a block's
//! start, which loona does not enforce, while loona refuses a block that ends with one).

use std::collections::VecDeque;

use pachgate_h2_wire::hpack_decode::{DecodeError, Decoder};
use pachgate_h2_wire::{huffman, put_integer};

const TABLE_SIZE: usize = 4096;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, alphabet: &[u8], max: usize) -> Vec<u8> {
        let length = self.below(max + 1);
        (0..length)
            .map(|_| alphabet[self.below(alphabet.len())])
            .collect()
    }
}

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn ours(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
    let mut fields = Vec::new();
    decoder
        .decode(block, |field| {
            fields.push((field.name.to_vec(), field.value.to_vec()))
        })
        .map(|()| fields)
}

fn reference(
    decoder: &mut loona_hpack::Decoder<'static>,
    block: &[u8],
) -> Result<Fields, loona_hpack::decoder::DecoderError> {
    let mut fields = Vec::new();
    decoder
        .decode_with_cb(block, |name, value| {
            fields.push((name.into_owned(), value.into_owned()))
        })
        .map(|()| fields)
}

fn reference_decoder() -> loona_hpack::Decoder<'static> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(TABLE_SIZE);
    decoder
}

/// Names and values as responses carry them, and some of any byte.
fn random_fields(rng: &mut Rng) -> Fields {
    const NAMES: [&str; 10] = [
        ":status",
        "content-type",
        "grpc-status",
        "grpc-message",
        "date",
        "x-request-id",
        "server",
        "set-cookie",
        "cache-control",
        "www-authenticate",
    ];
    const TEXT: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 -_./:;=,%\"";
    let any: Vec<u8> = (0..=255).collect();
    (0..rng.below(12))
        .map(|_| {
            let name = match rng.below(4) {
                0 => rng.bytes(b"abcdefghijklmnopqrstuvwxyz-", 20),
                _ => NAMES[rng.below(NAMES.len())].as_bytes().to_vec(),
            };
            let value = match rng.below(5) {
                0 => rng.bytes(&any, 40),
                1 => b"200".to_vec(),
                _ => rng.bytes(TEXT, 60),
            };
            (name, value)
        })
        .collect()
}

/// What a dynamic table holds, kept by the test encoder to emit valid references.
struct Model {
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    capacity: usize,
}

impl Model {
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + 32;
        while self.size + size > self.capacity {
            let Some((name, value)) = self.entries.pop_back() else {
                break;
            };
            self.size -= name.len() + value.len() + 32;
        }
        if size <= self.capacity {
            self.size += size;
            self.entries.push_front((name.to_vec(), value.to_vec()));
        }
    }
    fn resize(&mut self, capacity: usize) {
        self.capacity = capacity;
        self.evict();
    }
    fn evict(&mut self) {
        while self.size > self.capacity {
            let (name, value) = self.entries.pop_back().expect("size counts entries");
            self.size -= name.len() + value.len() + 32;
        }
    }
}

/// Non-empty Huffman-coded strings written so far (so a test can show it made some).
static HUFFMAN_STRINGS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn put_string(out: &mut Vec<u8>, bytes: &[u8], huffman_coded: bool) {
    if huffman_coded {
        if !bytes.is_empty() {
            HUFFMAN_STRINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        put_integer(out, 0x80, 7, huffman::encoded_len(bytes));
        huffman::encode(bytes, out);
    } else {
        put_integer(out, 0x00, 7, bytes.len());
        out.extend_from_slice(bytes);
    }
}

/// Encodes `fields` with every representation chosen at random: whole entries from either
/// table where one matches, names from the tables, literals raw or Huffman-coded, and a
/// size update or two at the start.
fn encode_randomly(rng: &mut Rng, model: &mut Model, fields: &Fields) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(3) {
        if rng.below(3) == 0 {
            let size = rng.below(TABLE_SIZE + 1);
            put_integer(&mut out, 0x20, 5, size);
            model.resize(size);
        }
    }
    for (name, value) in fields {
        let find = |pred: &dyn Fn(&[u8], &[u8]) -> bool| {
            let statics = pachgate_h2_wire::hpack_decode::STATIC_TABLE
                .iter()
                .map(|(n, v)| (n.as_bytes(), v.as_bytes()));
            let dynamics = model.entries.iter().map(|(n, v)| (&n[..], &v[..]));
            statics
                .chain(dynamics)
                .position(|(n, v)| pred(n, v))
                .map(|i| i + 1)
        };
        let whole = find(&|n, v| n == &name[..] && v == &value[..]);
        if let Some(index) = whole.filter(|_| rng.below(4) != 0) {
            put_integer(&mut out, 0x80, 7, index);
            continue;
        }
        let name_index = find(&|n, _| n == &name[..]).filter(|_| rng.below(4) != 0);
        let (pattern, prefix) = match rng.below(3) {
            0 => (0x40, 6),
            1 => (0x00, 4),
            _ => (0x10, 4),
        };
        put_integer(&mut out, pattern, prefix, name_index.unwrap_or(0));
        if name_index.is_none() {
            put_string(&mut out, name, rng.below(2) == 0);
        }
        put_string(&mut out, value, rng.below(2) == 0);
        if pattern == 0x40 {
            model.insert(name, value);
        }
    }
    out
}

#[test]
fn loona_encoded_blocks_decode_alike() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..200 {
        let mut encoder = loona_hpack::Encoder::new();
        let mut mine = Decoder::new(TABLE_SIZE);
        let mut theirs = reference_decoder();
        for _ in 0..20 {
            let fields = random_fields(&mut rng);
            let block = encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..])));
            assert_eq!(ours(&mut mine, &block).as_ref(), Ok(&fields));
            assert_eq!(reference(&mut theirs, &block).as_ref(), Ok(&fields));
        }
    }
}

#[test]
fn huffman_and_every_representation_decode_alike() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let huffman_before = HUFFMAN_STRINGS.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..200 {
        let mut model = Model {
            entries: VecDeque::new(),
            size: 0,
            capacity: TABLE_SIZE,
        };
        let mut mine = Decoder::new(TABLE_SIZE);
        let mut theirs = reference_decoder();
        for _ in 0..20 {
            let fields = random_fields(&mut rng);
            let block = encode_randomly(&mut rng, &mut model, &fields);
            assert_eq!(ours(&mut mine, &block).as_ref(), Ok(&fields));
            let table: Vec<(&[u8], &[u8])> = mine.table_entries().collect();
            let expected: Vec<(&[u8], &[u8])> = model
                .entries
                .iter()
                .map(|(n, v)| (&n[..], &v[..]))
                .collect();
            assert_eq!(table, expected);
            assert_eq!(mine.table_capacity(), model.capacity);
            // loona refuses a block that is nothing but size updates (valid HPACK).
            if !fields.is_empty() {
                assert_eq!(reference(&mut theirs, &block).as_ref(), Ok(&fields));
            } else {
                theirs.set_max_table_size(model.capacity);
            }
        }
    }
    let huffman_strings =
        HUFFMAN_STRINGS.load(std::sync::atomic::Ordering::Relaxed) - huffman_before;
    assert!(
        huffman_strings > 1_000,
        "{huffman_strings} Huffman-coded strings"
    );
}

#[test]
fn mutated_blocks_decode_alike_or_fail_alike() {
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let (mut agreed_ok, mut agreed_err, mut size_update_cases) = (0, 0, 0);
    for _ in 0..4_000 {
        let mut model = Model {
            entries: VecDeque::new(),
            size: 0,
            capacity: TABLE_SIZE,
        };
        let mut mine = Decoder::new(TABLE_SIZE);
        let mut theirs = reference_decoder();
        for _ in 0..6 {
            let fields = random_fields(&mut rng);
            let mut block = encode_randomly(&mut rng, &mut model, &fields);
            if block.is_empty() {
                continue;
            }
            for _ in 0..=rng.below(3) {
                if block.is_empty() {
                    break;
                }
                let at = rng.below(block.len());
                match rng.below(4) {
                    0 => block[at] = rng.next() as u8,
                    1 => block[at] ^= 1 << rng.below(8),
                    2 => block.truncate(at),
                    _ => block.insert(at, rng.next() as u8),
                }
            }
            let (a, b) = (ours(&mut mine, &block), reference(&mut theirs, &block));
            match (&a, &b) {
                (Ok(x), Ok(y)) => {
                    assert_eq!(x, y, "{block:02x?}");
                    agreed_ok += 1;
                }
                (Err(_), Err(_)) => {
                    agreed_err += 1;
                    break;
                }
                // loona takes a size update after a field, which §4.2 forbids.
                (Err(DecodeError::LateSizeUpdate), Ok(_)) => {
                    size_update_cases += 1;
                    break;
                }
                // loona refuses a block that ends in a size update; ours only when the
                // update is late, so here the block is nothing but size updates.
                (Ok(x), Err(loona_hpack::decoder::DecoderError::SizeUpdateAtEnd))
                    if x.is_empty() =>
                {
                    size_update_cases += 1;
                    break;
                }
                _ => panic!("ours {a:?}, loona's {b:?} on {block:02x?}"),
            }
            // Both went on, but the mutation may have desynchronised the test's model.
            model.entries = mine
                .table_entries()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect();
            model.size = mine.table_size();
            model.capacity = mine.table_capacity();
        }
    }
    assert!(agreed_ok > 1_000, "{agreed_ok}");
    assert!(agreed_err > 1_000, "{agreed_err}");
    eprintln!(
        "agreed: {agreed_ok} ok, {agreed_err} errors; size update cases: {size_update_cases}"
    );
}
