//! The HTTP/1 framing guard (request-smuggling detector) on arbitrary client bytes. Besides
//! not panicking: the verdict does not depend on how the bytes were split into reads, which
//! is the one thing a byte-stream observer must get right. The first input byte chooses the
//! read sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pachgate_proxy_core::framing_guard::FramingTracker;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let mut whole = FramingTracker::default();
    let at_once = whole.feed(bytes);

    let mut pieces = FramingTracker::default();
    let mut first = None;
    let mut rest = bytes;
    let mut step = usize::from(split % 17) + 1;
    while !rest.is_empty() {
        let take = step.min(rest.len());
        let flagged = pieces.feed(&rest[..take]);
        first = first.or(flagged);
        rest = &rest[take..];
        // Vary the read size as a socket would: 1..=17, then from the data itself.
        step = usize::from(rest.first().copied().unwrap_or(0) % 17) + 1;
    }
    assert_eq!(at_once, first, "the verdict changed with the read sizes");
});
