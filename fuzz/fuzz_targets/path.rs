//! Request paths through `mayfly proxy` (the normal form its route policies decide on and its
//! upstreams receive).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mayfly_proto::path::NormalPath;

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = NormalPath::new(raw) else {
        return;
    };
    let s = n.as_str();
    // No `//`, no dot segment (also with a `;` parameter), no `\`.
    assert!(s.starts_with('/') && !s.contains("//") && !s.contains('\\'), "{raw:?}");
    assert!(
        s[1..]
            .split('/')
            .all(|g| !matches!(g.split(';').next(), Some("." | ".."))),
        "{raw:?}"
    );
    // Idempotent; unchanged means byte for byte.
    assert_eq!(NormalPath::new(s).as_ref().map(NormalPath::rewritten), Ok(false));
    if !n.rewritten() {
        assert_eq!(s, raw);
    }
    // Escapes left: upper-case hex, never an unreserved character, `/`, `\` or NUL.
    for (i, _) in s.match_indices('%') {
        let hex = &s[i + 1..i + 3];
        assert!(!hex.bytes().any(|c| c.is_ascii_lowercase()), "{raw:?}");
        let v = u8::from_str_radix(hex, 16).unwrap();
        assert!(!unreserved(v) && !matches!(v, b'/' | b'\\' | 0), "{raw:?}");
    }
    // Lower-cased for a case-insensitive upstream, it is still normal.
    let lower = n.clone().into_ascii_lowercase();
    assert_eq!(
        NormalPath::new(lower.as_str()).as_ref().map(NormalPath::rewritten),
        Ok(false),
        "{raw:?}"
    );
    // What a policy sees has the same segments as what is forwarded.
    let d = n.decoded();
    assert_eq!(d.split('/').count(), s.split('/').count(), "{raw:?}");
    assert!(d[1..].split('/').all(|g| !matches!(g, "." | "..")), "{raw:?}");
    assert!(!d.contains(['\\', '\0']), "{raw:?}");
});
