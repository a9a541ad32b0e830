use super::*;
use rcgen::{PKCS_ECDSA_P384_SHA384, PKCS_ED25519, PKCS_RSA_SHA256};
use rustls_pki_types::UnixTime;
use webpki::aws_lc_rs as algs;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;

const TD: &str = "example.org";

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn ca() -> X509Ca {
    X509Ca::self_signed(TD, now() - 60, now() + 86_400).unwrap()
}

fn x509_err(e: CryptoError) -> X509Error {
    match e {
        CryptoError::X509(e) => e,
        other => panic!("expected an X509 error, got {other:?}"),
    }
}

/// Path validation by webpki, for both TLS usages, at `at`.
fn webpki_verify(chain: &[Vec<u8>], roots: &[Vec<u8>], at: i64) -> Result<(), webpki::Error> {
    let sig_algs = [
        algs::ECDSA_P256_SHA256,
        algs::ECDSA_P384_SHA384,
        algs::ED25519,
        algs::RSA_PKCS1_2048_8192_SHA256,
    ];
    let root_ders: Vec<CertificateDer<'_>> = roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors: Vec<_> = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).unwrap())
        .collect();
    let leaf = CertificateDer::from(chain[0].as_slice());
    let intermediates: Vec<CertificateDer<'_>> = chain[1..]
        .iter()
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let ee = webpki::EndEntityCert::try_from(&leaf)?;
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(at as u64));
    for usage in [
        webpki::KeyUsage::server_auth(),
        webpki::KeyUsage::client_auth(),
    ] {
        ee.verify_for_usage(&sig_algs, &anchors, &intermediates, time, usage, None, None)?;
    }
    Ok(())
}

/// The `spiffe` crate's X.509-SVID parser (leaf and signing-certificate rules).
fn spiffe_crate_accepts(chain: &[Vec<u8>], key: &[u8]) -> String {
    let svid = spiffe::X509Svid::parse_from_der(&chain.concat(), key)
        .unwrap_or_else(|e| panic!("spiffe crate refused our SVID: {e}"));
    svid.spiffe_id().to_string()
}

#[test]
fn self_signed_ca_has_the_signing_certificate_properties() {
    let ca = ca();
    let cert = parse_cert(ca.cert_der()).unwrap();
    assert!(cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign() && !ku.digital_signature());
    assert_eq!(single_uri_san(&cert).unwrap(), "spiffe://example.org");
    assert_eq!(ca.roots(), vec![ca.cert_der().to_vec()]);
    assert!(ca.upstream_chain().is_empty());
    assert_eq!(ca.fingerprint().len(), 64);
    assert_eq!(ca.trust_domain(), TD);
    // The spiffe crate accepts it as a bundle authority.
    let td = spiffe::TrustDomain::new(TD).unwrap();
    spiffe::X509Bundle::parse_from_der(td, ca.cert_der()).unwrap();
}

#[test]
fn svid_from_self_signed_ca_verifies_and_is_spiffe_compliant() {
    let ca = ca();
    let (key, csr) = new_svid_key_and_csr().unwrap();
    let id = "spiffe://example.org/ns/prod/sa/api";
    let dns = vec!["api.internal".to_string(), "*.api.internal".to_string()];
    let chain = ca
        .sign_svid(&csr, id, &dns, now() - 10, now() + 3600)
        .unwrap();
    assert_eq!(chain.len(), 1, "the anchor is never in the chain");

    webpki_verify(&chain, &ca.roots(), now()).unwrap();
    assert_eq!(spiffe_crate_accepts(&chain, &key), id);

    let info = SvidInfo::parse(&chain[0]).unwrap();
    assert_eq!(info.spiffe_id, id);
    assert_eq!(info.dns_names, dns);
    assert!(!info.is_ca);
    assert_eq!(info.serial.len(), 32, "16-byte serial: {}", info.serial);
    assert!(info.not_after - info.not_before >= 3600);

    let leaf = parse_cert(&chain[0]).unwrap();
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);

    // A second SVID gets another serial.
    let again = ca.sign_svid(&csr, id, &[], now(), now() + 60).unwrap();
    assert_ne!(SvidInfo::parse(&again[0]).unwrap().serial, info.serial);
}

