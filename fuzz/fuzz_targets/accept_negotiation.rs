//! The `Accept` negotiation that decides whether a refusal on pachd's file server is HTML
//! (`prefers_html`, with its port of Go's float syntax for q values) on arbitrary header
//! bytes. Besides not panicking (fuzz builds keep overflow checks) and finishing within
//! libFuzzer's time limit (a header is ranked in bounded work): the answer is the same when
//! asked twice.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pachgate_proxy_core::fuzzing::accept_prefers_html;

fuzz_target!(|data: &[u8]| {
    let html = accept_prefers_html(data);
    assert_eq!(html, accept_prefers_html(data), "not deterministic");
});
