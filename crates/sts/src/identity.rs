//! Workload identities: SPIFFE IDs, and the templates that build one from a subject token's
//! claims (`spiffe://{trust_domain}/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}`).
//!
//! A claim that is missing, not a string, or holds a character the SPIFFE ID rules forbid is an
//! error: a template never yields an empty or ambiguous segment.

use mayfly_proto::spiffe_id::{SpiffeId, SpiffeIdError, valid_path_segment};
use serde_json::Value;

/// Why a SPIFFE ID or template was refused. Values from tokens are not echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The template text does not parse.
    #[error("identity template: {0}")]
    BadTemplate(String),
    /// A claim the template needs is absent or not a string.
    #[error("claim `{0}` is missing or not a string")]
    MissingClaim(String),
    /// A claim holds characters a SPIFFE ID path may not contain, or an empty/dot segment.
    #[error("claim `{0}` holds characters outside the SPIFFE ID rules")]
    InvalidClaim(String),
    /// The rendered text is not a SPIFFE ID.
    #[error(transparent)]
    NotSpiffeId(#[from] SpiffeIdError),
}

/// One piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    /// `{/json/pointer}` into the claims.
    Claim(String),
    /// `{trust_domain}`.
    TrustDomain,
}

/// A parsed identity template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityTemplate {
    parts: Vec<Part>,
    text: String,
}

impl IdentityTemplate {
    /// Parse `text`: literal text with `{/json/pointer}` and `{trust_domain}` placeholders.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| IdentityError::BadTemplate(format!("unclosed `{{` in `{text}`")))?
                + open;
            let inner = &rest[open + 1..close];
            if inner == "trust_domain" {
                parts.push(Part::TrustDomain);
            } else if inner.starts_with('/') && !inner.contains('{') {
                parts.push(Part::Claim(inner.to_string()));
            } else {
                return Err(IdentityError::BadTemplate(format!(
                    "`{{{inner}}}` is neither a JSON pointer (`{{/claim/path}}`) nor `{{trust_domain}}`"
                )));
            }
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(IdentityError::BadTemplate(format!(
                "stray `}}` in `{text}`"
            )));
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_string()));
        }
        let t = Self {
            parts,
            text: text.to_string(),
        };
        // The literal skeleton must itself be a SPIFFE ID once placeholders hold a plain value
        // (a whole-ID template's placeholder holds a whole SPIFFE ID).
        let whole = matches!(t.parts.as_slice(), [Part::Claim(_)]);
        let probe = t
            .render_with(
                |_| {
                    Ok(if whole {
                        "spiffe://example.org/x".to_string()
                    } else {
                        "x".to_string()
                    })
                },
                "example.org",
            )
            .map_err(|e| IdentityError::BadTemplate(format!("`{text}`: {e}")))?;
        SpiffeId::validate(&probe)
            .map_err(|e| IdentityError::BadTemplate(format!("`{text}`: {e}")))?;
        Ok(t)
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the template uses `{trust_domain}`.
    pub fn needs_trust_domain(&self) -> bool {
        self.parts.contains(&Part::TrustDomain)
    }

    /// Build the identity from `claims`. A claim value may contain `/` (it then spans several
    /// path segments, each of which must be valid); a whole-ID template (`{/sub}`) must yield a
    /// SPIFFE ID by itself.
    pub fn render(&self, claims: &Value, trust_domain: &str) -> Result<String, IdentityError> {
        self.render_with(
            |ptr| match claims.pointer(ptr) {
                Some(Value::String(s)) => Ok(s.clone()),
                _ => Err(IdentityError::MissingClaim(ptr.to_string())),
            },
            trust_domain,
        )
    }

    fn render_with(
        &self,
        claim: impl Fn(&str) -> Result<String, IdentityError>,
        trust_domain: &str,
    ) -> Result<String, IdentityError> {
        let whole = matches!(self.parts.as_slice(), [Part::Claim(_)]);
        let mut out = String::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Literal(l) => out.push_str(l),
                Part::TrustDomain => out.push_str(trust_domain),
                Part::Claim(ptr) => {
                    let v = claim(ptr)?;
                    if whole {
                        SpiffeId::validate(&v)
                            .map_err(|_| IdentityError::InvalidClaim(ptr.clone()))?;
                    } else if !v.split('/').all(valid_path_segment) {
                        return Err(IdentityError::InvalidClaim(ptr.clone()));
                    }
                    out.push_str(&v);
                }
            }
        }
        SpiffeId::validate(&out)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubernetes_template() {
        let t = IdentityTemplate::parse(
            "spiffe://{trust_domain}/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}",
        )
        .unwrap();
        let claims =
            json!({"kubernetes.io": {"namespace": "payments", "serviceaccount": {"name": "api"}}});
        assert_eq!(
            t.render(&claims, "example.org").unwrap(),
            "spiffe://example.org/ns/payments/sa/api"
        );
        let missing = json!({"kubernetes.io": {"namespace": "payments"}});
        assert_eq!(
            t.render(&missing, "example.org").unwrap_err(),
            IdentityError::MissingClaim("/kubernetes.io/serviceaccount/name".into())
        );
        for bad in ["", "..", "a b", "a/../b", "a//b", "ü"] {
            let c = json!({"kubernetes.io": {"namespace": bad, "serviceaccount": {"name": "api"}}});
            assert_eq!(
                t.render(&c, "example.org").unwrap_err(),
                IdentityError::InvalidClaim("/kubernetes.io/namespace".into()),
                "{bad:?}"
            );
        }
        let not_string =
            json!({"kubernetes.io": {"namespace": 5, "serviceaccount": {"name": "api"}}});
        assert!(matches!(
            t.render(&not_string, "example.org"),
            Err(IdentityError::MissingClaim(_))
        ));
    }

    #[test]
    fn claims_with_slashes_span_segments() {
        let t =
            IdentityTemplate::parse("spiffe://{trust_domain}/gh/{/repository}/ref/{/ref}").unwrap();
        let c = json!({"repository": "octo-org/octo-repo", "ref": "refs/heads/main"});
        assert_eq!(
            t.render(&c, "example.org").unwrap(),
            "spiffe://example.org/gh/octo-org/octo-repo/ref/refs/heads/main"
        );
    }

    #[test]
    fn whole_id_template() {
        let t = IdentityTemplate::parse("{/sub}").unwrap();
        assert_eq!(
            t.render(&json!({"sub": "spiffe://td/w"}), "x").unwrap(),
            "spiffe://td/w"
        );
        assert_eq!(
            t.render(&json!({"sub": "not-an-id"}), "x").unwrap_err(),
            IdentityError::InvalidClaim("/sub".into())
        );
    }

    #[test]
    fn every_preset_template_parses() {
        for name in [
            "kubernetes",
            "github-actions",
            "gitlab-ci",
            "spiffe-jwt-svid",
        ] {
            let p = crate::federation::preset(name).unwrap();
            assert!(IdentityTemplate::parse(p.identity).is_ok(), "{name}");
        }
    }

    #[test]
    fn bad_templates() {
        for bad in [
            "spiffe://{trust_domain}/ns/{namespace}",
            "spiffe://{trust_domain}/ns/{/a",
            "spiffe://{trust_domain}/ns/}",
            "https://{trust_domain}/x",
            "spiffe://{trust_domain}/a//{/b}",
        ] {
            assert!(
                matches!(
                    IdentityTemplate::parse(bad),
                    Err(IdentityError::BadTemplate(_))
                ),
                "{bad}"
            );
        }
    }
}