#[test]
fn expired_svid_fails_path_validation() {
    let ca = X509Ca::self_signed(TD, now() - 7200, now() + 3600).unwrap();
    let (_, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(
            &csr,
            "spiffe://example.org/w",
            &[],
            now() - 7200,
            now() - 3600,
        )
        .unwrap();
    assert!(matches!(
        webpki_verify(&chain, &ca.roots(), now()),
        Err(webpki::Error::CertExpired { .. })
    ));
}

#[test]
fn csr_with_a_bad_signature_is_refused() {
    let ca = ca();
    let (_, mut csr) = new_svid_key_and_csr().unwrap();
    // The signature is the CSR's last field: flip a bit in its final byte.
    let last = csr.len() - 1;
    csr[last] ^= 0x01;
    let err = x509_err(
        ca.sign_svid(&csr, "spiffe://example.org/w", &[], now(), now() + 60)
            .unwrap_err(),
    );
    assert_eq!(err, X509Error::CsrSignature);
    assert!(err.to_string().contains("signature does not verify"));

    // A CSR whose key was swapped after signing.
    let (_, csr_a) = new_svid_key_and_csr().unwrap();
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut forged = csr_a.clone();
    let pk_a = {
        let parsed = X509CertificationRequest::from_der(&csr_a).unwrap().1;
        parsed
            .certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec()
    };
    let pos = forged.windows(pk_a.len()).position(|w| w == pk_a).unwrap();
    forged[pos..pos + pk_a.len()].copy_from_slice(other.public_key_raw());
    let err = x509_err(
        ca.sign_svid(&forged, "spiffe://example.org/w", &[], now(), now() + 60)
            .unwrap_err(),
    );
    assert_eq!(err, X509Error::CsrSignature);

    for junk in [&b""[..], b"\x30\x00", b"not a csr at all"] {
        let err = x509_err(
            ca.sign_svid(junk, "spiffe://example.org/w", &[], now(), now() + 60)
                .unwrap_err(),
        );
        assert_eq!(err, X509Error::CsrMalformed);
    }
}

#[test]
fn csr_subject_and_sans_are_ignored() {
    let ca = ca();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(SanType::URI(
        Ia5String::try_from("spiffe://example.org/admin").unwrap(),
    ));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().der().to_vec();
    let chain = ca
        .sign_svid(&csr, "spiffe://example.org/w", &[], now(), now() + 60)
        .unwrap();
    let info = SvidInfo::parse(&chain[0]).unwrap();
    assert_eq!(info.spiffe_id, "spiffe://example.org/w");
    assert!(info.dns_names.is_empty());
    assert!(!info.is_ca);
}

#[test]
fn other_key_types_are_accepted() {
    let ca = ca();
    for alg in [&PKCS_ECDSA_P384_SHA384, &PKCS_ED25519, &PKCS_RSA_SHA256] {
        let key = KeyPair::generate_for(alg).unwrap();
        let csr = csr_for_key(key.serialized_der()).unwrap();
        let chain = ca
            .sign_svid(&csr, "spiffe://example.org/k", &[], now() - 5, now() + 60)
            .unwrap();
        webpki_verify(&chain, &ca.roots(), now()).unwrap();
        spiffe_crate_accepts(&chain, key.serialized_der());
    }
}

#[test]
fn ttl_is_clamped_to_the_ca() {
    let ca_end = now() + 1000;
    let ca = X509Ca::self_signed(TD, now() - 60, ca_end).unwrap();
    let (_, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(&csr, "spiffe://example.org/w", &[], now(), now() + 5000)
        .unwrap();
    assert_eq!(SvidInfo::parse(&chain[0]).unwrap().not_after, ca_end);

    let err = x509_err(
        ca.sign_svid(
            &csr,
            "spiffe://example.org/w",
            &[],
            ca_end + 10,
            ca_end + 100,
        )
        .unwrap_err(),
    );
    assert!(matches!(err, X509Error::Validity(_)), "{err}");
    let err = x509_err(X509Ca::self_signed(TD, 100, 100).unwrap_err());
    assert!(matches!(err, X509Error::Validity(_)), "{err}");
    let err = x509_err(X509Ca::self_signed(TD, -5, 100).unwrap_err());
    assert!(matches!(err, X509Error::Validity(_)), "{err}");
    let err = x509_err(X509Ca::self_signed(TD, 0, i64::MAX).unwrap_err());
    assert!(matches!(err, X509Error::Validity(_)), "{err}");
}

#[test]
fn spiffe_ids_and_dns_names_are_validated() {
    let ca = ca();
    let (_, csr) = new_svid_key_and_csr().unwrap();
    for bad in [
        "spiffe://example.org",
        "spiffe://other.org/w",
        "spiffe://example.org.evil/w",
        "https://example.org/w",
        "spiffe://example.org/a//b",
        "spiffe://example.org/../b",
        "spiffe://Example.org/w",
        "spiffe://example.org/w?x",
    ] {
        let err = x509_err(ca.sign_svid(&csr, bad, &[], now(), now() + 60).unwrap_err());
        assert!(matches!(err, X509Error::SpiffeId(_)), "{bad}: {err}");
    }
    for bad in ["", "a..b", "-a.b", "a b", "x.*.y", "ü.example"] {
        let err = x509_err(
            ca.sign_svid(
                &csr,
                "spiffe://example.org/w",
                &[bad.to_string()],
                now(),
                now() + 60,
            )
            .unwrap_err(),
        );
        assert!(matches!(err, X509Error::DnsName(_)), "{bad:?}: {err}");
    }
    assert!(X509Ca::self_signed("Bad TD", 0, 10).is_err());
}

/// A generic upstream root as an operator's PKI would make it.
fn upstream_root(not_after: i64) -> (String, String, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::default();
    set_validity(&mut params, now() - 3600, not_after).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Upstream Root");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem(), key)
}

#[test]
fn intermediate_under_an_upstream_root() {
    let up_end = now() + 10_000;
    let (root_pem, root_key_pem, _) = upstream_root(up_end);
    let ca =
        X509Ca::intermediate(TD, &root_pem, &root_key_pem, now() - 60, now() + 1_000_000).unwrap();
    assert_eq!(ca.not_after(), up_end, "clamped to the upstream");
    let root_der = certs_from_pem(&root_pem).unwrap();
    assert_eq!(ca.roots(), root_der);
    assert_eq!(ca.upstream_chain(), root_der.as_slice());

    let (key, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(&csr, "spiffe://example.org/w", &[], now() - 5, now() + 3600)
        .unwrap();
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[1], ca.cert_der());
    webpki_verify(&chain, &ca.roots(), now()).unwrap();
    // Not trusted on its own root: the mayfly CA cert is not an anchor here.
    assert!(webpki_verify(&chain[..1], &ca.roots(), now()).is_err());
    assert_eq!(spiffe_crate_accepts(&chain, &key), "spiffe://example.org/w");

    // Reload from the store and keep signing.
    let again =
        X509Ca::from_parts(ca.cert_der(), ca.upstream_chain().to_vec(), &ca.key_pkcs8()).unwrap();
    assert_eq!(again.fingerprint(), ca.fingerprint());
    assert_eq!(again.trust_domain(), TD);
    let chain = again
        .sign_svid(&csr, "spiffe://example.org/w2", &[], now(), now() + 60)
        .unwrap();
    webpki_verify(&chain, &again.roots(), now()).unwrap();
}

#[test]
fn intermediate_under_a_two_level_upstream() {
    let (root_pem, _, root_key) = upstream_root(now() + 100_000);
    let root_issuer = Issuer::from_ca_cert_pem(&root_pem, &root_key).unwrap();
    let mid_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    set_validity(&mut params, now() - 60, now() + 50_000).unwrap();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "Upstream Issuing CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let mid = params.signed_by(&mid_key, &root_issuer).unwrap();
    let upstream_pem = format!("{}{}", mid.pem(), root_pem);

    let ca = X509Ca::intermediate(
        TD,
        &upstream_pem,
        &mid_key.serialize_pem(),
        now() - 60,
        now() + 86_400,
    )
    .unwrap();
    let (key, csr) = new_svid_key_and_csr().unwrap();
    let chain = ca
        .sign_svid(&csr, "spiffe://example.org/w", &[], now(), now() + 60)
        .unwrap();
    assert_eq!(
        chain.len(),
        3,
        "leaf, mayfly CA, upstream issuing CA; never the root"
    );
    assert_eq!(chain[2], mid.der().to_vec());
    assert_eq!(ca.roots(), certs_from_pem(&root_pem).unwrap());
    webpki_verify(&chain, &ca.roots(), now()).unwrap();
    spiffe_crate_accepts(&chain, &key);
}

#[test]
fn unusable_upstreams_are_refused() {
    let (root_pem, root_key_pem, _) = upstream_root(now() + 10_000);
    let (_, other_key_pem, _) = upstream_root(now() + 10_000);
    let err = x509_err(
        X509Ca::intermediate(TD, &root_pem, &other_key_pem, now(), now() + 60).unwrap_err(),
    );
    assert!(err.to_string().contains("does not match"), "{err}");

    // A mayfly CA (pathLenConstraint 0) cannot be an upstream.
    let leafy = ca();
    let pem = certs_to_pem(&[leafy.cert_der().to_vec()]);
    let key_pem = KeyPair::try_from(leafy.key_pkcs8().as_slice())
        .unwrap()
        .serialize_pem();
    let err = x509_err(X509Ca::intermediate(TD, &pem, &key_pem, now(), now() + 60).unwrap_err());
    assert!(err.to_string().contains("pathLenConstraint"), "{err}");

    // Entirely after the upstream expires.
    let err = x509_err(
        X509Ca::intermediate(TD, &root_pem, &root_key_pem, now() + 20_000, now() + 30_000)
            .unwrap_err(),
    );
    assert!(matches!(err, X509Error::Validity(_)), "{err}");
    assert!(X509Ca::intermediate(TD, "", &root_key_pem, now(), now() + 60).is_err());
    assert!(X509Ca::intermediate(TD, &root_pem, "junk", now(), now() + 60).is_err());
}

#[test]
fn from_parts_checks_the_key() {
    let a = ca();
    let b = ca();
    assert!(X509Ca::from_parts(a.cert_der(), vec![], &b.key_pkcs8()).is_err());
    assert!(X509Ca::from_parts(a.cert_der(), vec![], b"junk").is_err());
    let (_, csr) = new_svid_key_and_csr().unwrap();
    let leaf = a
        .sign_svid(&csr, "spiffe://example.org/w", &[], now(), now() + 60)
        .unwrap();
    assert!(
        X509Ca::from_parts(&leaf[0], vec![], &a.key_pkcs8()).is_err(),
        "a leaf is not a CA"
    );
    let same = X509Ca::from_parts(a.cert_der(), vec![], &a.key_pkcs8()).unwrap();
    assert_eq!(same.roots(), a.roots());
    assert_eq!(same.not_before(), a.not_before());
    assert_eq!(same.not_after(), a.not_after());
}

#[test]
fn debug_output_shows_no_key_material() {
    let ca = ca();
    let dbg = format!("{ca:?}");
    assert!(dbg.contains(&ca.fingerprint()));
    let key_hex = crate::hex(&ca.key_pkcs8());
    assert!(!dbg.contains(&key_hex[key_hex.len() - 20..]));
}

#[test]
fn svid_info_requires_exactly_one_uri_san() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(vec!["a.example".to_string()]).unwrap();
    let none = params.self_signed(&key).unwrap();
    assert!(SvidInfo::parse(none.der()).is_err());
    for u in ["spiffe://example.org/a", "spiffe://example.org/b"] {
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(u).unwrap()));
    }
    let two = params.self_signed(&key).unwrap();
    let err = x509_err(SvidInfo::parse(two.der()).unwrap_err());
    assert!(err.to_string().contains("more than one URI SAN"), "{err}");
    assert!(SvidInfo::parse(b"junk").is_err());
    // A CA certificate parses, and says it is one.
    assert!(SvidInfo::parse(ca().cert_der()).unwrap().is_ca);
}

#[test]
fn pem_round_trip() {
    let a = ca();
    let b = ca();
    let ders = vec![a.cert_der().to_vec(), b.cert_der().to_vec()];
    let pem = certs_to_pem(&ders);
    assert!(pem.lines().all(|l| l.len() <= 64));
    assert_eq!(certs_from_pem(&pem).unwrap(), ders);
    assert!(certs_from_pem("no pem here").is_err());
    assert!(
        certs_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n").is_err()
    );
}
