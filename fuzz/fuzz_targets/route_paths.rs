//! `normalize_path` (the view of a request's path that routing and the gate see) on
//! arbitrary text, raw UTF-8 included (httparse and the `http` crate let it through). Besides
//! not panicking: a normalised path starts with `/`, has no empty, `.` or `..` segment and
//! no percent-encoded unreserved character (`%2e`, `%41`, …) left, and normalising it again
//! changes nothing (for paths without an invalid escape, which are refused before routing).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pachgate_routing::{has_invalid_escape, normalize_path};

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    let Some(normal) = normalize_path(path) else {
        return;
    };
    // A path with an invalid escape is refused before routing; it only must not panic.
    if has_invalid_escape(path) {
        return;
    }
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
    for segment in normal[1..].split('/') {
        assert!(segment != "." && segment != "..", "{path:?} -> {normal:?}");
    }
    let unreserved_left = normal.as_bytes().windows(3).any(|w| {
        let hex = |b: u8| (b as char).to_digit(16);
        match (w[0], hex(w[1]), hex(w[2])) {
            (b'%', Some(high), Some(low)) => {
                let byte = (high * 16 + low) as u8;
                byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)
            }
            _ => false,
        }
    });
    assert!(!unreserved_left, "{path:?} -> {normal:?}");
    assert_eq!(normalize_path(&normal), None, "{path:?} -> {normal:?} is not final");
});
