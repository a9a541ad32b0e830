//! Cedar policy engine for mayfly: which principal may get a token for which audience and scope.
//!
//! Every issuance, whatever its grant, asks this crate one question per action: first
//! `Action::"token"` (may this principal get a token for this audience at all?), then one action
//! per requested OAuth scope. The answer is a [`PolicyDecision`]: allow or deny (Cedar's default
//! deny), the ids of the deciding policies, the lifetime cap from their `@max_ttl` annotations and
//! any evaluation errors (which count as deny). SVID issuance asks the same engine with the
//! actions [`SVID_X509_ACTION`] and [`SVID_JWT_ACTION`] (principal the workload).
//!
//! A [`PolicyEngine`] is built once from a Cedar schema, `.cedar` policy files, the
//! `audiences`/`scopes` lists of configured clients and the registration entries (both turned
//! into generated "sugar" policies), is validated whole against the schema in strict mode, and
//! is then immutable: a server reloads by
//! building a new engine and swapping an `Arc`. Policies are sliced at load by action, audience
//! and pinned principal, so a decision evaluates only the few policies that can apply; when those
//! are only a client's generated policies, the decision is a few hash lookups, without Cedar (the
//! same result, tested against the whole set).
//!
//! What this crate does *not* do: it reads no configuration, opens no sockets, spawns no tasks
//! and watches no files. [`PolicyEngine::load_dir`] reading a directory is its only I/O; reload
//! triggers, metrics and logging belong to the server. It does not map a deny to an OAuth error
//! either: the caller knows whether it asked about `token` or a scope.
//!
//! [`PolicyEngine`] is the issuance engine's `Authorizer` (`mayfly_proto::authz`): the query
//! goes in as it is, the deciding policy ids go into the caller's trace, and a decision on the
//! fast path allocates nothing.
//!
//! See `docs/POLICY.md` for the model (entities, actions, context, ids, `@max_ttl`, sugar) and
//! the test-file format of [`run_cases`].
#![forbid(unsafe_code)]

mod authz;
mod cases;
mod dir;
mod engine;
mod error;
mod fast;
mod load;
mod route;
mod schema;
mod slice;
mod sugar;
mod text;

#[cfg(test)]
mod tests;

pub use cases::{
    CaseReport, CaseResult, CaseSettings, Expectation, case_entries, case_settings, run_cases,
};
pub use engine::{PolicyEngine, PolicyInfo, PolicyInputs};
pub use error::{PolicyError, ValidationProblem};
pub use route::{ROUTE_SCHEMA, RouteDecision, RoutePolicy, RouteRequest};
pub use schema::{WORKLOAD_OPTIONAL_ATTRS, builtin_schema};

/// The reserved action every issuance asks about before its scopes.
pub const TOKEN_ACTION: &str = mayfly_proto::ACTION_TOKEN;

/// The action asked before an X.509-SVID is signed for a workload. Its resource is the trust
/// domain, as an audience: `Audience::"spiffe://<trust domain>"`.
pub const SVID_X509_ACTION: &str = "svid_x509";

/// The action asked before a JWT-SVID is minted for a workload, once per requested audience
/// (the resource).
pub const SVID_JWT_ACTION: &str = "svid_jwt";

/// The SVID actions: reserved (never a scope), always in the schema (mayfly declares them when
/// a user schema does not), and asked only with a `Workload` principal.
pub const SVID_ACTIONS: [&str; 2] = [SVID_X509_ACTION, SVID_JWT_ACTION];

/// Whether `action` is one of mayfly's reserved actions (`token` and the SVID actions), which
/// no OAuth scope may be named after.
pub fn is_reserved_action(action: &str) -> bool {
    action == TOKEN_ACTION || SVID_ACTIONS.contains(&action)
}

/// A registration entry, turned into a generated policy (`entry:<entry_id>`) that permits its
/// SPIFFE ID both SVID actions on any resource: every entry's SVIDs are allowed unless a
/// `forbid` says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct EntryGrant {
    /// The entry's id.
    pub entry_id: String,
    /// The SPIFFE ID a matching workload gets (the id of the `Workload` entity).
    pub spiffe_id: String,
}

/// A configured client's `audiences` and `scopes`, turned into generated policies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientGrant {
    /// The OAuth `client_id` (the id of the `Client` entity).
    pub client_id: String,
    /// Audiences (resource URLs) the client may get tokens for.
    pub audiences: Vec<String>,
    /// Scopes the client may ask for (each one an action; `token` is reserved).
    pub scopes: Vec<String>,
}

/// Which entity type the principal of a request is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalKind {
    /// A registered OAuth client (`Client::"<client_id>"`).
    Client,
    /// A federated workload (`Workload::"<SPIFFE ID>"`).
    Workload,
}

impl PrincipalKind {
    /// The Cedar entity type name.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::Client => "Client",
            Self::Workload => "Workload",
        }
    }
}

/// One question to the engine: may this principal do this action on this audience?
#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    /// Entity type of the principal.
    pub principal_kind: PrincipalKind,
    /// Entity id: the client_id or the workload's SPIFFE ID.
    pub principal_id: &'a str,
    /// Workload attributes (`issuer` and `subject` are required for a workload); names that the
    /// model does not know are ignored. Ignored for a client.
    pub attrs: &'a [(&'a str, &'a str)],
    /// `token` or one scope.
    pub action: &'a str,
    /// The audience (resource URL).
    pub audience: &'a str,
    /// `context.grant_type`.
    pub grant_type: &'a str,
    /// `context.requested_ttl`, in seconds.
    pub requested_ttl: i64,
    /// `context.source`: the client's IP address, or "".
    pub source: &'a str,
    /// `context.now`: unix seconds.
    pub now: i64,
    /// `context.client_id`: the authenticated client, or "".
    pub client_id: &'a str,
    /// `context.actor`: the actor's identity under delegation, or "".
    pub actor: &'a str,
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicyDecision {
    /// Allowed: some permit applied, no forbid applied, and no policy failed to evaluate.
    pub allow: bool,
    /// Ids of the deciding policies, sorted: the permits that allowed, or the forbids that denied
    /// (empty for a default deny).
    pub policies: Vec<String>,
    /// Lifetime cap in seconds: the least `@max_ttl` among the deciding permits that carry one.
    pub max_ttl: Option<i64>,
    /// Evaluation errors, each naming its policy; any error makes the decision a deny.
    pub errors: Vec<String>,
}
