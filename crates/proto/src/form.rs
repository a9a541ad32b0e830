//! `application/x-www-form-urlencoded` bodies with the OAuth rules that no parameter may appear
//! twice (RFC 6749 §3.2) and that a parameter sent without a value counts as absent (§3.1).

use std::borrow::Cow;

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormError {
    /// A parameter appeared more than once.
    #[error("parameter `{0}` appears more than once (RFC 6749 section 3.2)")]
    Duplicate(String),
    /// The body was not valid form encoding of UTF-8 text.
    #[error("request body is not valid application/x-www-form-urlencoded UTF-8")]
    Malformed,
    /// Too many parameters.
    #[error("request has more than {MAX_PARAMS} parameters")]
    TooMany,
}

/// Parsed form parameters; every name at most once (except the repeatable ones). Values borrow
/// from the body wherever no decoding was needed, so a typical request allocates nothing here.
#[derive(Debug, Default, Clone)]
pub struct Form<'a> {
    /// (name, value) in body order, empty values already dropped. A linear scan beats hashing
    /// for the handful of parameters an OAuth request carries (at most [`MAX_PARAMS`]).
    params: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// Parameters a request may carry at most; bounds the work done on hostile bodies.
pub const MAX_PARAMS: usize = 64;

impl<'a> Form<'a> {
    /// Parse a form body. A repeated name is an error unless it is listed in `repeatable`
    /// (RFC 8707 lets `resource` repeat), even when a value is empty; empty values are then
    /// dropped.
    pub fn parse(body: &'a [u8], repeatable: &[&str]) -> Result<Self, FormError> {
        if std::str::from_utf8(body).is_err() || !escapes_well_formed(body) {
            return Err(FormError::Malformed);
        }
        let mut params: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::with_capacity(8);
        let mut pairs = 0usize;
        for (k, v) in form_urlencoded::parse(body) {
            // form_urlencoded decodes lossily; a replacement character means bad escapes.
            if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') || k.is_empty() {
                return Err(FormError::Malformed);
            }
            pairs += 1;
            if pairs > MAX_PARAMS {
                return Err(FormError::TooMany);
            }
            if !repeatable.contains(&k.as_ref()) && params.iter().any(|(n, _)| *n == k) {
                return Err(FormError::Duplicate(k.into_owned()));
            }
            params.push((k, v));
        }
        params.retain(|(_, v)| !v.is_empty());
        Ok(Self { params })
    }

    /// The value of a parameter, if present and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }

    /// Every non-empty value of a repeatable parameter, in body order.
    pub fn get_all(&self, name: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
            .collect()
    }
}

/// Every `%` starts a two-hex-digit escape (form_urlencoded passes bad ones through verbatim).
fn escapes_well_formed(body: &[u8]) -> bool {
    body.iter()
        .enumerate()
        .filter(|(_, b)| **b == b'%')
        .all(|(i, _)| {
            body.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_even_when_empty() {
        assert_eq!(
            Form::parse(b"a=1&a=2", &[]).unwrap_err(),
            FormError::Duplicate("a".into())
        );
        assert_eq!(
            Form::parse(b"a=&a=2", &[]).unwrap_err(),
            FormError::Duplicate("a".into())
        );
    }

    #[test]
    fn decodes_and_drops_empty() {
        let f = Form::parse(
            b"scope=read+write&resource=https%3A%2F%2Fx&resource=y&e=",
            &["resource"],
        )
        .unwrap();
        assert_eq!(f.get("scope"), Some("read write"));
        assert_eq!(f.get_all("resource"), ["https://x", "y"]);
        assert_eq!(f.get("e"), None);
    }

    #[test]
    fn malformed() {
        assert_eq!(
            Form::parse(&[0xff, b'=', b'1'], &[]).unwrap_err(),
            FormError::Malformed
        );
        assert_eq!(
            Form::parse(b"a=%ff", &[]).unwrap_err(),
            FormError::Malformed
        );
        assert_eq!(Form::parse(b"=1", &[]).unwrap_err(), FormError::Malformed);
        assert_eq!(
            Form::parse(b"a=%zz", &[]).unwrap_err(),
            FormError::Malformed
        );
        assert_eq!(Form::parse(b"a=%2", &[]).unwrap_err(), FormError::Malformed);
    }
}
