//! SPIFFE IDs (SPIFFE ID specification §2): the one place their rules are checked, for token
//! identities, X.509-SVIDs, the SPIFFE issuer and the agent. A [`SpiffeId`] is valid by
//! construction; each caller maps a [`SpiffeIdError`] into its own error type.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest SPIFFE ID accepted (the specification's limit).
pub const MAX_ID_LEN: usize = 2048;

/// Longest trust domain name accepted.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME: &str = "spiffe://";

/// Which rule of the specification a text breaks. The message names the rule, never the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// Longer than [`MAX_ID_LEN`] bytes.
    TooLong,
    /// Does not start with `spiffe://`.
    Scheme,
    /// The trust domain is empty, too long, or holds characters outside the rules.
    TrustDomain,
    /// A path segment is empty, `.`, `..`, or holds characters outside the rules.
    Path,
}

impl SpiffeIdError {
    /// The broken rule, as a short phrase.
    pub fn rule(self) -> &'static str {
        match self {
            Self::TooLong => "longer than 2048 bytes",
            Self::Scheme => "must start with spiffe://",
            Self::TrustDomain => {
                "the trust domain must be 1-255 lowercase letters, digits, `.`, `-`, `_`"
            }
            Self::Path => {
                "path segments must be non-empty, not `.` or `..`, and use only letters, digits, `.`, `-`, `_`"
            }
        }
    }
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a SPIFFE ID: {}", self.rule())
    }
}

impl std::error::Error for SpiffeIdError {}

/// A valid SPIFFE ID: `spiffe://` + a trust domain (see [`validate_trust_domain`]) + a path of
/// non-empty segments of letters, digits, `.`, `-`, `_` (never `.` or `..`), no trailing slash,
/// no query, fragment, port or user info. Serialised as its text; deserialising checks it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    text: String,
    /// Where the path starts (the text's length when there is none).
    path_at: usize,
}

impl SpiffeId {
    /// Parse `id`.
    pub fn parse(id: &str) -> Result<Self, SpiffeIdError> {
        let path_at = Self::check(id)?;
        Ok(Self {
            text: id.to_string(),
            path_at,
        })
    }

    /// Check `id` without keeping it (for a caller that holds the text already).
    pub fn validate(id: &str) -> Result<(), SpiffeIdError> {
        Self::check(id).map(|_| ())
    }

    /// The checks; on success, the byte offset of the path.
    fn check(id: &str) -> Result<usize, SpiffeIdError> {
        if id.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = id.strip_prefix(SCHEME).ok_or(SpiffeIdError::Scheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let (td, path) = rest.split_at(td_len);
        validate_trust_domain(td)?;
        if let Some(path) = path.strip_prefix('/')
            && !path.split('/').all(valid_path_segment)
        {
            return Err(SpiffeIdError::Path);
        }
        Ok(SCHEME.len() + td_len)
    }

    /// The trust domain (`example.org` for `spiffe://example.org/a`).
    pub fn trust_domain(&self) -> &str {
        self.text.get(SCHEME.len()..self.path_at).unwrap_or("")
    }

    /// The path, with its leading `/` (`/a/b`), or "" when there is none.
    pub fn path(&self) -> &str {
        self.text.get(self.path_at..).unwrap_or("")
    }

    /// The whole ID.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The whole ID, without copying.
    pub fn into_string(self) -> String {
        self.text
    }
}

/// Check a trust domain name: 1-255 lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty()
        || td.len() > MAX_TRUST_DOMAIN_LEN
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err(SpiffeIdError::TrustDomain);
    }
    Ok(())
}

/// One path segment: non-empty, not `.` or `..`, letters, digits, `.`, `-`, `_` only.
pub fn valid_path_segment(seg: &str) -> bool {
    !seg.is_empty()
        && seg != "."
        && seg != ".."
        && seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl TryFrom<String> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(text: String) -> Result<Self, SpiffeIdError> {
        let path_at = Self::check(&text)?;
        Ok(Self { text, path_at })
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, SpiffeIdError> {
        Self::parse(s)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

impl From<SpiffeId> for String {
    fn from(id: SpiffeId) -> String {
        id.text
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Self::try_from(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids_and_their_parts() {
        for (ok, td, path) in [
            ("spiffe://example.org", "example.org", ""),
            ("spiffe://example.org/a", "example.org", "/a"),
            (
                "spiffe://ex_ample-1.org/ns/payments/sa/api.v2",
                "ex_ample-1.org",
                "/ns/payments/sa/api.v2",
            ),
            ("spiffe://a-b_c.d/x.y-z_1", "a-b_c.d", "/x.y-z_1"),
        ] {
            let id = SpiffeId::parse(ok).unwrap();
            assert_eq!((id.trust_domain(), id.path()), (td, path), "{ok}");
            assert_eq!((id.as_str(), id.to_string().as_str()), (ok, ok));
            assert_eq!(id.as_ref(), ok);
            assert_eq!(ok.parse::<SpiffeId>().unwrap(), id);
            assert_eq!(SpiffeId::try_from(ok.to_string()).unwrap(), id);
            assert_eq!(SpiffeId::validate(ok), Ok(()));
        }
    }

    #[test]
    fn each_rule_is_named() {
        use SpiffeIdError::*;
        for (bad, why) in [
            ("", Scheme),
            ("http://example.org/a", Scheme),
            ("https://example.org/a", Scheme),
            ("spiffe://", TrustDomain),
            ("spiffe:///x", TrustDomain),
            ("spiffe://Example.org/a", TrustDomain),
            ("spiffe://exa mple.org/a", TrustDomain),
            ("spiffe://example.org:8080/a", TrustDomain),
            ("spiffe://user@example.org/a", TrustDomain),
            ("spiffe://example.org/", Path),
            ("spiffe://example.org//a", Path),
            ("spiffe://example.org/./a", Path),
            ("spiffe://example.org/../x", Path),
            ("spiffe://example.org/a/..", Path),
            ("spiffe://example.org/a b", Path),
            ("spiffe://example.org/a?b", Path),
            ("spiffe://example.org/a#b", Path),
            ("spiffe://example.org/a%2f", Path),
            ("spiffe://example.org/ü", Path),
        ] {
            assert_eq!(SpiffeId::parse(bad), Err(why), "{bad}");
            assert_eq!(SpiffeId::validate(bad), Err(why), "{bad}");
        }
        let long = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(SpiffeId::parse(&long), Err(TooLong));
        assert_eq!(
            TooLong.to_string(),
            "not a SPIFFE ID: longer than 2048 bytes"
        );
    }

    #[test]
    fn trust_domain_names() {
        let long_td = "a".repeat(256);
        assert_eq!(
            validate_trust_domain(&long_td),
            Err(SpiffeIdError::TrustDomain)
        );
        assert!(validate_trust_domain(&long_td[..255]).is_ok());
        assert!(validate_trust_domain("example.org").is_ok());
        assert!(validate_trust_domain("").is_err());
        assert!(validate_trust_domain("Example.org").is_err());
    }

    #[test]
    fn serde_as_a_checked_string() {
        let id = SpiffeId::parse("spiffe://example.org/w").unwrap();
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            "\"spiffe://example.org/w\""
        );
        let back: SpiffeId = serde_json::from_str("\"spiffe://example.org/w\"").unwrap();
        assert_eq!(back, id);
        let err = serde_json::from_str::<SpiffeId>("\"spiffe://example.org/\"").unwrap_err();
        assert!(err.to_string().contains("not a SPIFFE ID"), "{err}");
    }
}
