//! An HPACK decoder (RFC 7541) for the header blocks a peer sends: integers, raw and
//! Huffman-coded literals, the static and dynamic tables, size updates. Every byte it reads
//! is the peer's, so every malformed input is an error value, and the work done is linear in
//! the block: no table is built per string, and a field naming a table entry is handed over
//! borrowed (a dynamic entry's name is shared with the entries that reuse it, never copied).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use crate::huffman::{self, HuffmanError};

/// Continuation bytes an integer may take past its prefix: 4 carry 28 bits, more than any
/// index, string or table size in a block that fits in memory needs, and they cannot
/// overflow even a 32-bit `usize`.
const MAX_INTEGER_CONTINUATIONS: usize = 4;

/// Scratch space kept between blocks; a block with longer Huffman strings frees what it took.
const SCRATCH_KEPT: usize = 8 * 1024;

/// What each table entry costs beyond its name and value (RFC 7541 §4.1).
pub const ENTRY_OVERHEAD: usize = 32;

/// The static table (RFC 7541 Appendix A); index 1 is the first entry.
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// Why a header block cannot be decoded. Any of these is a connection error
/// (COMPRESSION_ERROR): the decoder's table is no longer known to be in step with the peer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// An integer or a string runs past the end of the block.
    Truncated,
    /// An integer with more continuation bytes than any honest value needs.
    IntegerTooLong,
    /// Index 0, or past the static and dynamic tables.
    BadIndex(usize),
    /// A Huffman-coded string that breaks RFC 7541 §5.2.
    Huffman(HuffmanError),
    /// A dynamic table size update after the block's first field.
    LateSizeUpdate,
    /// A dynamic table size update above the size we allow (our SETTINGS_HEADER_TABLE_SIZE).
    SizeUpdateTooLarge { size: usize, max: usize },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("integer or string past the block's end"),
            DecodeError::IntegerTooLong => f.write_str("integer too long"),
            DecodeError::BadIndex(index) => write!(f, "no table entry {index}"),
            DecodeError::Huffman(error) => error.fmt(f),
            DecodeError::LateSizeUpdate => f.write_str("table size update after a field"),
            DecodeError::SizeUpdateTooLarge { size, max } => {
                write!(f, "table size update to {size}, above {max}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

impl From<HuffmanError> for DecodeError {
    fn from(error: HuffmanError) -> Self {
        DecodeError::Huffman(error)
    }
}

/// How a field was represented (RFC 7541 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    /// A whole table entry (§6.1).
    Indexed,
    /// A literal added to the dynamic table (§6.2.1).
    IncrementalIndexing,
    /// A literal not added (§6.2.2).
    WithoutIndexing,
    /// A literal that intermediaries must pass on as a literal, never indexed (§6.2.3).
    NeverIndexed,
}

/// A decoded header field, borrowed from the block, the tables or the decoder's scratch
/// space until the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub name: &'a [u8],
    pub value: &'a [u8],
    pub representation: Representation,
}

impl Field<'_> {
    /// The peer marked the field as sensitive (§6.2.3): re-encode it as never indexed.
    pub fn never_indexed(&self) -> bool {
        self.representation == Representation::NeverIndexed
    }
}

/// An HPACK integer (§5.1) at the start of `bytes` with a `prefix_bits` prefix: its value
/// and the bytes it took.
pub fn decode_integer(bytes: &[u8], prefix_bits: u32) -> Result<(usize, usize), DecodeError> {
    debug_assert!(
        (1..=8).contains(&prefix_bits),
        "an HPACK prefix is 1 to 8 bits"
    );
    let max = (1usize << prefix_bits) - 1;
    let Some(&first) = bytes.first() else {
        return Err(DecodeError::Truncated);
    };
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok((value, 1));
    }
    for (i, &byte) in bytes[1..]
        .iter()
        .take(MAX_INTEGER_CONTINUATIONS)
        .enumerate()
    {
        value += usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok((value, i + 2));
        }
    }
    if bytes.len() > 1 + MAX_INTEGER_CONTINUATIONS {
        Err(DecodeError::IntegerTooLong)
    } else {
        Err(DecodeError::Truncated)
    }
}

