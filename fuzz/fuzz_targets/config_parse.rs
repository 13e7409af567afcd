//! The config loader (TOML → typed config → validation) on arbitrary text. A bad file must
//! be an error with a location, never a panic: `pachgate check` and reloads run it on files
//! operators edit by hand.
//!
//! src/config/ lives in the binary crate, which has no library target. It is included
//! here by path rather than by adding a `src/lib.rs` to the binary: the module only needs
//! the workspace's library crates, and the main crate stays as it is.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../src/config/mod.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative paths in the text resolve under a directory that does not exist, so the
    // loader never reads (or writes) anything real.
    let base = Path::new("pachgate-fuzz-no-such-dir");
    if let Err(errors) = config::parse(Path::new("fuzz.toml"), text, base) {
        assert!(!errors.is_empty(), "an error result with no errors");
        for error in &errors {
            // Locations are 1-based and inside the text (one past the end at most).
            assert!(error.line >= 1 && error.column >= 1, "{error}");
            assert!(error.line <= text.lines().count().max(1) + 1, "{error}");
        }
    }
});
