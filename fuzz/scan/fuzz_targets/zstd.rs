//! zstd, frame after frame, over any bytes: never a panic; output bounded for the fuzzer's sake.
#![no_main]
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use mayfly_scan_sources::ZstdFrames;

fuzz_target!(|data: &[u8]| {
    let mut reader = ZstdFrames::new(data).take(16 << 20);
    let _ = std::io::copy(&mut reader, &mut std::io::sink());
});
