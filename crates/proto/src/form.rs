//! `application/x-www-form-urlencoded` bodies with the OAuth rules that no parameter may appear
//! twice (RFC 6749 §3.2) and that a parameter sent without a value counts as absent (§3.1).

use std::collections::HashMap;

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

/// Parsed form parameters; every name at most once.
#[derive(Debug, Default, Clone)]
pub struct Form {
    params: HashMap<String, Vec<String>>,
}

/// Parameters a request may carry at most; bounds the work done on hostile bodies.
pub const MAX_PARAMS: usize = 64;

impl Form {
    /// Parse a form body. A repeated name is an error unless it is listed in `repeatable`
    /// (RFC 8707 lets `resource` repeat); empty values are dropped.
    pub fn parse(body: &[u8], repeatable: &[&str]) -> Result<Self, FormError> {
        if std::str::from_utf8(body).is_err() || !escapes_well_formed(body) {
            return Err(FormError::Malformed);
        }
        let mut params = HashMap::new();
        for (k, v) in form_urlencoded::parse(body) {
            // form_urlencoded decodes lossily; a replacement character means bad escapes.
            if k.contains('\u{FFFD}') || v.contains('\u{FFFD}') || k.is_empty() {
                return Err(FormError::Malformed);
            }
            if params.len() >= MAX_PARAMS {
                return Err(FormError::TooMany);
            }
            let values: &mut Vec<String> = params.entry(k.to_string()).or_default();
            if !values.is_empty() && !repeatable.contains(&k.as_ref()) {
                return Err(FormError::Duplicate(k.into_owned()));
            }
            values.push(v.into_owned());
        }
        params.retain(|_, v| {
            v.retain(|x| !x.is_empty());
            !v.is_empty()
        });
        Ok(Self { params })
    }

    /// The value of a parameter, if present and non-empty.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }

    /// Every non-empty value of a repeatable parameter.
    pub fn get_all(&self, name: &str) -> &[String] {
        self.params.get(name).map_or(&[], Vec::as_slice)
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
