//! Workload-identity federation: verify a subject token from a trusted issuer (a Kubernetes
//! projected service-account token, a GitHub Actions or GitLab CI OIDC token, a SPIFFE JWT-SVID)
//! and map it to the workload identity that policy and the new token's `sub` use.
//!
//! Not here: fetching the issuer's keys (the server caches them) or deciding what the workload
//! may have (policy).

use jsonwebtoken::Algorithm;
use mayfly_crypto::{ASSERTION_ALGS, VerifyError, VerifyingKeys};
use serde_json::Value;

use crate::identity::IdentityTemplate;
use crate::{Denial, Settings};

/// Policy attributes mayfly sets itself for every federated workload; an issuer's claim
/// mapping may not supply them.
pub const RESERVED_ATTRIBUTES: &[&str] = &["issuer", "subject", "trust_domain"];

/// Longest subject-token `jti` we store for one-time use.
const MAX_JTI_LEN: usize = 256;

/// Whether a token exchange through this issuer needs client authentication too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthRule {
    /// The subject token alone is the credential; a client assertion, when sent, is checked.
    Optional,
    /// A registered client must authenticate as well (`private_key_jwt`).
    Required,
}

/// An issuer whose tokens mayfly accepts as subject tokens.
#[derive(Debug, Clone)]
pub struct TrustedIssuer {
    /// Short name (from config); also the `issuer` attribute policies see.
    pub name: String,
    /// The `iss` value its tokens carry.
    pub issuer: String,
    /// A subject token's `aud` must contain one of these.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (never `none`, never HMAC).
    pub algorithms: Vec<Algorithm>,
    /// Oldest `iat` accepted, in seconds before now.
    pub max_token_age: i64,
    /// The trust domain this issuer's identities must lie in: `{trust_domain}` in its template,
    /// and the only trust domain a mapped identity may have. Never the server's own trust
    /// domain, except for the server's own JWT-SVIDs (config refuses it otherwise).
    pub trust_domain: String,
    /// How the workload identity is built from the claims.
    pub identity: IdentityTemplate,
    /// Policy attributes: (name, JSON pointer into the claims). Absent claims are left out.
    pub attributes: Vec<(String, String)>,
    /// Each subject token `jti` may be exchanged once.
    pub one_time_use: bool,
    /// Client authentication rule.
    pub client_auth: ClientAuthRule,
    /// Lifetime cap for tokens minted from this issuer's tokens, seconds.
    pub max_ttl: i64,
    /// The CI platform whose job tokens this issuer signs (`github-actions` and `gitlab-ci`
    /// presets): tokens exchanged from them live under their job's lease.
    pub ci: Option<crate::lease::CiProvider>,
}

/// A verified subject token, mapped.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectIdentity {
    /// The trusted issuer's name.
    pub issuer_name: String,
    /// The token's `sub` claim.
    pub subject: String,
    /// The mapped workload identity (a SPIFFE ID).
    pub identity: String,
    /// Policy attributes (`issuer`, `subject` and `trust_domain` first).
    pub attrs: Vec<(String, String)>,
    /// The token's `jti`, if any.
    pub jti: Option<String>,
    /// The token's `exp`.
    pub exp: i64,
    /// The CI run and job the token was issued to, for a CI platform's issuer.
    pub ci: Option<crate::lease::CiRun>,
}

/// The unverified `iss` of a JWT, to pick the issuer whose keys verify it. Never trust it
/// otherwise.
pub fn claimed_issuer(token: &str) -> Result<String, Denial> {
    #[derive(serde::Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let c: Iss = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| Denial::InvalidSubjectToken("not a well-formed signed JWT"))?;
    c.iss
        .filter(|s| !s.is_empty() && s.len() <= 512)
        .ok_or(Denial::InvalidSubjectToken("no `iss` claim"))
}

