use serde::{Deserialize, Serialize};

/// Authorization server metadata (RFC 8414 §2), also served as OpenID configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerMetadata {
    /// Issuer identifier.
    pub issuer: String,
    /// Token endpoint URL.
    pub token_endpoint: String,
    /// JWK Set URL.
    pub jwks_uri: String,
    /// Introspection endpoint URL (RFC 7662).
    pub introspection_endpoint: String,
    /// Revocation endpoint URL (RFC 7009).
    pub revocation_endpoint: String,
    /// Token Status List aggregation endpoint (draft-ietf-oauth-status-list): lists the URIs
    /// of every status list, each at `{issuer}/statuslists/{n}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_list_aggregation_endpoint: Option<String>,
    /// Supported grant types.
    pub grant_types_supported: Vec<String>,
    /// Response types: none, this is not an interactive authorization server.
    pub response_types_supported: Vec<String>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Assertion algorithms accepted at the token endpoint.
    pub token_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Client authentication methods at the introspection endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// Assertion algorithms accepted at the introspection endpoint.
    pub introspection_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Client authentication methods at the revocation endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// Assertion algorithms accepted at the revocation endpoint.
    pub revocation_endpoint_auth_signing_alg_values_supported: Vec<String>,
    /// Scopes any client may be granted (union of registered scopes).
    pub scopes_supported: Vec<String>,
    /// Algorithms access tokens are signed with.
    pub access_token_signing_alg_values_supported: Vec<String>,
}
