//! The SPIFFE ID rules (SPIFFE ID specification §2), in one place for every crate that checks
//! them (token identities, X.509-SVIDs, the SPIFFE issuer and agent). Each caller maps the
//! refusal into its own error type; the `&'static str` says which rule was broken.

/// Longest SPIFFE ID accepted (the specification's limit).
pub const MAX_ID_LEN: usize = 2048;

/// Longest trust domain name accepted.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Check `id`: `spiffe://` + a trust domain (see [`validate_trust_domain`]) + a path of
/// non-empty segments of letters, digits, `.`, `-`, `_` (never `.` or `..`), no trailing slash,
/// no query or fragment.
pub fn validate_spiffe_id(id: &str) -> Result<(), &'static str> {
    if id.len() > MAX_ID_LEN {
        return Err("longer than 2048 bytes");
    }
    let rest = id
        .strip_prefix("spiffe://")
        .ok_or("must start with spiffe://")?;
    let (td, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    validate_trust_domain(td)?;
    let Some(path) = path.strip_prefix('/') else {
        return Ok(());
    };
    if !path.split('/').all(valid_path_segment) {
        return Err(
            "path segments must be non-empty, not `.` or `..`, and use only letters, digits, `.`, `-`, `_`",
        );
    }
    Ok(())
}

/// Check a trust domain name: 1-255 lowercase letters, digits, `.`, `-`, `_`.
pub fn validate_trust_domain(td: &str) -> Result<(), &'static str> {
    if td.is_empty()
        || td.len() > MAX_TRUST_DOMAIN_LEN
        || !td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    {
        return Err("the trust domain must be 1-255 lowercase letters, digits, `.`, `-`, `_`");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules() {
        for ok in [
            "spiffe://example.org",
            "spiffe://example.org/a",
            "spiffe://ex_ample-1.org/ns/payments/sa/api.v2",
        ] {
            assert_eq!(validate_spiffe_id(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "http://example.org/a",
            "spiffe://",
            "spiffe://Example.org/a",
            "spiffe://example.org/",
            "spiffe://example.org//a",
            "spiffe://example.org/./a",
            "spiffe://example.org/a/..",
            "spiffe://example.org/a?b",
            "spiffe://example.org/a#b",
            "spiffe://exa mple.org/a",
            "spiffe://example.org:8080/a",
        ] {
            assert!(validate_spiffe_id(bad).is_err(), "{bad}");
        }
        let long_td = "a".repeat(256);
        assert!(validate_trust_domain(&long_td).is_err());
        assert!(validate_trust_domain(&long_td[..255]).is_ok());
        let long_id = format!("spiffe://example.org/{}", "a".repeat(2048));
        assert_eq!(validate_spiffe_id(&long_id), Err("longer than 2048 bytes"));
    }
}
