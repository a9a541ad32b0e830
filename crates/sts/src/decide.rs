//! Decide what a token may carry: one audience, a subset of the client's scopes, a lifetime that
//! a request can only shorten. Default deny: nothing is granted that the client was not given.

use crate::{Client, Denial, Settings};

/// What the request asked for (already parsed from the form).
#[derive(Debug, Clone, Default)]
pub struct TokenParams {
    /// Space-separated scopes, if any.
    pub scope: Option<String>,
    /// RFC 8707 `resource` values.
    pub resources: Vec<String>,
    /// `audience` parameter (RFC 8693 style), if any.
    pub audience: Option<String>,
    /// Requested lifetime in seconds (`expires_in`), if any.
    pub requested_ttl: Option<i64>,
}

/// What will be minted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The client.
    pub client_id: String,
    /// The subject (the client itself for client_credentials).
    pub subject: String,
    /// The one audience.
    pub audience: String,
    /// Granted scopes, in the order requested.
    pub scopes: Vec<String>,
    /// Lifetime in seconds.
    pub ttl: i64,
}

/// Echo at most this much of a refused value back in an error description.
fn clip(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decide a client_credentials grant.
pub fn decide(settings: &Settings, client: &Client, params: &TokenParams) -> Result<Grant, Denial> {
    let mut targets: Vec<&str> = params.resources.iter().map(String::as_str).collect();
    if let Some(a) = params.audience.as_deref().filter(|a| !targets.contains(a)) {
        targets.push(a);
    }
    let audience = match targets.as_slice() {
        [] => match client.audiences.as_slice() {
            [only] => only.clone(),
            _ => return Err(Denial::TargetRequired),
        },
        [one] => {
            if !client.audiences.iter().any(|a| a == one) {
                return Err(Denial::TargetNotAllowed(clip(one)));
            }
            (*one).to_string()
        }
        _ => return Err(Denial::MultipleTargets),
    };
    let mut scopes: Vec<String> = Vec::new();
    for s in params
        .scope
        .as_deref()
        .unwrap_or("")
        .split(' ')
        .filter(|s| !s.is_empty())
    {
        if !client.scopes.iter().any(|c| c == s) {
            return Err(Denial::ScopeNotAllowed(clip(s)));
        }
        if !scopes.iter().any(|x| x == s) {
            scopes.push(s.to_string());
        }
    }
    let cap = client.max_ttl.min(settings.max_ttl);
    let ttl = match params.requested_ttl {
        Some(t) if t <= 0 => {
            return Err(Denial::InvalidParameter(
                "expires_in",
                "must be a positive number of seconds".into(),
            ));
        }
        Some(t) => t.min(cap),
        None => settings.default_ttl.min(cap),
    };
    Ok(Grant {
        client_id: client.id.clone(),
        subject: client.id.clone(),
        audience,
        scopes,
        ttl,
    })
}