fn int(claims: &Value, name: &str) -> Option<i64> {
    claims
        .get(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
}

/// `typ` values (RFC 8725 §3.11 explicit typing) of tokens meant for something else than
/// identifying a workload: a client assertion, a DPoP proof, a security event, a logout or
/// introspection response. Platform identity tokens carry no `typ`, `JWT` or `JOSE`.
const NOT_SUBJECT_TYPES: &[&str] = &[
    "client-authentication+jwt",
    "dpop+jwt",
    "secevent+jwt",
    "logout+jwt",
    "token-introspection+jwt",
];

/// A `typ` header value compared as RFC 7515 §4.1.9 says: case-insensitively, with the
/// `application/` prefix optional.
pub(crate) fn media_type(typ: &str) -> String {
    let t = typ.to_ascii_lowercase();
    match t.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => t,
    }
}

/// The trust domain of a valid SPIFFE ID.
fn trust_domain_of(id: &str) -> Option<&str> {
    id.strip_prefix("spiffe://")?.split('/').next()
}

/// Verify the signature of `token`, an identity token of `issuer`, under the issuer's algorithm
/// allow-list, and refuse one typed as another kind of token (RFC 8725 §3.11): its claims.
pub fn verified_claims(
    issuer: &TrustedIssuer,
    keys: &VerifyingKeys,
    token: &str,
) -> Result<Value, Denial> {
    let allowed: Vec<Algorithm> = issuer
        .algorithms
        .iter()
        .copied()
        .filter(|a| ASSERTION_ALGS.contains(a))
        .collect();
    let verified = keys.verify::<Value>(token, &allowed).map_err(|e| match e {
        VerifyError::AlgNotAllowed(a) => Denial::SubjectAlgorithmNotAllowed(a),
        VerifyError::UnknownKey => Denial::SubjectUnknownKey,
        VerifyError::BadSignature => Denial::InvalidSubjectToken("signature does not verify"),
        _ => Denial::InvalidSubjectToken("not a well-formed signed JWT"),
    })?;
    if let Some(typ) = verified.header.typ.as_deref()
        && NOT_SUBJECT_TYPES.contains(&media_type(typ).as_str())
    {
        return Err(Denial::SubjectWrongType(typ.chars().take(64).collect()));
    }
    Ok(verified.claims)
}

/// The registered-claim rules every platform token meets, whatever it is used for: `iss`
/// exactly, `aud` naming one of `audiences`, `exp` required, `nbf`/`iat` not in the future, and
/// no older than `max_token_age` (without `iat`: valid no longer than that). Returns `exp`.
pub fn check_claims(
    c: &Value,
    iss: &str,
    audiences: &[String],
    max_token_age: i64,
    skew: i64,
    now: i64,
) -> Result<i64, Denial> {
    if c.get("iss").and_then(Value::as_str) != Some(iss) {
        return Err(Denial::UntrustedIssuer);
    }
    let aud_ok = match c.get("aud") {
        Some(Value::String(a)) => audiences.iter().any(|x| x == a),
        Some(Value::Array(list)) => list
            .iter()
            .any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a))),
        _ => false,
    };
    if !aud_ok {
        return Err(Denial::SubjectWrongAudience);
    }
    let exp = int(c, "exp").ok_or(Denial::InvalidSubjectToken("no `exp` claim"))?;
    if exp.saturating_add(skew) <= now {
        return Err(Denial::SubjectExpired);
    }
    if int(c, "nbf").is_some_and(|t| t > now.saturating_add(skew)) {
        return Err(Denial::InvalidSubjectToken("not yet valid (nbf)"));
    }
    match int(c, "iat") {
        Some(iat) if iat > now.saturating_add(skew) => {
            Err(Denial::InvalidSubjectToken("issued in the future (iat)"))
        }
        Some(iat) if now.saturating_sub(iat) > max_token_age => {
            Err(Denial::SubjectTooOld(max_token_age))
        }
        // Without `iat`, a token that stays valid longer than the age limit is as good as old.
        None if exp.saturating_sub(now) > max_token_age => {
            Err(Denial::SubjectTooOld(max_token_age))
        }
        _ => Ok(exp),
    }
}

