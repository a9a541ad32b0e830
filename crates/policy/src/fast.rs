//! The exact fast path for clients' generated ("sugar") policies.
//!
//! When the only policies that could apply to a request are generated ones, the decision is a
//! couple of hash lookups instead of a Cedar request: a generated permit applies iff the action
//! is one it lists and the audience one its condition lists, and nothing else can apply. The
//! fast path is taken only when all of these hold (otherwise Cedar decides, over the slices):
//!
//! - the principal is a `Client` whose own policies (those pinned by `principal ==
//!   Client::"<id>"`, the same rule as its slices) are all generated, and every one of them has
//!   exactly the generated shape (below) as Cedar parsed it;
//! - the shared slice for the request's (action, audience) is empty: no policy that does not pin
//!   a principal (a guardrail forbid, `principal is Client`, ...) could apply;
//! - the action belongs to no action group: mayfly then supplies no action entity, so `action in
//!   [A, B]` holds iff the action is A or B.
//!
//! The shape is read back from the parsed policy (its scope and, through Cedar's JSON form, its
//! condition), not from the configuration it was generated from, so escaping cannot make the two
//! disagree: `permit`, `principal == Client::"c"`, `action == A` or `action in [A, ...]`, an
//! unconstrained resource, and one `when { resource in [Audience::"x", ...] }`. Audiences have no
//! parents (mayfly supplies no Audience entity), so that condition holds iff the audience is
//! listed, and it can raise no error. The decision is then Cedar's: allow iff some permit
//! applies, the deciding ids are the applying permits (sorted), no errors, and no `@max_ttl`
//! (generated policies carry none). Tests compare it with the unsliced set on random requests.

use std::collections::{HashMap, HashSet};

use cedar_policy::{ActionConstraint, Effect, Policy, PrincipalConstraint, ResourceConstraint};
use serde_json::Value;

use crate::engine::Outcome;
use crate::schema::Types;

/// One generated permit: it applies iff the action is in `actions` and the audience in
/// `audiences`.
#[derive(Debug)]
struct Rule {
    id: String,
    actions: HashSet<Box<str>>,
    audiences: HashSet<Box<str>>,
}

/// The clients whose own policies are all generated, with those policies as rules.
#[derive(Debug, Default)]
pub(crate) struct SugarIndex {
    clients: HashMap<Box<str>, SugarClient>,
}

/// One client's generated policies (at most two: `token`, and its scopes).
#[derive(Debug)]
pub(crate) struct SugarClient {
    rules: Vec<Rule>,
}

impl SugarIndex {
    /// From every policy of the set: (policy, id, generated from a client's lists). A client
    /// pinned by any policy that is not generated, or not of the generated shape, is left out.
    pub fn build<'a>(
        policies: impl IntoIterator<Item = (&'a Policy, &'a str, bool)>,
        types: &Types,
    ) -> Self {
        // `None`: some policy pinned to this client is not sugar; Cedar decides for it.
        let mut by_client: HashMap<Box<str>, Option<Vec<Rule>>> = HashMap::new();
        for (policy, id, generated) in policies {
            let PrincipalConstraint::Eq(p) = policy.principal_constraint() else {
                continue;
            };
            if p.type_name() != &types.client {
                continue;
            }
            let slot = by_client
                .entry(Box::from(p.id().unescaped()))
                .or_insert_with(|| Some(Vec::new()));
            let rule = if generated {
                rule(policy, id, types)
            } else {
                None
            };
            match (slot.as_mut(), rule) {
                (Some(rules), Some(r)) => rules.push(r),
                _ => *slot = None,
            }
        }
        Self {
            clients: by_client
                .into_iter()
                .filter_map(|(k, v)| {
                    v.map(|mut rules| {
                        // Sorted, so that the applying ones come out in Cedar's (sorted) order.
                        rules.sort_by(|a, b| a.id.cmp(&b.id));
                        (k, SugarClient { rules })
                    })
                })
                .collect(),
        }
    }

    /// The client, if all its own policies are generated; `None` for a client that is not in
    /// the index (no policies, or pinned by a policy of its own).
    pub fn client(&self, id: &str) -> Option<&SugarClient> {
        self.clients.get(id)
    }

    /// How many clients the fast path serves.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether the fast path serves this client.
    #[cfg(test)]
    pub fn contains(&self, client: &str) -> bool {
        self.clients.contains_key(client)
    }
}

impl SugarClient {
    /// Cedar's outcome over this client's own policies. The caller has checked the rest: the
    /// shared slice for the request is empty and its action belongs to no group.
    pub fn outcome(&self, action: &str, audience: &str) -> Outcome {
        let mut reasons: Vec<String> = self
            .rules
            .iter()
            .filter(|r| r.actions.contains(action) && r.audiences.contains(audience))
            .map(|r| r.id.clone())
            .collect();
        reasons.sort();
        Outcome {
            allow: !reasons.is_empty(),
            reasons,
            errors: Vec::new(),
        }
    }
}

impl SugarClient {
    /// [`SugarClient::outcome`] without building it: whether some rule applies, with the ids
    /// of those that do recorded in `trace` (in sorted order, as `outcome` lists them).
    pub fn record(&self, action: &str, audience: &str, trace: &mut Vec<String>) -> bool {
        let mut allow = false;
        for r in self
            .rules
            .iter()
            .filter(|r| r.actions.contains(action) && r.audiences.contains(audience))
        {
            mayfly_proto::authz::record(trace, &r.id);
            allow = true;
        }
        allow
    }
}

/// The rule for a generated policy, if it has exactly the generated shape.
fn rule(policy: &Policy, id: &str, types: &Types) -> Option<Rule> {
    if policy.effect() != Effect::Permit
        || !matches!(policy.resource_constraint(), ResourceConstraint::Any)
    {
        return None;
    }
    let listed = match policy.action_constraint() {
        ActionConstraint::Eq(a) => vec![a],
        ActionConstraint::In(list) => list,
        ActionConstraint::Any => return None,
    };
    let mut actions = HashSet::with_capacity(listed.len());
    for a in listed {
        if a.type_name() != &types.action {
            return None;
        }
        actions.insert(Box::from(a.id().unescaped()));
    }
    let audiences = condition_audiences(&policy.to_json().ok()?, types)?;
    Some(Rule {
        id: id.to_string(),
        actions,
        audiences,
    })
}

/// The audiences of the one condition `when { resource in [Audience::"x", ...] }`, read from
/// Cedar's JSON form of the policy; `None` for any other condition.
fn condition_audiences(est: &Value, types: &Types) -> Option<HashSet<Box<str>>> {
    let [clause] = est.get("conditions")?.as_array()?.as_slice() else {
        return None;
    };
    if clause.get("kind")?.as_str()? != "when" {
        return None;
    }
    let test = only(clause.get("body")?, "in")?;
    if test.as_object()?.len() != 2 || only(test.get("left")?, "Var")?.as_str()? != "resource" {
        return None;
    }
    let audience_type = types.audience.to_string();
    let mut out = HashSet::new();
    for element in only(test.get("right")?, "Set")?.as_array()? {
        let entity = only(only(element, "Value")?, "__entity")?.as_object()?;
        if entity.len() != 2 || entity.get("type")?.as_str()? != audience_type {
            return None;
        }
        out.insert(Box::from(entity.get("id")?.as_str()?));
    }
    Some(out)
}

/// The value of a one-key JSON object with that key.
fn only<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    let map = v.as_object()?;
    if map.len() == 1 { map.get(key) } else { None }
}
