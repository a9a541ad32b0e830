//! ValidateJWTSVID: a JWT-SVID checked against this trust domain's JWT authorities, per the
//! JWT-SVID specification.

use mayfly_crypto::{ASSERTION_ALGS, Verified};
use serde_json::Value;

use crate::agent::unix_now;
use crate::state::Bundle;

/// Verify `token` for `audience`: signature by a key of the bundle (ES256, ES384, RS256, PS256
/// or EdDSA; never `none` or HMAC), `typ` absent or `JWT`/`JOSE`, `sub` a SPIFFE ID of the
/// trust domain, `aud` containing `audience`, `exp` present and not passed, `nbf` (if any)
/// reached, each with `leeway_secs` of skew. Returns the SPIFFE ID and all claims.
///
/// Error messages describe the failure and never contain the token.
pub(crate) fn validate(
    bundle: &Bundle,
    token: &str,
    audience: &str,
    leeway_secs: i64,
) -> Result<(String, serde_json::Map<String, Value>), String> {
    let keys = bundle
        .keys
        .as_ref()
        .ok_or("the trust bundle has no JWT authorities")?;
    let Verified { header, claims } = keys
        .verify::<Value>(token, ASSERTION_ALGS)
        .map_err(|e| e.to_string())?;
    if let Some(typ) = header.typ.as_deref()
        && typ != "JWT"
        && typ != "JOSE"
    {
        return Err(format!("typ {typ} is not JWT or JOSE"));
    }
    let Value::Object(claims) = claims else {
        return Err("claims are not a JSON object".into());
    };
    let sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or("no sub claim")?;
    let in_domain = sub
        .strip_prefix(&bundle.td_id)
        .is_some_and(|path| path.starts_with('/') && path.len() > 1);
    if !in_domain {
        return Err("sub is not a SPIFFE ID of this trust domain".into());
    }
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => return Err("no aud claim".into()),
    };
    if !aud_ok {
        return Err("audience does not match".into());
    }
    let now = unix_now();
    let exp = claims
        .get("exp")
        .and_then(seconds)
        .ok_or("no numeric exp claim")?;
    if now >= exp.saturating_add(leeway_secs) {
        return Err("token has expired".into());
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = seconds(nbf).ok_or("nbf is not a number")?;
        if nbf > now.saturating_add(leeway_secs) {
            return Err("token is not valid yet".into());
        }
    }
    Ok((sub.to_string(), claims))
}

/// A NumericDate, in whole seconds (fractions are allowed by RFC 7519 and dropped here).
fn seconds(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
}

/// JSON to a protobuf `Struct` (numbers become doubles, as protobuf's JSON mapping does).
pub(crate) fn to_struct(map: serde_json::Map<String, Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        Value::String(s) => Kind::StringValue(s),
        Value::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mayfly_crypto::{KeyAlg, SigningKey};
    use mayfly_proto::spiffe::BundleWire;
    use serde_json::json;

    fn bundle(key: &SigningKey) -> Bundle {
        Bundle::from_wire(
            BundleWire {
                trust_domain: "example.org".into(),
                sequence: 1,
                x509_authorities: vec![],
                jwt_authorities: json!({"keys": [key.public_jwk()]}),
                refresh_hint: 60,
            },
            1,
        )
    }

    fn check(key: &SigningKey, typ: Option<&str>, claims: Value) -> Result<String, String> {
        let token = key.sign_jwt(typ, &claims).unwrap();
        validate(&bundle(key), &token, "a", 30).map(|(id, _)| id)
    }

    #[test]
    fn claims_rules() {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        let now = unix_now();
        let sub = "spiffe://example.org/w";
        let ok = check(
            &k,
            Some("JWT"),
            json!({"sub": sub, "aud": ["b", "a"], "exp": now + 60}),
        );
        assert_eq!(ok.unwrap(), sub);
        // aud as a string, no typ, exp within the leeway.
        assert!(check(&k, None, json!({"sub": sub, "aud": "a", "exp": now - 10})).is_ok());
        let bad = [
            (
                Some("JWT"),
                json!({"sub": sub, "aud": "a", "exp": now - 31}),
            ),
            (
                Some("JWT"),
                json!({"sub": sub, "aud": "b", "exp": now + 60}),
            ),
            (Some("JWT"), json!({"sub": sub, "exp": now + 60})),
            (Some("JWT"), json!({"sub": sub, "aud": "a"})),
            (
                Some("JWT"),
                json!({"sub": sub, "aud": "a", "exp": now + 60, "nbf": now + 120}),
            ),
            (
                Some("JWT"),
                json!({"sub": "spiffe://other.org/w", "aud": "a", "exp": now + 60}),
            ),
            (
                Some("JWT"),
                json!({"sub": "spiffe://example.org", "aud": "a", "exp": now + 60}),
            ),
            (
                Some("JWT"),
                json!({"sub": "spiffe://example.org.evil/w", "aud": "a", "exp": now + 60}),
            ),
            (
                Some("at+jwt"),
                json!({"sub": sub, "aud": "a", "exp": now + 60}),
            ),
        ];
        for (typ, claims) in bad {
            assert!(check(&k, typ, claims.clone()).is_err(), "{claims}");
        }
        // Signed by a key outside the bundle.
        let other = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        let token = other
            .sign_jwt(None, &json!({"sub": sub, "aud": "a", "exp": now + 60}))
            .unwrap();
        assert!(validate(&bundle(&k), &token, "a", 30).is_err());
    }

    #[test]
    fn claims_become_a_struct() {
        use prost_types::value::Kind;
        let map = json!({"aud": ["a"], "exp": 5, "x": {"y": null, "z": true}});
        let Value::Object(map) = map else {
            unreachable!()
        };
        let s = to_struct(map);
        assert!(matches!(s.fields["exp"].kind, Some(Kind::NumberValue(n)) if n == 5.0));
        assert!(matches!(&s.fields["aud"].kind, Some(Kind::ListValue(l)) if l.values.len() == 1));
        assert!(matches!(&s.fields["x"].kind, Some(Kind::StructValue(x)) if x.fields.len() == 2));
    }
}