/// Verify `token` as issued by `issuer` (whose keys are `keys`) at `now`, and map it to an
/// identity inside the issuer's trust domain.
pub fn verify_subject_token(
    settings: &Settings,
    issuer: &TrustedIssuer,
    keys: &VerifyingKeys,
    token: &str,
    now: i64,
) -> Result<SubjectIdentity, Denial> {
    let claims = verified_claims(issuer, keys, token)?;
    let c = &claims;
    let exp = check_claims(
        c,
        &issuer.issuer,
        &issuer.audiences,
        issuer.max_token_age,
        settings.clock_skew,
        now,
    )?;
    let subject = c
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(Denial::InvalidSubjectToken("no `sub` claim"))?
        .to_string();
    let jti = c
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .map(str::to_string);
    if issuer.one_time_use && jti.is_none() {
        return Err(Denial::InvalidSubjectToken(
            "this issuer's tokens are single-use and need a `jti`",
        ));
    }
    let identity = issuer
        .identity
        .render(c, &issuer.trust_domain)
        .map_err(|e| Denial::IdentityMapping(e.to_string()))?;
    // An issuer speaks only for its own trust domain: a partner's `{/sub}` naming ours (or
    // another partner's) is refused, whatever the template.
    if trust_domain_of(&identity) != Some(issuer.trust_domain.as_str()) {
        return Err(Denial::IdentityOutsideTrustDomain(
            issuer.trust_domain.chars().take(64).collect(),
        ));
    }
    let mut attrs = vec![
        ("issuer".to_string(), issuer.name.clone()),
        ("subject".to_string(), subject.clone()),
        ("trust_domain".to_string(), issuer.trust_domain.clone()),
    ];
    for (name, ptr) in &issuer.attributes {
        // The attributes mayfly sets are never taken from claims (config refuses these names).
        if RESERVED_ATTRIBUTES.contains(&name.as_str()) {
            continue;
        }
        if let Some(Value::String(v)) = c.pointer(ptr) {
            attrs.push((name.clone(), v.clone()));
        }
    }
    Ok(SubjectIdentity {
        issuer_name: issuer.name.clone(),
        subject,
        identity,
        attrs,
        jti,
        exp,
        ci: issuer
            .ci
            .and_then(|p| crate::lease::CiRun::from_claims(p, c)),
    })
}

/// Claim mappings and defaults of the presets.
#[derive(Debug, Clone)]
pub struct Preset {
    /// Identity template.
    pub identity: &'static str,
    /// Algorithms.
    pub algorithms: &'static [Algorithm],
    /// Policy attributes: (name, JSON pointer).
    pub attributes: &'static [(&'static str, &'static str)],
}

