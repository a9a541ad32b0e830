//! CSRs sent by agents for signing (`X509Ca::sign_svid`), and certificates read back
//! (`SvidInfo::parse`, the peer SPIFFE ID after a handshake).
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use mayfly_crypto::x509::{SvidInfo, X509Ca};

fn ca() -> &'static X509Ca {
    static CA: OnceLock<X509Ca> = OnceLock::new();
    CA.get_or_init(|| X509Ca::self_signed("example.org", 0, 4_000_000_000).expect("CA"))
}

fuzz_target!(|data: &[u8]| {
    let dns = ["svc.example.org".to_string()];
    let _ = ca().sign_svid(data, "spiffe://example.org/fuzz", &dns, 1_000, 2_000);
    let _ = SvidInfo::parse(data);
    let _ = mayfly_spiffe::peer_spiffe_id(&[rustls_pki_types::CertificateDer::from(data)]);
});
