//! pachgate's upstream h2 client fed arbitrary frames by its upstream: two requests open,
//! responses and bodies read as far as they go. Any panic (overflow included: fuzz builds
//! keep debug assertions) is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    pachgate_h2_upstream::fuzzing::h2_client_frames(data);
});
