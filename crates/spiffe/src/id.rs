//! SPIFFE IDs and trust domain names (SPIFFE ID specification §2).
//!
//! A copy of the rules in `mayfly_sts::identity`: engines do not depend on each other, and the
//! rules are short and fixed by the specification.

/// Longest SPIFFE ID accepted (the specification's limit).
const MAX_ID_LEN: usize = 2048;

/// Longest trust domain name accepted.
const MAX_TD_LEN: usize = 255;

/// Why a SPIFFE ID or trust domain name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The text breaks a rule of the specification; the message says which.
    #[error("not a SPIFFE ID: {0}")]
    Invalid(&'static str),
}

/// Check `id`: `spiffe://` + a trust domain of lowercase letters, digits, `.`, `-`, `_` + a path
/// of non-empty segments of letters, digits, `.`, `-`, `_` (never `.` or `..`), no trailing
/// slash, no query or fragment.
pub fn validate_spiffe_id(id: &str) -> Result<(), SpiffeIdError> {
    if id.len() > MAX_ID_LEN {
        return Err(SpiffeIdError::Invalid("longer than 2048 bytes"));
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or(SpiffeIdError::Invalid("must start with spiffe://"))?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    validate_trust_domain(td)?;
    let Some(path) = path.strip_prefix('/') else {
        return Ok(());
    };
    let ok = path.split('/').all(|seg| {
        !seg.is_empty()
            && seg != "."
            && seg != ".."
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    });
    if !ok {
        return Err(SpiffeIdError::Invalid(
            "path segments must be non-empty, not `.` or `..`, and use only letters, digits, `.`, `-`, `_`",
        ));
    }
    Ok(())
}

/// Check a trust domain name: 1-255 lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty()
        || td.len() > MAX_TD_LEN
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(SpiffeIdError::Invalid(
            "the trust domain must be 1-255 lowercase letters, digits, `.`, `-`, `_`",
        ));
    }
    Ok(())
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
