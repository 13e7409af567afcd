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