/// The preset named `name`, if any: `kubernetes`, `github-actions`, `gitlab-ci`,
/// `spiffe-jwt-svid`.
pub fn preset(name: &str) -> Option<Preset> {
    use Algorithm::*;
    Some(match name {
        "kubernetes" => Preset {
            identity: "spiffe://{trust_domain}/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}",
            algorithms: &[RS256, ES256],
            attributes: &[
                ("namespace", "/kubernetes.io/namespace"),
                ("service_account", "/kubernetes.io/serviceaccount/name"),
            ],
        },
        "github-actions" => Preset {
            identity: "spiffe://{trust_domain}/github/{/repository}/{/ref}",
            algorithms: &[RS256],
            attributes: &[
                ("repository", "/repository"),
                ("repository_owner", "/repository_owner"),
                ("ref", "/ref"),
                ("environment", "/environment"),
                ("workflow", "/workflow"),
                ("actor", "/actor"),
            ],
        },
        "gitlab-ci" => Preset {
            identity: "spiffe://{trust_domain}/gitlab/{/project_path}/{/ref_type}/{/ref}",
            algorithms: &[RS256],
            attributes: &[
                ("project_path", "/project_path"),
                ("ref", "/ref"),
                ("environment", "/environment"),
                ("pipeline_source", "/pipeline_source"),
                ("actor", "/user_login"),
            ],
        },
        "spiffe-jwt-svid" => Preset {
            identity: "{/sub}",
            algorithms: &[ES256, ES384, RS256, PS256],
            attributes: &[],
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use mayfly_crypto::{KeyAlg, SigningKey};
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_800_000_000;

    fn settings() -> Settings {
        Settings {
            issuer: "https://sts".into(),
            token_endpoint: "https://sts/oauth2/token".into(),
            default_ttl: 300,
            max_ttl: 3600,
            clock_skew: 30,
            max_assertion_lifetime: 300,
        }
    }

    fn issuer(preset_name: &str, trust_domain: &str) -> TrustedIssuer {
        let p = preset(preset_name).unwrap();
        TrustedIssuer {
            name: "partner".into(),
            issuer: "https://idp".into(),
            audiences: vec!["mayfly".into()],
            algorithms: vec![Algorithm::ES256],
            max_token_age: 3600,
            trust_domain: trust_domain.into(),
            identity: IdentityTemplate::parse(p.identity).unwrap(),
            attributes: p
                .attributes
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            one_time_use: false,
            client_auth: ClientAuthRule::Optional,
            max_ttl: 3600,
            ci: None,
        }
    }

    fn keys(k: &SigningKey) -> VerifyingKeys {
        VerifyingKeys::from_jwks(&json!({"keys": [k.public_jwk()]})).unwrap()
    }

    fn claims(sub: &str) -> Value {
        json!({"iss": "https://idp", "aud": "mayfly", "sub": sub, "iat": NOW, "exp": NOW + 60,
               "kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}})
    }

    /// A federated JWT-SVID issuer speaks for its own trust domain only: a `sub` in ours (or
    /// anyone else's) is refused, whatever the signature says.
    #[test]
    fn identities_stay_in_the_issuers_trust_domain() {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        let i = issuer("spiffe-jwt-svid", "partner.example");
        let ok = k
            .sign_jwt(None, &claims("spiffe://partner.example/w"))
            .unwrap();
        let id = verify_subject_token(&settings(), &i, &keys(&k), &ok, NOW).unwrap();
        assert_eq!(id.identity, "spiffe://partner.example/w");
        assert!(
            id.attrs
                .contains(&("trust_domain".to_string(), "partner.example".to_string()))
        );
        for sub in [
            "spiffe://example.org/ns/payments/sa/api",
            "spiffe://other.example/w",
            "spiffe://partner.example.evil/w",
        ] {
            let t = k.sign_jwt(None, &claims(sub)).unwrap();
            let d = verify_subject_token(&settings(), &i, &keys(&k), &t, NOW).unwrap_err();
            assert_eq!(
                d,
                Denial::IdentityOutsideTrustDomain("partner.example".into()),
                "{sub}"
            );
            assert_eq!(d.reason(), "identity_outside_trust_domain");
        }
        // A template's `{trust_domain}` is the issuer's.
        let i = issuer("kubernetes", "k8s-prod.example.org");
        let t = k
            .sign_jwt(None, &claims("system:serviceaccount:payments:api"))
            .unwrap();
        let id = verify_subject_token(&settings(), &i, &keys(&k), &t, NOW).unwrap();
        assert_eq!(
            id.identity,
            "spiffe://k8s-prod.example.org/ns/payments/sa/api"
        );
    }

    /// RFC 8725 §3.11: a client assertion (or another typed JWT) is not a subject token;
    /// platform tokens with no `typ`, `JWT` or `JOSE` are.
    #[test]
    fn typed_jwts_of_another_kind_are_not_subject_tokens() {
        let k = SigningKey::generate(KeyAlg::ES256, Some("k")).unwrap();
        let i = issuer("kubernetes", "k8s.example.org");
        let c = claims("system:serviceaccount:payments:api");
        for typ in ["client-authentication+jwt", "application/dpop+jwt"] {
            let t = k.sign_jwt(Some(typ), &c).unwrap();
            let d = verify_subject_token(&settings(), &i, &keys(&k), &t, NOW).unwrap_err();
            assert_eq!(d, Denial::SubjectWrongType(typ.into()));
            assert_eq!(d.reason(), "subject_wrong_type");
        }
        for typ in [None, Some("JWT"), Some("JOSE")] {
            let t = k.sign_jwt(typ, &c).unwrap();
            assert!(
                verify_subject_token(&settings(), &i, &keys(&k), &t, NOW).is_ok(),
                "{typ:?}"
            );
        }
    }
}
