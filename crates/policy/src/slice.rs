//! Slicing: at load, every policy is filed under the actions, the audience and the principal its
//! scope pins, so a request evaluates only the policies whose scope could match it.
//!
//! The rule is the same for permits and forbids, and it only ever leaves out a policy whose scope
//! cannot hold for the request (Cedar checks the scope before the conditions, so a left-out policy
//! could neither apply nor fail): sliced and unsliced evaluation decide alike, which a test checks
//! on random requests.
//!
//! - action: `action == A` files the policy under A; `action in [A, G]` under A, G and every
//!   action the schema puts in group G; an unconstrained action under every action and under
//!   "unknown action";
//! - resource: `resource == Audience::"x"` (or `in`, the same thing since audiences have no
//!   parents) pins audience x; anything else is "any audience";
//! - principal: `principal == Client::"c"` / `Workload::"w"` files the policy in that principal's
//!   own slices; everything else is shared. A request evaluates the shared slice and its
//!   principal's slice (when either is non-empty) and combines them as one set would.
//!
//! Each slice also records whether any of its policies reads `context`: when none of the slices a
//! request evaluates does, the request is built with an empty context (building the context
//! record is about half the cost of a decision, and a policy that never names `context` cannot
//! tell the difference).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use cedar_policy::{Policy, PolicySet};

use crate::PrincipalKind;
use crate::error::PolicyError;

/// Above this many policy copies, one action's slice is not split by audience.
const AUDIENCE_SPLIT_BUDGET: usize = 100_000;

/// What a policy's scope pins.
pub(crate) struct Scoped {
    pub policy: Policy,
    /// `None`: any action; otherwise the actions it can match (groups expanded).
    pub actions: Option<Vec<String>>,
    /// The audience pinned by the resource scope.
    pub audience: Option<String>,
    /// The principal pinned by `principal ==`.
    pub principal: Option<(PrincipalKind, String)>,
    /// It names `context` (or might: when in doubt, true).
    pub reads_context: bool,
}

/// One slice: the policies to evaluate, and whether any of them reads `context`.
pub(crate) struct Slice {
    pub set: PolicySet,
    pub reads_context: bool,
}

/// All slices of one policy set.
pub(crate) struct Index {
    shared: Slices,
    clients: HashMap<Box<str>, Slices>,
    workloads: HashMap<Box<str>, Slices>,
}

impl Index {
    pub fn build(policies: &[Scoped]) -> Result<Self, PolicyError> {
        let mut shared = Vec::new();
        let mut clients: BTreeMap<&str, Vec<&Scoped>> = BTreeMap::new();
        let mut workloads: BTreeMap<&str, Vec<&Scoped>> = BTreeMap::new();
        for p in policies {
            match &p.principal {
                None => shared.push(p),
                Some((PrincipalKind::Client, id)) => clients.entry(id).or_default().push(p),
                Some((PrincipalKind::Workload, id)) => workloads.entry(id).or_default().push(p),
            }
        }
        let group =
            |m: BTreeMap<&str, Vec<&Scoped>>| -> Result<HashMap<Box<str>, Slices>, PolicyError> {
                m.into_iter()
                    .map(|(k, v)| Ok((Box::from(k), Slices::build(&v)?)))
                    .collect()
            };
        Ok(Self {
            shared: Slices::build(&shared)?,
            clients: group(clients)?,
            workloads: group(workloads)?,
        })
    }

    /// The (at most two) non-empty sets to evaluate for this request.
    pub fn lookup(
        &self,
        kind: PrincipalKind,
        principal: &str,
        action: &str,
        audience: &str,
    ) -> [Option<&Slice>; 2] {
        let own = match kind {
            PrincipalKind::Client => self.clients.get(principal),
            PrincipalKind::Workload => self.workloads.get(principal),
        };
        [
            self.shared(action, audience),
            own.map(|s| s.get(action, audience))
                .filter(|s| !s.set.is_empty()),
        ]
    }

