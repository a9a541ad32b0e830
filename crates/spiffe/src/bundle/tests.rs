use super::*;
use mayfly_crypto::x509::{X509Ca, certs_from_pem};
use mayfly_crypto::{KeyAlg, SigningKey};

fn sample_wire() -> (BundleWire, Value) {
    let a = X509Ca::self_signed("example.org", 0, 4_000_000_000).unwrap();
    let b = X509Ca::self_signed("example.org", 0, 4_000_000_000).unwrap();
    let jwt = SigningKey::generate(KeyAlg::ES256, Some("k1")).unwrap();
    let jwk = jwt.public_jwk().clone();
    let wire = BundleWire {
        trust_domain: "example.org".into(),
        sequence: 7,
        x509_authorities: vec![STANDARD.encode(a.cert_der()), STANDARD.encode(b.cert_der())],
        jwt_authorities: json!({ "keys": [jwk] }),
        refresh_hint: 300,
    };
    (wire, jwk)
}

fn doc_of(wire: &BundleWire) -> Value {
    TrustBundle::from_wire(wire).unwrap().to_document().unwrap()
}

fn parse_value(v: &Value) -> Result<TrustBundle, BundleError> {
    TrustBundle::parse("example.org", v.to_string().as_bytes())
}

#[test]
fn document_follows_the_spec_and_round_trips() {
    let (wire, jwk) = sample_wire();
    let bundle = TrustBundle::from_wire(&wire).unwrap();
    let doc = bundle.to_document().unwrap();
    assert_eq!(doc["spiffe_sequence"], 7);
    assert_eq!(doc["spiffe_refresh_hint"], 300);
    let keys = doc["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for k in &keys[..2] {
        assert_eq!(k["use"], "x509-svid");
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["x"].as_str().unwrap().len(), 43);
        assert_eq!(k["y"].as_str().unwrap().len(), 43);
        assert_eq!(k["x5c"].as_array().unwrap().len(), 1);
    }
    assert_eq!(keys[0]["x5c"][0], wire.x509_authorities[0]);
    assert_eq!(keys[2]["use"], "jwt-svid");
    assert_eq!(keys[2]["kid"], "k1");
    assert_eq!(keys[2]["x"], jwk["x"]);

    let back = parse_value(&doc).unwrap();
    assert_eq!(back, bundle);
    assert_eq!(back.to_wire().x509_authorities, wire.x509_authorities);
    assert_eq!(back.jwt_jwks()["keys"][0]["kid"], "k1");

    let pem = bundle.x509_pem();
    assert_eq!(certs_from_pem(&pem).unwrap(), bundle.x509_authorities);
    assert_eq!(bundle.x509_der_concat(), bundle.x509_authorities.concat());
}

#[test]
fn unknown_uses_and_key_types_are_skipped() {
    let (wire, _) = sample_wire();
    let mut doc = doc_of(&wire);
    let keys = doc["keys"].as_array_mut().unwrap();
    keys.push(json!({"use": "future-svid", "kty": "EC", "crv": "P-256", "x": "a", "y": "b"}));
    keys.push(json!({"kty": "EC", "crv": "P-256", "x": "a", "y": "b"}));
    keys.push(json!({"use": "jwt-svid", "kty": "PQ", "kid": "z"}));
    keys.push(json!({"use": "x509-svid", "kty": "XYZ", "x5c": ["AAAA"]}));
    let b = parse_value(&doc).unwrap();
    assert_eq!(b.x509_authorities.len(), 2);
    assert_eq!(b.jwt_authorities.len(), 1);
    // No optional members: zeros.
    let b = parse_value(&json!({"keys": []})).unwrap();
    assert_eq!((b.sequence, b.refresh_hint), (0, 0));
}

