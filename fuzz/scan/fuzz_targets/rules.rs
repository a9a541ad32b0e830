//! The scanner's rule engine on arbitrary bytes: every built-in rule, the keyword pre-filter,
//! the validators, chunking through a reader that returns odd-sized pieces. Must never panic,
//! and must find the same secrets however the input is split into reads.
#![no_main]

use std::io::Read;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mayfly_scan::{RuleSet, Scanner};

static SCANNER: OnceLock<Scanner> = OnceLock::new();

struct Pieces<'a>(&'a [u8], usize);
impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        self.1 = self.1 % 7 + 1;
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let s = SCANNER.get_or_init(|| Scanner::new(RuleSet::builtin().unwrap()).unwrap());
    let (_, whole) = s.scan_slice(data);
    let mut pieces = Vec::new();
    s.scan_reader(&mut Pieces(data, 3), &mut |m| pieces.push(m)).unwrap();
    let key = |v: &[mayfly_scan::RawMatch]| {
        v.iter().map(|m| (m.rule, m.offset, m.line, m.secret.to_vec())).collect::<Vec<_>>()
    };
    assert_eq!(key(&whole), key(&pieces));
    // User rules parse too: the same bytes as a rules file must never panic.
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = RuleSet::with_user_rules(text, "fuzz.toml");
    }
});
