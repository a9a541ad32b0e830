//! `mayfly import` files (JSON lines from another machine): the header, every table's rows and
//! the trailer, decoded as import decodes them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mayfly_store::fuzz_decode_export(data);
});