    /// The shared slice for this action and audience, if non-empty: the policies that pin no
    /// principal and whose scope could match.
    pub fn shared(&self, action: &str, audience: &str) -> Option<&Slice> {
        Some(self.shared.get(action, audience)).filter(|s| !s.set.is_empty())
    }

    /// Largest number of policies any request evaluates (for tests and the benchmark).
    #[cfg(test)]
    pub fn max_slice(&self) -> usize {
        let own = self
            .clients
            .values()
            .chain(self.workloads.values())
            .map(Slices::max)
            .max()
            .unwrap_or(0);
        self.shared.max() + own
    }
}

struct Slices {
    by_action: HashMap<Box<str>, ActionSlice>,
    unknown: ActionSlice,
}

impl Slices {
    fn build(members: &[&Scoped]) -> Result<Self, PolicyError> {
        let named: BTreeSet<&str> = members
            .iter()
            .filter_map(|p| p.actions.as_ref())
            .flatten()
            .map(String::as_str)
            .collect();
        let mut by_action = HashMap::with_capacity(named.len());
        for a in named {
            let applying: Vec<&Scoped> = members
                .iter()
                .copied()
                .filter(|p| p.actions.as_ref().is_none_or(|v| v.iter().any(|x| x == a)))
                .collect();
            by_action.insert(Box::from(a), ActionSlice::build(&applying)?);
        }
        let any: Vec<&Scoped> = members
            .iter()
            .copied()
            .filter(|p| p.actions.is_none())
            .collect();
        Ok(Self {
            by_action,
            unknown: ActionSlice::build(&any)?,
        })
    }

    fn get(&self, action: &str, audience: &str) -> &Slice {
        self.by_action
            .get(action)
            .unwrap_or(&self.unknown)
            .get(audience)
    }

    #[cfg(test)]
    fn max(&self) -> usize {
        self.by_action
            .values()
            .chain(std::iter::once(&self.unknown))
            .map(|s| {
                s.by_audience
                    .values()
                    .chain(std::iter::once(&s.other))
                    .map(|s| s.set.num_of_policies())
                    .max()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

struct ActionSlice {
    /// Any-audience policies (and all of them when the slice is not split by audience).
    other: Slice,
    /// Per pinned audience: the any-audience policies plus those pinned to it.
    by_audience: HashMap<Box<str>, Slice>,
}

impl ActionSlice {
    fn build(members: &[&Scoped]) -> Result<Self, PolicyError> {
        let mut any = Vec::new();
        let mut pinned: BTreeMap<&str, Vec<&Scoped>> = BTreeMap::new();
        for p in members {
            match &p.audience {
                None => any.push(*p),
                Some(a) => pinned.entry(a).or_default().push(*p),
            }
        }
        if any.len().saturating_mul(pinned.len()) > AUDIENCE_SPLIT_BUDGET {
            return Ok(Self {
                other: set(members.iter().copied())?,
                by_audience: HashMap::new(),
            });
        }
        let mut by_audience = HashMap::with_capacity(pinned.len());
        for (aud, ps) in pinned {
            by_audience.insert(
                Box::from(aud),
                set(any.iter().copied().chain(ps.iter().copied()))?,
            );
        }
        Ok(Self {
            other: set(any.iter().copied())?,
            by_audience,
        })
    }

    fn get(&self, audience: &str) -> &Slice {
        self.by_audience.get(audience).unwrap_or(&self.other)
    }
}

fn set<'a>(policies: impl Iterator<Item = &'a Scoped>) -> Result<Slice, PolicyError> {
    let mut reads_context = false;
    let set = PolicySet::from_policies(policies.map(|p| {
        reads_context |= p.reads_context;
        p.policy.clone()
    }))
    .map_err(|e| PolicyError::Internal {
        message: format!("building a policy slice: {e}"),
    })?;
    Ok(Slice { set, reads_context })
}