#[test]
fn malformed_documents_are_refused() {
    let (wire, _) = sample_wire();
    let doc = doc_of(&wire);
    let with_key = |f: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        f(&mut d["keys"][0]);
        parse_value(&d).unwrap_err().to_string()
    };
    let other_cert = wire.x509_authorities[1].clone();
    let cases: Vec<(String, &str)> = vec![
        (
            with_key(&|k| k["x5c"] = json!([])),
            "exactly one certificate",
        ),
        (
            with_key(&|k| k["x5c"] = json!([k["x5c"][0].clone(), other_cert.clone()])),
            "exactly one certificate",
        ),
        (
            with_key(&|k| k["x5c"] = json!(["!!"])),
            "not standard base64",
        ),
        (
            with_key(&|k| k["x5c"] = json!(["AAAA"])),
            "not a DER X.509 certificate",
        ),
        (
            with_key(&|k| k["x5c"] = json!([other_cert.clone()])),
            "does not match the certificate",
        ),
        (
            with_key(&|k| k["crv"] = json!("P-384")),
            "`crv` does not match",
        ),
        (
            with_key(&|k| drop(k.as_object_mut().unwrap().remove("x5c"))),
            "`x5c` array",
        ),
        (with_key(&|k| *k = json!("text")), "not a JSON object"),
    ];
    for (err, want) in cases {
        assert!(err.contains(want), "{err} / {want}");
        assert!(err.starts_with("key 0:"), "{err}");
    }
    let jwt_key = |f: &dyn Fn(&mut Value)| {
        let mut d = doc.clone();
        f(&mut d["keys"][2]);
        parse_value(&d).unwrap_err().to_string()
    };
    assert!(jwt_key(&|k| drop(k.as_object_mut().unwrap().remove("kid"))).contains("`kid`"));
    assert!(jwt_key(&|k| k["kid"] = json!("")).contains("`kid`"));
    assert!(jwt_key(&|k| k["d"] = json!("secret")).contains("private key member `d`"));
    let mut dup = doc.clone();
    let k = dup["keys"][2].clone();
    dup["keys"].as_array_mut().unwrap().push(k);
    assert!(
        parse_value(&dup)
            .unwrap_err()
            .to_string()
            .contains("duplicate `kid`")
    );

    for (bad, want) in [
        (json!([]), "not a JSON object"),
        (json!({}), "`keys` is missing"),
        (json!({"keys": {}}), "`keys` is missing"),
        (
            json!({"keys": [], "spiffe_sequence": -1}),
            "spiffe_sequence",
        ),
        (
            json!({"keys": [], "spiffe_refresh_hint": "60"}),
            "spiffe_refresh_hint",
        ),
    ] {
        let err = parse_value(&bad).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    assert!(TrustBundle::parse("example.org", b"{").is_err());
    assert!(TrustBundle::parse("Bad TD", b"{\"keys\":[]}").is_err());
    let big = format!(
        "{{\"keys\":[],\"pad\":\"{}\"}}",
        "a".repeat(MAX_BUNDLE_BYTES)
    );
    assert_eq!(
        TrustBundle::parse("example.org", big.as_bytes()),
        Err(BundleError::TooLarge)
    );
}

#[test]
fn wire_form_is_checked() {
    let (mut wire, _) = sample_wire();
    wire.x509_authorities.push("AAAA".into());
    assert!(TrustBundle::from_wire(&wire).is_err());
    let (mut wire, _) = sample_wire();
    wire.jwt_authorities = json!({"keys": [{"kty": "EC"}]});
    assert!(
        TrustBundle::from_wire(&wire)
            .unwrap_err()
            .to_string()
            .contains("`kid`")
    );
    let (mut wire, _) = sample_wire();
    wire.jwt_authorities = Value::Null;
    assert!(
        TrustBundle::from_wire(&wire)
            .unwrap()
            .jwt_authorities
            .is_empty()
    );
    let (mut wire, _) = sample_wire();
    wire.trust_domain = "spiffe://example.org".into();
    assert!(TrustBundle::from_wire(&wire).is_err());
}

#[test]
fn other_key_types_become_jwks() {
    // Any certificate's key works the same way; leaves over P-384 and Ed25519 keys stand in
    // for authorities an upstream PKI could have.
    let ca = X509Ca::self_signed("example.org", 0, 4_000_000_000).unwrap();
    let mut ders = Vec::new();
    for alg in [KeyAlg::ES384, KeyAlg::EdDSA] {
        let key = SigningKey::generate(alg, None).unwrap();
        let csr = mayfly_crypto::x509::csr_for_key(&key.to_pkcs8().unwrap()).unwrap();
        let chain = ca
            .sign_svid(&csr, "spiffe://example.org/k", &[], 0, 4_000_000_000)
            .unwrap();
        ders.push(chain[0].clone());
    }
    let bundle = TrustBundle {
        trust_domain: "example.org".into(),
        sequence: 1,
        refresh_hint: 0,
        x509_authorities: ders,
        jwt_authorities: vec![],
    };
    let doc = bundle.to_document().unwrap();
    assert_eq!(doc["keys"][0]["crv"], "P-384");
    assert_eq!(doc["keys"][0]["x"].as_str().unwrap().len(), 64);
    assert_eq!(doc["keys"][1]["kty"], "OKP");
    assert_eq!(doc["keys"][1]["crv"], "Ed25519");
    assert!(doc.get("spiffe_refresh_hint").is_none());
    assert_eq!(parse_value(&doc).unwrap(), bundle);
}
