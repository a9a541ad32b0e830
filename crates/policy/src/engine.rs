//! The loaded, immutable engine and its decision path.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use cedar_policy::{
    Authorizer, Context, Decision, Entities, Entity, EntityId, EntityUid, PolicySet, Request,
    RestrictedExpression,
};

use crate::error::PolicyError;
use crate::fast::{SugarClient, SugarIndex};
use crate::schema::Types;
use crate::slice::Index;
use crate::{ClientGrant, EntryGrant, PolicyDecision, PolicyRequest, PrincipalKind};

/// One policy of the set in force, as loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PolicyInfo {
    /// Its id (`@id`, `<file stem>:<index>`, `client:<id>:token|scopes`, or `entry:<id>`).
    pub id: String,
    /// The file it came from, the client whose `audiences`/`scopes` generated it, or the
    /// registration entry that did.
    pub origin: String,
    /// 1-based line of its first character in `origin` (0 for generated policies).
    pub line: usize,
    /// A forbid (otherwise a permit).
    pub forbid: bool,
    /// Its `@max_ttl`, in seconds.
    pub max_ttl: Option<i64>,
    /// Its source text.
    pub text: String,
}

impl PolicyInfo {
    /// `file:line`, or the client for a generated policy.
    pub fn location(&self) -> String {
        if self.line > 0 {
            format!("{}:{}", self.origin, self.line)
        } else {
            self.origin.clone()
        }
    }
}

/// Everything one policy set is built from.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyInputs<'a> {
    /// The schema (Cedar schema syntax); `None` for the built-in one (no policy directory).
    pub schema: Option<&'a str>,
    /// Policy files as (file name, text), in evaluation-id order.
    pub files: &'a [(String, String)],
    /// Clients whose `audiences`/`scopes` become generated policies.
    pub clients: &'a [ClientGrant],
    /// Registration entries, each a generated permit of its SVIDs.
    pub entries: &'a [EntryGrant],
}

/// A validated policy set, sliced for fast decisions. Immutable: reload by building a new one.
pub struct PolicyEngine {
    pub(crate) types: Types,
    /// The whole set, unsliced: the reference the slices are tested and measured against.
    pub(crate) all: PolicySet,
    pub(crate) index: Index,
    /// The clients whose own policies are all generated: the sugar fast path.
    pub(crate) sugar: SugarIndex,
    pub(crate) infos: Vec<PolicyInfo>,
    pub(crate) by_id: HashMap<String, usize>,
    /// Actions that belong to action groups, with their ancestors as parents.
    pub(crate) grouped_actions: HashMap<String, Entity>,
    /// The Workload attributes the schema declares, sorted: the ones passed on to policies.
    pub(crate) workload_attrs: Vec<String>,
    pub(crate) fingerprint: String,
    pub(crate) warnings: Vec<String>,
    pub(crate) authorizer: Authorizer,
}

impl std::fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("policies", &self.infos.len())
            .field("sugar_only_clients", &self.sugar.len())
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// What Cedar decided over one or two slices, before mayfly's error rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub allow: bool,
    pub reasons: Vec<String>,
    pub errors: Vec<String>,
}

impl PolicyEngine {
    /// The engine for clients' `audiences`/`scopes` alone, over the built-in schema (no policy
    /// directory configured).
    pub fn sugar_only(clients: &[ClientGrant]) -> Result<Self, PolicyError> {
        crate::load::build(None, &[], clients, &[])
    }

    /// The engine for all its inputs, registration entries included.
    pub fn from_inputs(inputs: PolicyInputs<'_>) -> Result<Self, PolicyError> {
        crate::load::build(inputs.schema, inputs.files, inputs.clients, inputs.entries)
    }

    /// The engine for a schema (Cedar schema syntax), policy files as (file name, text) in
    /// evaluation-id order, and the clients' generated policies.
    pub fn from_sources(
        schema: &str,
        files: &[(String, String)],
        clients: &[ClientGrant],
    ) -> Result<Self, PolicyError> {
        crate::load::build(Some(schema), files, clients, &[])
    }

    /// The engine for a directory: `schema.cedarschema` and every `*.cedar` file in it (sorted
    /// by name; no subdirectories; hidden files skipped), plus the clients' generated policies.
    pub fn load_dir(dir: &Path, clients: &[ClientGrant]) -> Result<Self, PolicyError> {
        let (schema, files) = crate::dir::read_dir(dir)?;
        crate::load::build(Some(&schema), &files, clients, &[])
    }

    /// What [`PolicyEngine::load_dir`] reads, without building: the schema text and the
    /// `*.cedar` files as (file name, text), for a caller that must see the same text twice
    /// before it trusts a directory being rewritten (then [`PolicyEngine::from_sources`]).
    pub fn read_dir(dir: &Path) -> Result<(String, Vec<(String, String)>), PolicyError> {
        crate::dir::read_dir(dir)
    }

