//! Subject and actor tokens: a JWT from a trusted issuer, one of the trust domain's own
//! JWT-SVIDs, or one of our own access tokens, verified through the ports and mapped to the
//! identity the pipeline issues for.

use mayfly_proto::{TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};

use crate::federation::{ClientAuthRule, SubjectIdentity, claimed_issuer, verify_subject_token};
use crate::pipeline::Consume;
use crate::ports::{Sts, World};
use crate::{AccessTokenClaims, Denial, check_access_token};

/// A subject (or actor) token, verified and mapped.
#[derive(Debug, Clone, PartialEq)]
pub enum Verified {
    /// From a trusted issuer (or one of our own JWT-SVIDs).
    Federated {
        /// The mapped identity.
        id: SubjectIdentity,
        /// The issuer's client-authentication rule.
        client_auth: ClientAuthRule,
        /// Each token may be used once.
        one_time: bool,
        /// The issuer's lifetime cap.
        ttl_cap: i64,
        /// Set when the subject is one of our own JWT-SVIDs: its `jti`, so that the token is
        /// revoked with it when its workload exits.
        svid_jti: Option<String>,
    },
    /// One of our own live access tokens.
    Ours(AccessTokenClaims),
}

impl Verified {
    pub(crate) fn identity(&self) -> &str {
        match self {
            Self::Federated { id, .. } => &id.identity,
            Self::Ours(c) => &c.sub,
        }
    }

    /// The jti of one of our own tokens (a parent of the token derived from it).
    pub(crate) fn our_jti(&self) -> Option<&str> {
        match self {
            Self::Ours(c) => Some(&c.jti),
            Self::Federated { .. } => None,
        }
    }

    /// The single use to record, when the issuer allows one use per token.
    pub(crate) fn consume(&self, skew: i64) -> Option<Consume> {
        match self {
            Self::Federated {
                id, one_time: true, ..
            } => id
                .jti
                .as_ref()
                .map(|j| (id.issuer_name.clone(), j.clone(), id.exp + skew)),
            _ => None,
        }
    }

    pub(crate) fn requires_client(&self) -> bool {
        matches!(
            self,
            Self::Federated {
                client_auth: ClientAuthRule::Required,
                ..
            }
        )
    }
}

/// Verify a JWT from a trusted issuer: pick the issuer by its (unverified) `iss`, verify with
/// its keys (refetched once on an unknown `kid`). Our own `iss` means one of our JWT-SVIDs.
pub async fn federated<W: World>(
    sts: &Sts<'_, W>,
    token: &str,
    now: i64,
) -> Result<Verified, Denial> {
    let iss = claimed_issuer(token)?;
    if iss == sts.settings.issuer {
        return own_jwt_svid(sts, token, now).await;
    }
    let settings = sts.settings;
    let verify = |trusted: &crate::federation::TrustedIssuer, keys: &_| {
        let id = verify_subject_token(settings, trusted, keys, token, now)?;
        Ok(Verified::Federated {
            id,
            client_auth: trusted.client_auth,
            one_time: trusted.one_time_use,
            ttl_cap: trusted.max_ttl,
            svid_jti: None,
        })
    };
    sts.world
        .verify_federated(&iss, now, verify)
        .await
        .ok_or(Denial::UntrustedIssuer)?
}

/// A JWT-SVID this server minted (for a workload behind one of our agents): verified with the
/// trust domain's JWT-SVID keys, refused once its workload has exited.
async fn own_jwt_svid<W: World>(
    sts: &Sts<'_, W>,
    token: &str,
    now: i64,
) -> Result<Verified, Denial> {
    let keys = sts.world.svid_keys();
    let id = verify_subject_token(sts.settings, sts.world.svid_issuer(), &keys, token, now)?;
    let jti = id
        .jti
        .clone()
        .ok_or(Denial::InvalidSubjectToken("the JWT-SVID has no jti"))?;
    if sts.world.is_svid_revoked(&jti).await? {
        return Err(Denial::InvalidSubjectToken(
            "the JWT-SVID was revoked: the workload it was issued to has exited",
        ));
    }
    Ok(Verified::Federated {
        id,
        client_auth: ClientAuthRule::Optional,
        one_time: false,
        ttl_cap: sts.settings.max_ttl,
        svid_jti: Some(jti),
    })
}

/// One of our own tokens, live and not revoked.
async fn ours<W: World>(sts: &Sts<'_, W>, token: &str, now: i64) -> Result<Verified, Denial> {
    const NOT_OURS: Denial =
        Denial::InvalidSubjectToken("not an active access token of this server");
    let keys = sts.world.access_token_keys();
    let claims = check_access_token(sts.settings, &keys, token, now).ok_or(NOT_OURS)?;
    if sts.world.is_revoked(&claims.jti).await? {
        return Err(NOT_OURS);
    }
    Ok(Verified::Ours(claims))
}

pub(crate) async fn by_type<W: World>(
    sts: &Sts<'_, W>,
    token: &str,
    token_type: &str,
    now: i64,
) -> Result<Verified, Denial> {
    match token_type {
        TOKEN_TYPE_JWT | TOKEN_TYPE_ID_TOKEN => federated(sts, token, now).await,
        TOKEN_TYPE_ACCESS_TOKEN => ours(sts, token, now).await,
        other => Err(Denial::UnsupportedSubjectTokenType(
            other.chars().take(80).collect(),
        )),
    }
}

/// An actor token, under the subject's rules and one more: one of our own access tokens acts
/// only if it was issued to be presented here (its audience is this server), not any token of
/// ours a resource server was given.
pub(crate) async fn actor<W: World>(
    sts: &Sts<'_, W>,
    token: &str,
    token_type: &str,
    now: i64,
) -> Result<Verified, Denial> {
    let v = by_type(sts, token, token_type, now).await?;
    if let Verified::Ours(c) = &v {
        let s = sts.settings;
        let aud = c.aud.trim_end_matches('/');
        if aud != s.issuer && aud != s.token_endpoint {
            return Err(Denial::ActorWrongAudience);
        }
    }
    Ok(v)
}
