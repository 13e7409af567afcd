//! A run of response header blocks through the upstream h2 client's HPACK decoding and
//! its limits (field count, decoded size, table size): no panic, and nothing decoded past
//! the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pachgate_h2_upstream::fuzzing::hpack_response_blocks(data);
});