    /// Decide one request. Never fails: a request the engine cannot evaluate is denied, with the
    /// reason in `errors`.
    ///
    /// When the only policies that could apply are a client's generated ones (its `audiences`
    /// and `scopes`), the decision is computed without Cedar, with the same result.
    pub fn decide(&self, req: &PolicyRequest<'_>) -> PolicyDecision {
        if let Some(outcome) = self.sugar_outcome(req) {
            return self.finish(outcome);
        }
        self.decide_sliced(req)
    }

    /// The same decision as [`decide`](Self::decide), always through Cedar over the slices
    /// (never the sugar fast path): a reference for benchmarks and tests. Not for the request
    /// path.
    #[doc(hidden)]
    pub fn decide_sliced(&self, req: &PolicyRequest<'_>) -> PolicyDecision {
        let sets = self.index.lookup(
            req.principal_kind,
            req.principal_id,
            req.action,
            req.audience,
        );
        if sets.iter().all(Option::is_none) {
            // No policy's scope can match: Cedar's default deny, without building a request.
            return PolicyDecision::default();
        }
        let with_context = sets.iter().flatten().any(|s| s.reads_context);
        let outcome = match self.prepare(req, with_context) {
            Ok((request, entities)) => self.evaluate(
                &request,
                &entities,
                sets.into_iter().flatten().map(|s| &s.set),
            ),
            Err(e) => Outcome {
                allow: false,
                reasons: Vec::new(),
                errors: vec![e],
            },
        };
        self.finish(outcome)
    }

    /// The sugar fast path (see `fast`): Cedar's outcome without Cedar, or `None` when some
    /// policy other than the client's generated ones could apply (then Cedar decides).
    pub(crate) fn sugar_outcome(&self, req: &PolicyRequest<'_>) -> Option<Outcome> {
        Some(self.sugar_client(req)?.outcome(req.action, req.audience))
    }

    /// The client whose generated policies alone decide `req`, if the fast path applies.
    pub(crate) fn sugar_client(&self, req: &PolicyRequest<'_>) -> Option<&SugarClient> {
        if req.principal_kind != PrincipalKind::Client {
            return None;
        }
        let client = self.sugar.client(req.principal_id)?;
        if self.grouped_actions.contains_key(req.action)
            || self.index.shared(req.action, req.audience).is_some()
        {
            return None;
        }
        Some(client)
    }

    /// The same decision as [`decide`](Self::decide), evaluating the whole set instead of the
    /// slices: the reference for benchmarks and tests. Not for the request path.
    #[doc(hidden)]
    pub fn decide_unsliced(&self, req: &PolicyRequest<'_>) -> PolicyDecision {
        self.finish(self.outcome_full(req))
    }

    /// Ids of every policy in force, in load order (files by name, then generated ones).
    pub fn policy_ids(&self) -> Vec<String> {
        self.infos.iter().map(|p| p.id.clone()).collect()
    }

    /// Every policy in force, in load order.
    pub fn policies(&self) -> &[PolicyInfo] {
        &self.infos
    }

    /// One policy by id.
    pub fn policy(&self, id: &str) -> Option<&PolicyInfo> {
        self.by_id.get(id).and_then(|&i| self.infos.get(i))
    }

    /// SHA-256 (hex) of the schema, the files (names and texts) and the generated policies: which
    /// set is in force.
    pub fn fingerprint(&self) -> String {
        self.fingerprint.clone()
    }

    /// The Workload attribute names the schema declares, sorted (`issuer`, `subject` and the
    /// optional ones): attributes with other names are not passed on to policies.
    pub fn workload_attributes(&self) -> &[String] {
        &self.workload_attrs
    }

    /// Validator warnings (for example a policy that can never apply); the set loads anyway.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The Cedar request and entities. `with_context: false` leaves the context empty, for
    /// policies that never read it.
    fn prepare(
        &self,
        req: &PolicyRequest<'_>,
        with_context: bool,
    ) -> Result<(Request, Entities), String> {
        let principal = EntityUid::from_type_name_and_id(
            self.types.principal(req.principal_kind).clone(),
            EntityId::new(req.principal_id),
        );
        let action = self.types.action_uid(req.action);
        let resource = EntityUid::from_type_name_and_id(
            self.types.audience.clone(),
            EntityId::new(req.audience),
        );
        let mut entities = Vec::with_capacity(2);
        if req.principal_kind == PrincipalKind::Workload {
            entities.push(workload_entity(
                principal.clone(),
                req.attrs,
                &self.workload_attrs,
            )?);
        }
        if let Some(a) = self.grouped_actions.get(req.action) {
            entities.push(a.clone());
        }
        let entities = if entities.is_empty() {
            Entities::empty()
        } else {
            Entities::from_entities(entities, None).map_err(|e| format!("entities: {e}"))?
        };
        let context = if with_context {
            context(
                req.grant_type,
                req.requested_ttl,
                req.source,
                req.now,
                req.client_id,
                req.actor,
            )
            .map_err(|e| format!("context: {e}"))?
        } else {
            Context::empty()
        };
        let request = Request::new(principal, action, resource, context, None)
            .map_err(|e| format!("request: {e}"))?;
        Ok((request, entities))
    }

