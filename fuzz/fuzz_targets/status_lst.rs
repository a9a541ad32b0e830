//! The `lst` member of a status list (base64url of a ZLIB stream): bounded decompression, and
//! every list that decodes encodes back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mayfly_client::status::StatusBits;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for bits in [1, 2, 0] {
        if let Ok(list) = StatusBits::decode_lst(text, bits) {
            assert!(list.len() <= mayfly_client::status::MAX_LIST_BYTES * 8);
            let again = StatusBits::decode_lst(&list.encode_lst(), 1).expect("round trip");
            assert_eq!(again, list);
        }
    }
});
