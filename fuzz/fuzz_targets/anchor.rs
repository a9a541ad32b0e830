//! Audit anchor files (`mayfly audit verify --anchor FILE`): whatever the file holds, every line
//! is either an anchor or skipped, and an anchor that parses writes back to the same line form.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.lines() {
        if let Some(a) = mayfly_store::Anchor::parse_line(line) {
            assert_eq!(mayfly_store::Anchor::parse_line(&a.line()), Some(a));
        }
    }
});
