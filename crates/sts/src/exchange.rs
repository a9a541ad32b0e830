//! Token exchange rules (RFC 8693) that are not policy: delegation chains and the narrowing of
//! one of our own tokens.

use serde_json::{Value, json};

use crate::authz::Narrowing;
use crate::decide::{requested_scopes, target};
use crate::{AccessTokenClaims, Denial, TokenParams};

/// Actors a delegation chain may hold; deeper chains are refused rather than grown forever.
const MAX_ACT_DEPTH: usize = 5;

/// The `act` claim for a token issued to `actor` on behalf of a subject whose own token carried
/// `prior` (RFC 8693 §4.1: the current actor outermost, prior actors nested).
pub fn act_claim(actor: &str, prior: Option<&Value>) -> Result<Value, Denial> {
    let mut depth = 1;
    let mut p = prior;
    while let Some(a) = p {
        depth += 1;
        if depth > MAX_ACT_DEPTH {
            return Err(Denial::InvalidSubjectToken(
                "the delegation chain (act) is deeper than 5 actors",
            ));
        }
        p = a.get("act");
    }
    Ok(match prior {
        Some(prior) => json!({"sub": actor, "act": prior}),
        None => json!({"sub": actor}),
    })
}

/// Re-exchanging one of our own tokens (`orig`): the audience stays, the scopes may only shrink
/// (none named keeps them all), and the returned authorizer permits exactly that.
pub fn narrow(
    orig: &AccessTokenClaims,
    params: &TokenParams,
) -> Result<(TokenParams, Narrowing), Denial> {
    let aud = target(params, std::slice::from_ref(&orig.aud))?;
    if aud != orig.aud {
        return Err(Denial::AudienceWidening);
    }
    let had: Vec<String> = mayfly_proto::scope_tokens(orig.scope.as_deref())
        .map(str::to_string)
        .collect();
    let asked = requested_scopes(params);
    if let Some(extra) = asked.iter().find(|s| !had.contains(s)) {
        return Err(Denial::ScopeWidening(extra.chars().take(64).collect()));
    }
    let scope = if params.scope.is_some() {
        params.scope.clone()
    } else {
        Some(had.join(" "))
    };
    Ok((
        TokenParams {
            scope,
            resources: Vec::new(),
            audience: Some(aud),
            requested_ttl: params.requested_ttl,
            lease: params.lease.clone(),
        },
        Narrowing {
            audience: orig.aud.clone(),
            scopes: had,
            jti: orig.jti.clone(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn orig() -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://sts".into(),
            sub: "spiffe://td/w".into(),
            aud: "https://api".into(),
            client_id: "c".into(),
            scope: Some("read write".into()),
            iat: 0,
            exp: 100,
            jti: "j".into(),
            act: None,
            lease: None,
            status: None,
        }
    }

    fn p(aud: Option<&str>, scope: Option<&str>) -> TokenParams {
        TokenParams {
            lease: None,
            scope: scope.map(str::to_string),
            resources: vec![],
            audience: aud.map(str::to_string),
            requested_ttl: None,
        }
    }

    #[test]
    fn narrowing_only() {
        let (np, _) = narrow(&orig(), &p(None, Some("read"))).unwrap();
        assert_eq!(np.scope.as_deref(), Some("read"));
        assert_eq!(np.audience.as_deref(), Some("https://api"));
        let (np, _) = narrow(&orig(), &p(None, None)).unwrap();
        assert_eq!(np.scope.as_deref(), Some("read write"));
        assert_eq!(
            narrow(&orig(), &p(None, Some("read admin"))).unwrap_err(),
            Denial::ScopeWidening("admin".into())
        );
        assert_eq!(
            narrow(&orig(), &p(Some("https://other"), None)).unwrap_err(),
            Denial::AudienceWidening
        );
    }

    #[test]
    fn act_chain_nests_prior_actors() {
        let first = act_claim("spiffe://td/a", None).unwrap();
        let second = act_claim("spiffe://td/b", Some(&first)).unwrap();
        assert_eq!(
            second,
            json!({"sub": "spiffe://td/b", "act": {"sub": "spiffe://td/a"}})
        );
        let mut chain = second;
        for i in 0..3 {
            chain = act_claim(&format!("spiffe://td/{i}"), Some(&chain)).unwrap();
        }
        assert!(act_claim("spiffe://td/z", Some(&chain)).is_err());
    }
}
