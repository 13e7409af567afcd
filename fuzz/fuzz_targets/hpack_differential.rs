//! A run of header blocks (each prefixed by its length byte) through pachgate's HPACK
//! decoder (`pachgate_h2_wire::hpack_decode`) and loona-hpack's, each with its own dynamic
//! table of 4096 bytes: the same fields block by block, or both fail. The two differences
//! RFC 7541 §4.2 makes (we refuse a size update after a field, loona takes it; loona
//! refuses a block of nothing but size updates, we take it) end the run. Also: our table's
//! size stays within its capacity and our maximum, and the input Huffman-coded by our
//! encoder decodes back to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pachgate_h2_wire::hpack_decode::{DecodeError, Decoder};
use pachgate_h2_wire::huffman;

const TABLE_SIZE: usize = 4096;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fuzz_target!(|data: &[u8]| {
    let mut coded = Vec::new();
    huffman::encode(data, &mut coded);
    let mut decoded = Vec::new();
    assert_eq!(huffman::decode(&coded, &mut decoded), Ok(()));
    assert_eq!(decoded, data);

    let mut ours = Decoder::new(TABLE_SIZE);
    let mut theirs = loona_hpack::Decoder::new();
    theirs.set_max_allowed_table_size(TABLE_SIZE);
    let mut rest = data;
    while let Some((&length, tail)) = rest.split_first() {
        let (block, tail) = tail.split_at(usize::from(length).min(tail.len()));
        rest = tail;
        let mut mine: Fields = Vec::new();
        let a = ours.decode(block, |field| {
            mine.push((field.name.to_vec(), field.value.to_vec()))
        });
        let mut reference: Fields = Vec::new();
        let b = theirs.decode_with_cb(block, |name, value| {
            reference.push((name.into_owned(), value.into_owned()))
        });
        let entries: usize = ours
            .table_entries()
            .map(|(name, value)| name.len() + value.len() + 32)
            .sum();
        assert_eq!(entries, ours.table_size());
        assert!(ours.table_size() <= ours.table_capacity());
        assert!(ours.table_capacity() <= TABLE_SIZE);
        match (a, b) {
            (Ok(()), Ok(())) => assert_eq!(mine, reference, "{block:02x?}"),
            (Err(_), Err(_)) => return,
            (Err(DecodeError::LateSizeUpdate), Ok(())) => return,
            (Ok(()), Err(loona_hpack::decoder::DecoderError::SizeUpdateAtEnd))
                if mine.is_empty() =>
            {
                return
            }
            (a, b) => panic!("ours {a:?}, loona's {b:?} on {block:02x?}"),
        }
    }
});
