//! Image tarballs: any bytes as a `docker save` or OCI layout tarball, every item drained.
#![no_main]
use std::io::{Cursor, Read};

use libfuzzer_sys::fuzz_target;
use mayfly_scan_sources::{Origin, Sink, SourceError, WalkOptions, image_from_reader};

/// Reads every item to its end.
struct Drain;

impl Sink for Drain {
    fn item(&self, _origin: &Origin, reader: &mut dyn Read) -> std::io::Result<()> {
        std::io::copy(reader, &mut std::io::sink()).map(|_| ())
    }

    fn error(&self, _what: &str, err: &SourceError) {
        let _ = err.to_string();
    }
}

fuzz_target!(|data: &[u8]| {
    // A small cap keeps each input's work bounded: layers may decompress to at most
    // max(1 MiB, 1024 x their size).
    let opts = WalkOptions {
        threads: 1,
        max_gunzip_bytes: 1 << 20,
        ..WalkOptions::default()
    };
    let _ = image_from_reader(Cursor::new(data), "fuzz.tar", &opts, &Drain);
});
