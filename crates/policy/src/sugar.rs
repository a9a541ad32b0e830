//! Clients' `audiences`/`scopes` lists and registration entries as generated Cedar policies,
//! loaded, validated and sliced like every hand-written policy. When a client's request could
//! match nothing else, `fast` decides it without Cedar, with the same result.

use crate::error::PolicyError;
use crate::text::cedar_string;
use crate::{
    ClientGrant, EntryGrant, SVID_ACTIONS, SVID_JWT_ACTION, SVID_X509_ACTION, TOKEN_ACTION,
};

/// One generated policy.
pub(crate) struct SugarPolicy {
    /// The client it was generated for ("" for an entry's).
    pub client: String,
    /// Where it is reported to come from.
    pub origin: String,
    /// Its id (`client:<id>:token` or `client:<id>:scopes`).
    pub id: String,
    /// Its Cedar text.
    pub text: String,
    /// The actions it names.
    pub actions: Vec<String>,
    /// Its Cedar JSON form, when built directly (cheaper to load than the text to parse).
    pub json: Option<serde_json::Value>,
}

/// The label under which a client's generated policies are reported.
pub(crate) fn origin(client: &str) -> String {
    format!("client `{client}` (mayfly config)")
}

/// The generated policies for registration entries: one permit per entry, pinned to its SPIFFE
/// ID (so slicing files it under that workload alone), for both SVID actions on any resource.
pub(crate) fn generate_entries(entries: &[EntryGrant]) -> Vec<SugarPolicy> {
    let actions = format!(
        "[Action::{}, Action::{}]",
        cedar_string(SVID_X509_ACTION),
        cedar_string(SVID_JWT_ACTION)
    );
    entries
        .iter()
        .map(|e| {
            let id = format!("entry:{}", e.entry_id);
            SugarPolicy {
                client: String::new(),
                origin: format!("registration entry `{}`", e.entry_id),
                text: format!(
                    "@id({})\npermit(principal == Workload::{}, action in {actions}, resource);",
                    cedar_string(&id),
                    cedar_string(&e.spiffe_id)
                ),
                id,
                actions: SVID_ACTIONS.iter().map(|a| (*a).to_string()).collect(),
                json: Some(entry_json(&e.spiffe_id)),
            }
        })
        .collect()
}

/// The generated policies for `clients`. A client without audiences gets none (nothing could
/// match, and Cedar's strict validator refuses an empty set literal); a client without scopes
/// gets no scopes policy.
pub(crate) fn generate(clients: &[ClientGrant]) -> Result<Vec<SugarPolicy>, PolicyError> {
    let mut out = Vec::new();
    for c in clients {
        if c.scopes.iter().any(|s| s == TOKEN_ACTION) {
            return Err(PolicyError::ReservedScope {
                client: c.client_id.clone(),
            });
        }
        if let Some(s) = c.scopes.iter().find(|s| SVID_ACTIONS.contains(&s.as_str())) {
            return Err(PolicyError::SvidScope {
                client: c.client_id.clone(),
                scope: s.clone(),
            });
        }
        if c.audiences.is_empty() {
            continue;
        }
        let principal = format!("Client::{}", cedar_string(&c.client_id));
        let audiences = c
            .audiences
            .iter()
            .map(|a| format!("Audience::{}", cedar_string(a)))
            .collect::<Vec<_>>()
            .join(", ");
        let id = format!("client:{}:token", c.client_id);
        out.push(SugarPolicy {
            client: c.client_id.clone(),
            origin: origin(&c.client_id),
            text: format!(
                "@id({})\npermit(principal == {principal}, action == Action::\"token\", resource)\nwhen {{ resource in [{audiences}] }};",
                cedar_string(&id)
            ),
            id,
            actions: vec![TOKEN_ACTION.into()],
            json: None,
        });
        if c.scopes.is_empty() {
            continue;
        }
        let mut scopes: Vec<String> = Vec::new();
        for s in &c.scopes {
            if !scopes.contains(s) {
                scopes.push(s.clone());
            }
        }
        let actions = scopes
            .iter()
            .map(|s| format!("Action::{}", cedar_string(s)))
            .collect::<Vec<_>>()
            .join(", ");
        let id = format!("client:{}:scopes", c.client_id);
        out.push(SugarPolicy {
            client: c.client_id.clone(),
            origin: origin(&c.client_id),
            text: format!(
                "@id({})\npermit(principal == {principal}, action in [{actions}], resource)\nwhen {{ resource in [{audiences}] }};",
                cedar_string(&id)
            ),
            id,
            actions: scopes,
            json: None,
        });
    }
    Ok(out)
}

/// An entry's permit in Cedar's JSON policy form (the same policy as its text).
fn entry_json(spiffe_id: &str) -> serde_json::Value {
    let action = |a: &str| serde_json::json!({ "type": "Action", "id": a });
    serde_json::json!({
        "effect": "permit",
        "principal": { "op": "==", "entity": { "type": "Workload", "id": spiffe_id } },
        "action": { "op": "in", "entities": SVID_ACTIONS.map(action) },
        "resource": { "op": "All" },
        "conditions": [],
    })
}
