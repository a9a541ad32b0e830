//! SPIFFE bundle documents fetched from another trust domain's bundle endpoint, and the
//! bundle in the agent API's wire form.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mayfly_spiffe::TrustBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = TrustBundle::parse("example.org", data) {
        // What parses can be written back out and parses to the same bundle.
        if let Ok(doc) = bundle.to_document() {
            let again = TrustBundle::parse("example.org", doc.to_string().as_bytes());
            assert_eq!(again.as_ref(), Ok(&bundle));
        }
        let _ = bundle.x509_pem();
    }
    if let Ok(wire) = serde_json::from_slice::<mayfly_proto::spiffe::BundleWire>(data) {
        let _ = TrustBundle::from_wire(&wire);
    }
});
