//! The PROXY protocol v1/v2 parser on arbitrary connection starts. Besides not panicking:
//! a complete header's length lies within the bytes seen, and every prefix of a complete
//! header is either "need more" or the same verdict (the reader peeks, sees a prefix first,
//! and must never reject a header it would accept once whole).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pachgate_proxy_core::proxy_protocol::parse;

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Some((length, client))) = &whole {
        assert!(*length <= data.len(), "header length {length} past the {} bytes seen", data.len());
        // The header alone parses the same.
        assert_eq!(parse(&data[..*length]), Ok(Some((*length, *client))));
        for cut in 0..*length {
            match parse(&data[..cut]) {
                Ok(None) => {}
                other => panic!("prefix of {cut} bytes of an accepted header gave {other:?}"),
            }
        }
    }
});
