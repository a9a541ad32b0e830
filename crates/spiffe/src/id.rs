//! SPIFFE IDs and trust domain names (SPIFFE ID specification §2): the rules live in
//! [`mayfly_proto::spiffe_id`], shared with token identities and X.509-SVIDs.

/// Why a SPIFFE ID or trust domain name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The text breaks a rule of the specification; the message says which.
    #[error("not a SPIFFE ID: {0}")]
    Invalid(&'static str),
}

/// Check `id` against the SPIFFE ID rules ([`mayfly_proto::spiffe_id`]).
pub fn validate_spiffe_id(id: &str) -> Result<(), SpiffeIdError> {
    mayfly_proto::spiffe_id::validate_spiffe_id(id).map_err(SpiffeIdError::Invalid)
}

/// Check a trust domain name: 1-255 lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    mayfly_proto::spiffe_id::validate_trust_domain(td).map_err(SpiffeIdError::Invalid)
}

/// The trust domain of a valid SPIFFE ID (`example.org` for `spiffe://example.org/a`).
pub fn trust_domain_of(id: &str) -> Result<&str, SpiffeIdError> {
    validate_spiffe_id(id)?;
    let rest = id.strip_prefix("spiffe://").unwrap_or(id);
    Ok(rest.split('/').next().unwrap_or(rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/ns/payments/sa/api",
            "spiffe://a-b_c.d/x.y-z_1",
        ] {
            assert_eq!(validate_spiffe_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "spiffe://",
            "spiffe://Example.org/x",
            "spiffe:///x",
            "spiffe://example.org/",
            "spiffe://example.org//x",
            "spiffe://example.org/./x",
            "spiffe://example.org/../x",
            "spiffe://example.org/a b",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a%2f",
            "spiffe://user@example.org/a",
            "spiffe://example.org:443/a",
            "https://example.org/a",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert!(validate_spiffe_id(&long).is_err());
    }

    #[test]
    fn trust_domains() {
        assert_eq!(
            trust_domain_of("spiffe://example.org/a/b"),
            Ok("example.org")
        );
        assert_eq!(trust_domain_of("spiffe://example.org"), Ok("example.org"));
        assert!(trust_domain_of("spiffe://example.org/").is_err());
    }
}
