//! The capped gunzip reader over any bytes: never more than the cap, never a panic.
#![no_main]
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use mayfly_scan_sources::CappedGunzip;

const CAP: u64 = 1 << 20;

fuzz_target!(|data: &[u8]| {
    let mut reader = CappedGunzip::new(data, CAP);
    let mut buf = [0u8; 8192];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n as u64,
        }
    }
    assert!(total <= CAP);
});
