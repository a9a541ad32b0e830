//! Clients' `audiences`/`scopes` lists as generated Cedar policies, loaded, validated and sliced
//! like every hand-written policy. When a request could match nothing else, `fast` decides them
//! without Cedar, with the same result.

use crate::error::PolicyError;
use crate::text::cedar_string;
use crate::{ClientGrant, TOKEN_ACTION};

/// One generated policy.
pub(crate) struct SugarPolicy {
    /// The client it was generated for.
    pub client: String,
    /// Its id (`client:<id>:token` or `client:<id>:scopes`).
    pub id: String,
    /// Its Cedar text.
    pub text: String,
    /// The actions it names.
    pub actions: Vec<String>,
}

/// The label under which a client's generated policies are reported.
pub(crate) fn origin(client: &str) -> String {
    format!("client `{client}` (mayfly config)")
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
            text: format!(
                "@id({})\npermit(principal == {principal}, action == Action::\"token\", resource)\nwhen {{ resource in [{audiences}] }};",
                cedar_string(&id)
            ),
            id,
            actions: vec![TOKEN_ACTION.into()],
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
            text: format!(
                "@id({})\npermit(principal == {principal}, action in [{actions}], resource)\nwhen {{ resource in [{audiences}] }};",
                cedar_string(&id)
            ),
            id,
            actions: scopes,
        });
    }
    Ok(out)
}
