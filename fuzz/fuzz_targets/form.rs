//! Token, introspection and revocation request bodies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = mayfly_proto::Form::parse(data, &["resource"]) {
        let _ = form.get("grant_type");
        let _ = form.get_all("resource");
    }
});