    /// Evaluate the given sets as if they were one: any satisfied forbid denies (its ids are the
    /// reasons), else any satisfied permit allows (its ids are the reasons), else default deny.
    pub(crate) fn evaluate<'s>(
        &self,
        request: &Request,
        entities: &Entities,
        sets: impl Iterator<Item = &'s PolicySet>,
    ) -> Outcome {
        let mut permits = Vec::new();
        let mut forbids = Vec::new();
        let mut errors = Vec::new();
        for set in sets {
            let r = self.authorizer.is_authorized(request, set, entities);
            // `AsRef<str>` is the id itself; `Display` escapes quotes and backslashes.
            let reasons = r
                .diagnostics()
                .reason()
                .map(|id| AsRef::<str>::as_ref(id).to_owned());
            match r.decision() {
                Decision::Allow => permits.extend(reasons),
                Decision::Deny => forbids.extend(reasons),
            }
            errors.extend(r.diagnostics().errors().map(|e| e.to_string()));
        }
        let (allow, mut reasons) = if !forbids.is_empty() {
            (false, forbids)
        } else if !permits.is_empty() {
            (true, permits)
        } else {
            (false, Vec::new())
        };
        reasons.sort();
        errors.sort();
        Outcome {
            allow,
            reasons,
            errors,
        }
    }

    /// mayfly's rule on top of Cedar's: an evaluation error anywhere denies.
    pub(crate) fn finish(&self, o: Outcome) -> PolicyDecision {
        if !o.errors.is_empty() {
            return PolicyDecision {
                allow: false,
                policies: Vec::new(),
                max_ttl: None,
                errors: o.errors,
            };
        }
        let max_ttl = if o.allow {
            o.reasons
                .iter()
                .filter_map(|id| self.policy(id).and_then(|p| p.max_ttl))
                .min()
        } else {
            None
        };
        PolicyDecision {
            allow: o.allow,
            policies: o.reasons,
            max_ttl,
            errors: Vec::new(),
        }
    }

    /// The same request over the whole set, unsliced (the reference the slicing is tested against).
    pub(crate) fn outcome_full(&self, req: &PolicyRequest<'_>) -> Outcome {
        match self.prepare(req, true) {
            Ok((r, e)) => self.evaluate(&r, &e, std::iter::once(&self.all)),
            Err(e) => Outcome {
                allow: false,
                reasons: Vec::new(),
                errors: vec![e],
            },
        }
    }

    /// The same request through the slices.
    #[cfg(test)]
    pub(crate) fn outcome_sliced(&self, req: &PolicyRequest<'_>) -> Outcome {
        let sets = self.index.lookup(
            req.principal_kind,
            req.principal_id,
            req.action,
            req.audience,
        );
        let with_context = sets.iter().flatten().any(|s| s.reads_context);
        match self.prepare(req, with_context) {
            Ok((r, e)) => self.evaluate(&r, &e, sets.into_iter().flatten().map(|s| &s.set)),
            Err(e) => Outcome {
                allow: false,
                reasons: Vec::new(),
                errors: vec![e],
            },
        }
    }
}

/// The Workload entity: `issuer` and `subject` (required) and the declared attributes present.
fn workload_entity(
    uid: EntityUid,
    attrs: &[(&str, &str)],
    declared: &[String],
) -> Result<Entity, String> {
    let mut map: HashMap<String, RestrictedExpression> = HashMap::with_capacity(attrs.len());
    for (k, v) in attrs {
        if declared.iter().any(|d| d == k) {
            map.insert(
                (*k).to_string(),
                RestrictedExpression::new_string((*v).to_string()),
            );
        }
    }
    for required in ["issuer", "subject"] {
        if !map.contains_key(required) {
            return Err(format!(
                "workload `{}` has no `{required}` attribute",
                uid.id().unescaped()
            ));
        }
    }
    Entity::new(uid, map, HashSet::new()).map_err(|e| format!("workload entity: {e}"))
}

/// The context record, built directly (no JSON).
pub(crate) fn context(
    grant_type: &str,
    requested_ttl: i64,
    source: &str,
    now: i64,
    client_id: &str,
    actor: &str,
) -> Result<Context, String> {
    Context::from_pairs([
        (
            "grant_type".to_string(),
            RestrictedExpression::new_string(grant_type.to_string()),
        ),
        (
            "requested_ttl".to_string(),
            RestrictedExpression::new_long(requested_ttl),
        ),
        (
            "source".to_string(),
            RestrictedExpression::new_string(source.to_string()),
        ),
        ("now".to_string(), RestrictedExpression::new_long(now)),
        (
            "client_id".to_string(),
            RestrictedExpression::new_string(client_id.to_string()),
        ),
        (
            "actor".to_string(),
            RestrictedExpression::new_string(actor.to_string()),
        ),
    ])
    .map_err(|e| e.to_string())
}