/// A table entry's name: a static entry's, or bytes shared by every entry that reuses it.
#[derive(Clone)]
enum Name {
    Static(&'static [u8]),
    Shared(Arc<[u8]>),
}

impl Name {
    fn bytes(&self) -> &[u8] {
        match self {
            Name::Static(name) => name,
            Name::Shared(name) => name,
        }
    }
}

struct Entry {
    name: Name,
    value: Box<[u8]>,
}

impl Entry {
    fn size(&self) -> usize {
        self.name.bytes().len() + self.value.len() + ENTRY_OVERHEAD
    }
}

/// Where a decoded string lies.
#[derive(Clone, Copy)]
enum Text {
    Block(usize, usize),
    Scratch(usize, usize),
}

impl Text {
    fn get<'a>(self, block: &'a [u8], scratch: &'a [u8]) -> &'a [u8] {
        match self {
            Text::Block(start, end) => &block[start..end],
            Text::Scratch(start, end) => &scratch[start..end],
        }
    }
}

/// A literal's name: a table index (checked) or a string.
#[derive(Clone, Copy)]
enum NameRef {
    Index(usize),
    Text(Text),
}

/// The decoding side of one connection: its dynamic table, in step with the peer's encoder
/// as long as every block is decoded in order and none failed.
pub struct Decoder {
    /// Newest first: dynamic index 62 is `entries[0]`.
    entries: VecDeque<Entry>,
    /// RFC 7541's size of the entries (name + value + 32 each).
    size: usize,
    /// The table's maximum size, as the peer's last size update set it.
    capacity: usize,
    /// The most a size update may set: what we advertise as SETTINGS_HEADER_TABLE_SIZE.
    max_capacity: usize,
    /// Huffman-decoded strings of the field being decoded.
    scratch: Vec<u8>,
}

impl Decoder {
    /// A decoder whose table holds up to `max_size` bytes (RFC 7541 §4.1 sizes), the
    /// SETTINGS_HEADER_TABLE_SIZE we advertise; the peer may lower it with size updates,
    /// and raise it again up to this.
    pub fn new(max_size: usize) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            capacity: max_size,
            max_capacity: max_size,
            scratch: Vec::new(),
        }
    }

    /// The dynamic table's size now (name + value + 32 per entry).
    pub fn table_size(&self) -> usize {
        self.size
    }

    /// The dynamic table's maximum size now (the peer's last size update, or ours).
    pub fn table_capacity(&self) -> usize {
        self.capacity
    }

    /// The dynamic table's entries, newest (index 62) first.
    pub fn table_entries(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.entries
            .iter()
            .map(|entry| (entry.name.bytes(), &entry.value[..]))
    }

    /// Decodes a whole header block, handing each field to `on_field` in order. The table
    /// is updated as the block says, so every block of the connection must go through here,
    /// even one whose fields are not wanted. On an error the fields handed over so far stand,
    /// and the decoder must not be used again (its table may be out of step).
    pub fn decode<F>(&mut self, block: &[u8], mut on_field: F) -> Result<(), DecodeError>
    where
        F: FnMut(Field<'_>),
    {
        let mut at = 0;
        let mut first_field = true;
        while let Some(&first) = block.get(at) {
            let rest = &block[at..];
            if first & 0x80 != 0 {
                let (index, taken) = decode_integer(rest, 7)?;
                let (name, value) = self.get(index)?;
                on_field(Field {
                    name,
                    value,
                    representation: Representation::Indexed,
                });
                at += taken;
            } else if first & 0xe0 == 0x20 {
                // §4.2 and §6.3: only before the block's first field.
                if !first_field {
                    return Err(DecodeError::LateSizeUpdate);
                }
                let (size, taken) = decode_integer(rest, 5)?;
                if size > self.max_capacity {
                    return Err(DecodeError::SizeUpdateTooLarge {
                        size,
                        max: self.max_capacity,
                    });
                }
                self.capacity = size;
                self.evict_to(size);
                at += taken;
                continue;
            } else {
                let (representation, prefix) = match first & 0xf0 {
                    0x40..=0x70 => (Representation::IncrementalIndexing, 6),
                    0x10 => (Representation::NeverIndexed, 4),
                    _ => (Representation::WithoutIndexing, 4),
                };
                self.scratch.clear();
                let (index, mut taken) = decode_integer(rest, prefix)?;
                let name = if index == 0 {
                    let (text, length) = self.string(block, at + taken)?;
                    taken += length;
                    NameRef::Text(text)
                } else {
                    self.get(index)?;
                    NameRef::Index(index)
                };
                let (value, length) = self.string(block, at + taken)?;
                taken += length;
                at += taken;
                if representation == Representation::IncrementalIndexing {
                    let entry = Entry {
                        name: match name {
                            NameRef::Index(index) => self.name_of(index),
                            NameRef::Text(text) => {
                                Name::Shared(Arc::from(text.get(block, &self.scratch)))
                            }
                        },
                        value: Box::from(value.get(block, &self.scratch)),
                    };
                    on_field(Field {
                        name: entry.name.bytes(),
                        value: &entry.value,
                        representation,
                    });
                    self.insert(entry);
                } else {
                    let name = match name {
                        NameRef::Index(index) => self.get(index)?.0,
                        NameRef::Text(text) => text.get(block, &self.scratch),
                    };
                    on_field(Field {
                        name,
                        value: value.get(block, &self.scratch),
                        representation,
                    });
                }
            }
            first_field = false;
        }
        if self.scratch.capacity() > SCRATCH_KEPT {
            self.scratch = Vec::new();
        }
        Ok(())
    }

    /// A string literal (§5.2) at `at`: where its bytes are and the bytes it took.
    fn string(&mut self, block: &[u8], at: usize) -> Result<(Text, usize), DecodeError> {
        let rest = &block[at.min(block.len())..];
        let (length, taken) = decode_integer(rest, 7)?;
        if rest.len() - taken < length {
            return Err(DecodeError::Truncated);
        }
        let start = at + taken;
        let end = start + length;
        if rest[0] & 0x80 == 0 {
            return Ok((Text::Block(start, end), taken + length));
        }
        let from = self.scratch.len();
        huffman::decode(&block[start..end], &mut self.scratch)?;
        Ok((Text::Scratch(from, self.scratch.len()), taken + length))
    }

    /// The entry at `index` of the static then the dynamic table.
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), DecodeError> {
        match index {
            0 => Err(DecodeError::BadIndex(0)),
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Ok((name.as_bytes(), value.as_bytes()))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|entry| (entry.name.bytes(), &entry.value[..]))
                .ok_or(DecodeError::BadIndex(index)),
        }
    }

    /// The name of a (checked) index, to share with a new entry.
    fn name_of(&self, index: usize) -> Name {
        match index {
            1..=61 => Name::Static(STATIC_TABLE[index - 1].0.as_bytes()),
            _ => self.entries[index - 62].name.clone(),
        }
    }

    /// Adds an entry (§4.4): older entries are evicted to make room, and an entry larger
    /// than the whole table empties it and is not added.
    fn insert(&mut self, entry: Entry) {
        let size = entry.size();
        if size > self.capacity {
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict_to(self.capacity - size);
        self.size += size;
        self.entries.push_front(entry);
    }

    fn evict_to(&mut self, size: usize) {
        while self.size > size {
            let Some(oldest) = self.entries.pop_back() else {
                break;
            };
            self.size -= oldest.size();
        }
    }
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("entries", &self.entries.len())
            .field("size", &self.size)
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes from the hex dumps of RFC 7541 Appendix C (spaces ignored).
    fn hex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    type Fields = Vec<(String, String, Representation)>;

    fn decode(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, DecodeError> {
        let mut fields = Vec::new();
        decoder
            .decode(block, |field| {
                fields.push((
                    String::from_utf8_lossy(field.name).into_owned(),
                    String::from_utf8_lossy(field.value).into_owned(),
                    field.representation,
                ))
            })
            .map(|()| fields)
    }

    fn pairs(fields: &Fields) -> Vec<(&str, &str)> {
        fields
            .iter()
            .map(|(name, value, _)| (name.as_str(), value.as_str()))
            .collect()
    }

    fn table(decoder: &Decoder) -> Vec<(String, String)> {
        decoder
            .table_entries()
            .map(|(name, value)| {
                (
                    String::from_utf8(name.to_vec()).unwrap(),
                    String::from_utf8(value.to_vec()).unwrap(),
                )
            })
            .collect()
    }

    fn owned(entries: &[(&str, &str)]) -> Vec<(String, String)> {
        entries
            .iter()
            .map(|&(name, value)| (name.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn integers_of_rfc_7541_c1_and_their_bounds() {
        assert_eq!(decode_integer(&[0x0a], 5), Ok((10, 1)));
        assert_eq!(decode_integer(&[0xea], 5), Ok((10, 1))); // bits above the prefix ignored
        assert_eq!(decode_integer(&[31, 154, 10], 5), Ok((1337, 3)));
        assert_eq!(decode_integer(&[42], 8), Ok((42, 1)));
        assert_eq!(decode_integer(&[0x1f, 0], 5), Ok((31, 2)));
        // The largest value: four continuation bytes, the last without its high bit.
        assert_eq!(
            decode_integer(&[0x1f, 0xff, 0xff, 0xff, 0x7f], 5),
            Ok((31 + (1 << 28) - 1, 5))
        );
        // A fifth continuation byte, even a zero one, is one too many.
        assert_eq!(
            decode_integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x00], 5),
            Err(DecodeError::IntegerTooLong)
        );
        assert_eq!(
            decode_integer(
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
                7
            ),
            Err(DecodeError::IntegerTooLong)
        );
        assert_eq!(decode_integer(&[], 7), Err(DecodeError::Truncated));
        assert_eq!(decode_integer(&[0x7f], 7), Err(DecodeError::Truncated));
        assert_eq!(
            decode_integer(&[0x7f, 0x80], 7),
            Err(DecodeError::Truncated)
        );
        // Whatever put_integer writes comes back.
        for prefix in 1..=8 {
            for value in [
                0,
                1,
                30,
                31,
                127,
                128,
                255,
                256,
                1337,
                4096,
                65_535,
                1 << 27,
            ] {
                let mut out = Vec::new();
                crate::put_integer(&mut out, 0, prefix, value);
                out.push(0xaa); // what follows is not read
                assert_eq!(
                    decode_integer(&out, prefix),
                    Ok((value, out.len() - 1)),
                    "{value} with a {prefix}-bit prefix"
                );
            }
        }
    }

    #[test]
    fn rfc_7541_c2_each_representation() {
        let mut decoder = Decoder::new(4096);
        let fields = decode(
            &mut decoder,
            &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
        )
        .unwrap();
        assert_eq!(pairs(&fields), [("custom-key", "custom-header")]);
        assert_eq!(fields[0].2, Representation::IncrementalIndexing);
        assert_eq!(table(&decoder), owned(&[("custom-key", "custom-header")]));
        assert_eq!(decoder.table_size(), 55);

        let mut decoder = Decoder::new(4096);
        let fields = decode(&mut decoder, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
        assert_eq!(pairs(&fields), [(":path", "/sample/path")]);
        assert_eq!(fields[0].2, Representation::WithoutIndexing);
        assert_eq!(decoder.table_size(), 0);

        let mut decoder = Decoder::new(4096);
        let mut never_indexed = Vec::new();
        decoder
            .decode(
                &hex("1008 7061 7373 776f 7264 0673 6563 7265 74"),
                |field| {
                    never_indexed.push((
                        field.name.to_vec(),
                        field.value.to_vec(),
                        field.never_indexed(),
                    ))
                },
            )
            .unwrap();
        assert_eq!(
            never_indexed,
            [(b"password".to_vec(), b"secret".to_vec(), true)]
        );
        assert_eq!(decoder.table_size(), 0);

        let fields = decode(&mut decoder, &[0x82]).unwrap();
        assert_eq!(pairs(&fields), [(":method", "GET")]);
        assert_eq!(fields[0].2, Representation::Indexed);
        assert!(decoder.table_entries().next().is_none());
    }

    /// Three requests on one decoder (C.3 raw, C.4 Huffman-coded): the same fields and tables.
    fn requests(blocks: [&str; 3]) {
        let mut decoder = Decoder::new(4096);
        let fields = decode(&mut decoder, &hex(blocks[0])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com")
            ]
        );
        assert_eq!(table(&decoder), owned(&[(":authority", "www.example.com")]));
        assert_eq!(decoder.table_size(), 57);

        let fields = decode(&mut decoder, &hex(blocks[1])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
                ("cache-control", "no-cache")
            ]
        );
        assert_eq!(
            table(&decoder),
            owned(&[
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(decoder.table_size(), 110);

        let fields = decode(&mut decoder, &hex(blocks[2])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value")
            ]
        );
        assert_eq!(
            table(&decoder),
            owned(&[
                ("custom-key", "custom-value"),
                ("cache-control", "no-cache"),
                (":authority", "www.example.com")
            ])
        );
        assert_eq!(decoder.table_size(), 164);
    }

    #[test]
    fn rfc_7541_c3_requests_without_huffman() {
        requests([
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ]);
    }

    #[test]
    fn rfc_7541_c4_requests_with_huffman() {
        requests([
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ]);
    }

    /// Three responses on a 256-byte table (C.5 raw, C.6 Huffman-coded): entries evicted.
    fn responses(blocks: [&str; 3]) {
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let location = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        let mut decoder = Decoder::new(256);
        let fields = decode(&mut decoder, &hex(blocks[0])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":status", "302"),
                ("cache-control", "private"),
                ("date", date1),
                ("location", location)
            ]
        );
        assert_eq!(
            table(&decoder),
            owned(&[
                ("location", location),
                ("date", date1),
                ("cache-control", "private"),
                (":status", "302")
            ])
        );
        assert_eq!(decoder.table_size(), 222);

        let fields = decode(&mut decoder, &hex(blocks[1])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":status", "307"),
                ("cache-control", "private"),
                ("date", date1),
                ("location", location)
            ]
        );
        assert_eq!(
            table(&decoder),
            owned(&[
                (":status", "307"),
                ("location", location),
                ("date", date1),
                ("cache-control", "private")
            ])
        );
        assert_eq!(decoder.table_size(), 222);

        let fields = decode(&mut decoder, &hex(blocks[2])).unwrap();
        assert_eq!(
            pairs(&fields),
            [
                (":status", "200"),
                ("cache-control", "private"),
                ("date", date2),
                ("location", location),
                ("content-encoding", "gzip"),
                ("set-cookie", cookie)
            ]
        );
        assert_eq!(
            table(&decoder),
            owned(&[
                ("set-cookie", cookie),
                ("content-encoding", "gzip"),
                ("date", date2)
            ])
        );
        assert_eq!(decoder.table_size(), 215);
    }

    #[test]
    fn rfc_7541_c5_responses_without_huffman() {
        responses([
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ]);
    }

    #[test]
    fn rfc_7541_c6_responses_with_huffman() {
        responses([
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ]);
    }

    #[test]
    fn size_updates_only_start_a_block_and_never_pass_our_maximum() {
        let entry = hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572");
        let mut decoder = Decoder::new(4096);
        decode(&mut decoder, &entry).unwrap();
        assert_eq!(decoder.table_size(), 55);
        // To 0 (evicting everything) and back to 4096, then a field: all at the start.
        let mut block = vec![0x20, 0x3f, 0xe1, 0x1f];
        block.push(0x82);
        assert_eq!(
            pairs(&decode(&mut decoder, &block).unwrap()),
            [(":method", "GET")]
        );
        assert_eq!(decoder.table_size(), 0);
        assert_eq!(decoder.table_capacity(), 4096);
        // A block of nothing but a size update is an empty field list.
        assert_eq!(decode(&mut decoder, &[0x3f, 0x11]).unwrap(), []);
        assert_eq!(decoder.table_capacity(), 48);
        // An entry larger than the table empties it and is not added (RFC 7541 §4.4).
        decode(&mut decoder, &entry).unwrap();
        assert_eq!(decoder.table_size(), 0);
        assert_eq!(
            decode(&mut decoder, &[0xbe]),
            Err(DecodeError::BadIndex(62))
        );

        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0x3f, 0xe2, 0x1f]),
            Err(DecodeError::SizeUpdateTooLarge {
                size: 4097,
                max: 4096
            })
        );
        let mut decoder = Decoder::new(4096);
        assert_eq!(
            decode(&mut decoder, &[0x82, 0x20]),
            Err(DecodeError::LateSizeUpdate)
        );
        // The field before it was handed over; the block still fails.
        let mut seen = 0;
        let mut decoder = Decoder::new(0);
        assert_eq!(
            decoder.decode(&[0x82, 0x3f, 0x00], |_| seen += 1),
            Err(DecodeError::LateSizeUpdate)
        );
        assert_eq!(seen, 1);
        // Zero is the most a zero-sized table allows.
        let mut decoder = Decoder::new(0);
        assert_eq!(decode(&mut decoder, &[0x20, 0x82]).unwrap().len(), 1);
        assert_eq!(
            decode(&mut decoder, &[0x21]),
            Err(DecodeError::SizeUpdateTooLarge { size: 1, max: 0 })
        );
    }

    #[test]
    fn a_reused_name_outlives_the_entry_it_came_from() {
        // An 80-byte table fits one entry of an 8-byte name (41 bytes) and not two.
        let mut decoder = Decoder::new(80);
        let mut block = vec![0x40, 0x08];
        block.extend_from_slice(b"x-shared");
        block.extend_from_slice(&[0x01, b'a']);
        // Literal with indexing, name from index 62 (the entry above), which it evicts.
        block.extend_from_slice(&[0x7e, 0x02, b'b', b'c']);
        block.push(0xbe);
        let fields = decode(&mut decoder, &block).unwrap();
        assert_eq!(
            pairs(&fields),
            [("x-shared", "a"), ("x-shared", "bc"), ("x-shared", "bc")]
        );
        assert_eq!(table(&decoder), owned(&[("x-shared", "bc")]));
        assert_eq!(decoder.table_size(), 8 + 2 + 32);
    }

    #[test]
    fn malformed_blocks_are_errors() {
        let cases: [(&[u8], DecodeError); 10] = [
            (&[0x80], DecodeError::BadIndex(0)),
            (&[0xbe], DecodeError::BadIndex(62)),
            (
                &[0xff, 0x80, 0x80, 0x80, 0x80, 0x01],
                DecodeError::IntegerTooLong,
            ),
            // Literal names from an index past the tables.
            (&[0x7f, 0x00, 0x00], DecodeError::BadIndex(63)),
            (&[0x0f, 0x30, 0x00], DecodeError::BadIndex(63)),
            // A literal name with no value, a value shorter than its length.
            (&[0x40, 0x01, b'a'], DecodeError::Truncated),
            (&[0x00, 0x01, b'a', 0x03, b'b'], DecodeError::Truncated),
            (&[0x10], DecodeError::Truncated),
            // A Huffman value of a whole byte of ones; of EOS.
            (
                &[0x04, 0x81, 0xff],
                DecodeError::Huffman(HuffmanError::PaddingTooLong),
            ),
            (
                &[0x04, 0x84, 0xff, 0xff, 0xff, 0xff],
                DecodeError::Huffman(HuffmanError::Eos),
            ),
        ];
        for (block, error) in cases {
            assert_eq!(
                decode(&mut Decoder::new(4096), block),
                Err(error),
                "{block:02x?}"
            );
        }
        // Any bytes at all: an answer, never a panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut block = Vec::new();
            for _ in 0..(seed % 24) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                block.push(seed as u8);
            }
            let mut decoder = Decoder::new(64);
            let _ = decode(&mut decoder, &block);
            assert!(decoder.table_size() <= 64);
            seed = seed.wrapping_add(1);
        }
    }
}
