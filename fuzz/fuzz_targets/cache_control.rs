//! `Cache-Control` values from the issuers whose keys mayfly fetches.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = mayfly_proto::cache::freshness(text);
    }
});
