//! Which authenticated SPIFFE IDs a verifier lets through.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::TlsError;
use mayfly_proto::spiffe_id::{SpiffeId, SpiffeIdError, validate_trust_domain};

/// Decides whether a peer's (already authenticated) SPIFFE ID is allowed.
#[derive(Clone)]
pub struct SpiffeIdAuthorizer(Rule);

#[derive(Clone)]
enum Rule {
    MemberOf(String),
    Exact(String),
    OneOf(BTreeSet<String>),
    Custom(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl std::fmt::Debug for SpiffeIdAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Rule::MemberOf(td) => write!(f, "SpiffeIdAuthorizer::MemberOf({td})"),
            Rule::Exact(id) => write!(f, "SpiffeIdAuthorizer::Exact({id})"),
            Rule::OneOf(ids) => write!(f, "SpiffeIdAuthorizer::OneOf({ids:?})"),
            Rule::Custom(_) => f.write_str("SpiffeIdAuthorizer::Custom"),
        }
    }
}

impl SpiffeIdAuthorizer {
    /// Any SPIFFE ID in `trust_domain`.
    pub fn member_of(trust_domain: &str) -> Result<Self, SpiffeIdError> {
        validate_trust_domain(trust_domain)?;
        Ok(Self(Rule::MemberOf(trust_domain.to_string())))
    }

    /// Exactly `id`.
    pub fn exact(id: &str) -> Result<Self, SpiffeIdError> {
        SpiffeId::validate(id)?;
        Ok(Self(Rule::Exact(id.to_string())))
    }

    /// Any of `ids`.
    pub fn one_of<I, S>(ids: I) -> Result<Self, SpiffeIdError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let ids = ids.into_iter().map(Into::into).collect::<BTreeSet<_>>();
        for id in &ids {
            SpiffeId::validate(id)?;
        }
        Ok(Self(Rule::OneOf(ids)))
    }

    /// Whatever `allow` says (a lookup in a registry of agents, say). It sees only IDs that
    /// passed chain validation in the authorities' trust domain.
    pub fn custom(allow: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self(Rule::Custom(Arc::new(allow)))
    }

    /// `Ok` if `id` is allowed, else [`TlsError::Unauthorized`].
    pub fn authorize(&self, id: &str) -> Result<(), TlsError> {
        let allowed = match &self.0 {
            Rule::MemberOf(td) => id
                .strip_prefix("spiffe://")
                .and_then(|rest| rest.strip_prefix(td.as_str()))
                .is_some_and(|path| path.is_empty() || path.starts_with('/')),
            Rule::Exact(want) => id == want,
            Rule::OneOf(ids) => ids.contains(id),
            Rule::Custom(allow) => allow(id),
        };
        if allowed {
            Ok(())
        } else {
            Err(TlsError::Unauthorized(id.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let m = SpiffeIdAuthorizer::member_of("example.org").unwrap();
        assert!(m.authorize("spiffe://example.org/a").is_ok());
        assert!(m.authorize("spiffe://example.org.evil/a").is_err());
        assert!(m.authorize("spiffe://other.org/a").is_err());
        let e = SpiffeIdAuthorizer::exact("spiffe://example.org/a").unwrap();
        assert!(e.authorize("spiffe://example.org/a").is_ok());
        assert!(e.authorize("spiffe://example.org/a/b").is_err());
        let s = SpiffeIdAuthorizer::one_of(["spiffe://example.org/a", "spiffe://example.org/b"])
            .unwrap();
        assert!(s.authorize("spiffe://example.org/b").is_ok());
        assert!(s.authorize("spiffe://example.org/c").is_err());
        let c = SpiffeIdAuthorizer::custom(|id| id.ends_with("/agent"));
        assert!(c.authorize("spiffe://example.org/agent").is_ok());
        assert!(c.authorize("spiffe://example.org/x").is_err());
        assert!(SpiffeIdAuthorizer::exact("not an id").is_err());
        assert!(SpiffeIdAuthorizer::member_of("Bad").is_err());
        assert!(SpiffeIdAuthorizer::one_of(["spiffe://example.org/a", "x"]).is_err());
        let err = e
            .authorize("spiffe://example.org/z")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spiffe://example.org/z"), "{err}");
    }
}
