//! The policy engine as the issuance engine's [`Authorizer`].

use mayfly_proto::authz::{Authorizer, AuthzDecision, AuthzQuery, record};

use crate::{PolicyEngine, PolicyRequest, PrincipalKind};

impl PolicyEngine {
    /// Decide `q` as [`Authorizer::authorize`] does, and also return the evaluation errors
    /// (each one made the decision a deny) for the caller to report.
    ///
    /// A client decided by its generated policies alone (the fast path) costs no allocation
    /// beyond the ids `trace` does not hold yet.
    pub fn authorize_reporting(
        &self,
        q: &AuthzQuery<'_>,
        trace: &mut Vec<String>,
    ) -> (AuthzDecision, Vec<String>) {
        let principal_kind = match q.principal.kind {
            mayfly_proto::PrincipalKind::Client => PrincipalKind::Client,
            mayfly_proto::PrincipalKind::Workload => PrincipalKind::Workload,
        };
        // Only a workload's attributes reach the policies; a client's are ignored.
        let attrs: Vec<(&str, &str)> = match principal_kind {
            PrincipalKind::Workload => q
                .principal
                .attrs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            PrincipalKind::Client => Vec::new(),
        };
        let req = PolicyRequest {
            principal_kind,
            principal_id: q.principal.id,
            attrs: &attrs,
            action: q.action,
            audience: q.audience,
            grant_type: q.grant_type,
            requested_ttl: q.requested_ttl,
            source: q.source,
            now: q.now,
            client_id: q.client_id,
            actor: q.actor,
        };
        if let Some(client) = self.sugar_client(&req) {
            // Generated policies carry no `@max_ttl`, and cannot fail to evaluate.
            let allow = client.record(req.action, req.audience, trace);
            return (
                AuthzDecision {
                    allow,
                    max_ttl: None,
                },
                Vec::new(),
            );
        }
        let d = self.decide_sliced(&req);
        for id in &d.policies {
            record(trace, id);
        }
        (
            AuthzDecision {
                allow: d.allow,
                max_ttl: d.max_ttl,
            },
            d.errors,
        )
    }
}

impl Authorizer for PolicyEngine {
    fn authorize(&self, q: &AuthzQuery<'_>, trace: &mut Vec<String>) -> AuthzDecision {
        self.authorize_reporting(q, trace).0
    }
}
