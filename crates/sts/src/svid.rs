//! May this workload have this SVID? The agent API asks before it signs an X.509-SVID or mints a
//! JWT-SVID for a registration entry, through the same [`Authorizer`] as every token: action
//! [`ACTION_SVID_X509`] on the trust domain (`spiffe://<trust domain>`, as an audience), or
//! [`ACTION_SVID_JWT`] on each requested audience. Every entry's generated permit allows its
//! SVIDs, so the answer is yes unless a `forbid` says otherwise. Pure: no I/O, no clock.

use crate::authz::{AuthzQuery, Principal};
use crate::{Authorizer, Denial};

/// The action asked before an X.509-SVID is signed.
pub const ACTION_SVID_X509: &str = "svid_x509";
/// The action asked before a JWT-SVID is minted (once per audience).
pub const ACTION_SVID_JWT: &str = "svid_jwt";

/// Whether `action` is an SVID action (never a scope a token may carry).
pub fn is_svid_action(action: &str) -> bool {
    action == ACTION_SVID_X509 || action == ACTION_SVID_JWT
}

/// Which kind of SVID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SvidKind {
    /// An X.509-SVID.
    X509,
    /// A JWT-SVID.
    Jwt,
}

impl SvidKind {
    /// The action policy is asked.
    pub fn action(self) -> &'static str {
        match self {
            Self::X509 => ACTION_SVID_X509,
            Self::Jwt => ACTION_SVID_JWT,
        }
    }
}

/// What a refusal says was refused (no token or key material: an audience at most).
pub(crate) fn what(kind: SvidKind, resource: &str) -> String {
    match kind {
        SvidKind::X509 => "an X.509-SVID".to_string(),
        SvidKind::Jwt => format!("a JWT-SVID for audience `{resource}`"),
    }
}

/// One SVID request, as the agent API has it after finding the entry.
#[derive(Debug, Clone, Copy)]
pub struct SvidRequest<'a> {
    /// X.509 or JWT.
    pub kind: SvidKind,
    /// The workload: its SPIFFE ID and attributes (`issuer`, `subject`, `trust_domain`).
    pub workload: Principal<'a>,
    /// The agent asking for it (policy `context.client_id`).
    pub agent: &'a str,
    /// `spiffe://<trust domain>`: the resource of an X.509-SVID.
    pub trust_domain_id: &'a str,
    /// The requested audiences (JWT-SVID); ignored for an X.509-SVID.
    pub audiences: &'a [String],
    /// The entry's lifetime for this kind, seconds (policy `context.requested_ttl`).
    pub ttl: i64,
    /// The agent's address, or "".
    pub source: &'a str,
    /// Now, seconds since the epoch.
    pub now: i64,
}

/// What policy allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidGrant {
    /// The lifetime: the entry's, capped by the least `@max_ttl` of the deciding permits.
    pub ttl: i64,
    /// The deciding policies.
    pub policies: Vec<String>,
}

