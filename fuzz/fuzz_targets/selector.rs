//! Workload selectors from registration entries (`mayfly entry add`, the agent's sync).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mayfly_spiffe::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sel) = text.parse::<Selector>() {
        // Display is the canonical form: it parses back to the same selector.
        assert_eq!(sel.to_string().parse::<Selector>().as_ref(), Ok(&sel));
        assert_eq!(sel.to_string(), text);
    }
    if let Ok(id) = text.parse::<mayfly_proto::SpiffeId>() {
        // The parts put back together are the text.
        assert_eq!(format!("spiffe://{}{}", id.trust_domain(), id.path()), text);
    }
});