/// Decide an SVID: one question per resource (the trust domain, or each audience); the first
/// refusal wins. The ids of the deciding policies are appended to `trace` whatever the
/// answer, so a refusal's audit event names the policy that refused.
pub fn decide_svid(
    authz: &dyn Authorizer,
    req: &SvidRequest<'_>,
    trace: &mut Vec<String>,
) -> Result<SvidGrant, Denial> {
    let x509 = [req.trust_domain_id.to_string()];
    let resources: &[String] = match req.kind {
        SvidKind::X509 => &x509,
        SvidKind::Jwt => req.audiences,
    };
    if resources.is_empty() {
        return Err(Denial::MissingParameter("audience"));
    }
    let mut ttl = req.ttl;
    for resource in resources {
        let d = authz.authorize(
            &AuthzQuery {
                principal: req.workload,
                action: req.kind.action(),
                audience: resource,
                grant_type: req.kind.action(),
                requested_ttl: req.ttl,
                source: req.source,
                now: req.now,
                client_id: req.agent,
                actor: "",
            },
            trace,
        );
        if !d.allow {
            let shown: String = resource.chars().take(64).collect();
            return Err(Denial::SvidNotAllowed(req.kind, shown));
        }
        if let Some(m) = d.max_ttl {
            ttl = ttl.min(m);
        }
    }
    Ok(SvidGrant {
        ttl,
        policies: trace.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::{AuthzDecision, PrincipalKind};
    use mayfly_proto::ErrorCode;

    /// Permits every SVID by "entry:e1", except: forbids the X.509-SVID of `.../db` and every
    /// JWT-SVID for `https://admin` (by "no-db" and "no-admin"); caps `.../short` at 60 s.
    struct Rules;
    impl Authorizer for Rules {
        fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
            assert_eq!(q.principal.kind, PrincipalKind::Workload);
            assert_eq!((q.client_id, q.grant_type), ("spiffe://td/agent", q.action));
            let forbid = match q.action {
                ACTION_SVID_X509 if q.principal.id.ends_with("/db") => Some("no-db"),
                ACTION_SVID_JWT if q.audience == "https://admin" => Some("no-admin"),
                ACTION_SVID_X509 | ACTION_SVID_JWT => None,
                _ => Some("unexpected action"),
            };
            match forbid {
                Some(p) => {
                    mayfly_proto::authz::record(trace, p);
                    AuthzDecision {
                        allow: false,
                        max_ttl: None,
                    }
                }
                None => {
                    mayfly_proto::authz::record(trace, "entry:e1");
                    AuthzDecision {
                        allow: true,
                        max_ttl: q.principal.id.ends_with("/short").then_some(60),
                    }
                }
            }
        }
    }

    fn req<'a>(kind: SvidKind, id: &'a str, audiences: &'a [String]) -> SvidRequest<'a> {
        SvidRequest {
            kind,
            workload: Principal {
                kind: PrincipalKind::Workload,
                id,
                attrs: &[],
            },
            agent: "spiffe://td/agent",
            trust_domain_id: "spiffe://td",
            audiences,
            ttl: 3600,
            source: "",
            now: 0,
        }
    }

    #[test]
    fn a_forbid_refuses_the_svid_with_access_denied_and_names_the_policy() {
        let mut trace = Vec::new();
        let d = decide_svid(
            &Rules,
            &req(SvidKind::X509, "spiffe://td/db", &[]),
            &mut trace,
        )
        .unwrap_err();
        assert_eq!(
            d,
            Denial::SvidNotAllowed(SvidKind::X509, "spiffe://td".into())
        );
        assert_eq!(d.code(), ErrorCode::AccessDenied);
        assert_eq!(d.code().http_status(), 403);
        assert_eq!(d.reason(), "svid_not_allowed");
        assert_eq!(
            d.to_string(),
            "policy does not allow this workload an X.509-SVID"
        );
        assert_eq!(trace, ["no-db"]);

        // One refused audience refuses the JWT-SVID, after the allowed ones were asked.
        let auds = vec!["https://api".to_string(), "https://admin".to_string()];
        let mut trace = Vec::new();
        let d = decide_svid(
            &Rules,
            &req(SvidKind::Jwt, "spiffe://td/web", &auds),
            &mut trace,
        )
        .unwrap_err();
        assert_eq!(
            d,
            Denial::SvidNotAllowed(SvidKind::Jwt, "https://admin".into())
        );
        assert_eq!(d.code(), ErrorCode::AccessDenied);
        assert!(
            d.to_string()
                .ends_with("a JWT-SVID for audience `https://admin`")
        );
        assert_eq!(trace, ["entry:e1", "no-admin"]);
    }

    #[test]
    fn allowed_svids_keep_the_entry_lifetime_unless_a_permit_caps_it() {
        let auds = ["https://api".to_string()];
        for (kind, aud) in [(SvidKind::X509, &[][..]), (SvidKind::Jwt, &auds[..])] {
            let g = decide_svid(&Rules, &req(kind, "spiffe://td/db2", aud), &mut vec![]);
            assert_eq!(
                g,
                Ok(SvidGrant {
                    ttl: 3600,
                    policies: vec!["entry:e1".into()]
                })
            );
            let g = decide_svid(&Rules, &req(kind, "spiffe://td/short", aud), &mut vec![]);
            assert_eq!(g.map(|g| g.ttl), Ok(60));
        }
        assert_eq!(
            decide_svid(
                &Rules,
                &req(SvidKind::Jwt, "spiffe://td/w", &[]),
                &mut vec![]
            ),
            Err(Denial::MissingParameter("audience"))
        );
    }

    #[test]
    fn svid_actions_are_reserved() {
        assert!(is_svid_action("svid_x509") && is_svid_action("svid_jwt"));
        assert!(!is_svid_action("token") && !is_svid_action("read"));
        assert_eq!(SvidKind::X509.action(), "svid_x509");
        assert_eq!(SvidKind::Jwt.action(), "svid_jwt");
    }
}
