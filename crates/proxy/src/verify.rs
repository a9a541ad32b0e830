//! Token verification with the one access-token verifier ([`mayfly_client::access`]) and the
//! one JWKS key source ([`mayfly_client::keysource`]): discovery (RFC 8414) → `jwks_uri`,
//! cached; refreshed when a token names an unknown key, one refresh at a time and at most one
//! per [`MIN_REFRESH`]. Checks `typ: at+jwt`, the signature, `iss`, `aud` (a string or a list
//! holding the route's audience), `exp`/`nbf`/`iat` with [`SKEW`], and the route's scopes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mayfly_client::access::{self, AccessClaims, AccessTokenError, Claims, TimeRule};
use mayfly_client::keysource::{KeyLocation, KeySource, KeySourceError, KeySourceOptions, TtlRule};
use mayfly_client::status::StatusListRef;
use mayfly_proto::ServerMetadata;

use crate::error::Refusal;
use crate::route::Route;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW: i64 = 30;
/// Least time between two JWKS fetches after a successful one.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Least seconds between two attempts after a failed one.
const RETRY_AFTER_FAILURE_SECS: i64 = 1;
/// Largest JWK Set accepted, in bytes.
const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most verified tokens remembered.
const MAX_VERIFIED: usize = 100_000;

/// The issuer's metadata, discovered once and again after a failure.
#[derive(Debug)]
pub struct Issuer {
    http: reqwest::Client,
    /// The issuer identifier (no trailing `/`).
    pub issuer: String,
    md: tokio::sync::Mutex<Option<Arc<ServerMetadata>>>,
}

impl Issuer {
    /// For `issuer`, using `http` (no redirects, timeouts).
    pub fn new(http: reqwest::Client, issuer: &str) -> Self {
        Self {
            http,
            issuer: issuer.trim_end_matches('/').to_string(),
            md: tokio::sync::Mutex::new(None),
        }
    }

    /// The HTTP client towards the issuer.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The metadata (fetched on first use).
    pub async fn metadata(&self) -> Result<Arc<ServerMetadata>, mayfly_client::ClientError> {
        let mut md = self.md.lock().await;
        if let Some(m) = md.as_ref() {
            return Ok(m.clone());
        }
        let m = Arc::new(mayfly_client::discover(&self.http, &self.issuer).await?);
        *md = Some(m.clone());
        Ok(m)
    }

    /// Forget the metadata (after the issuer failed us), so the next use discovers again.
    pub async fn forget(&self) {
        *self.md.lock().await = None;
    }
}

/// Who called: a verified token's identity.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Subject (the workload identity).
    pub sub: String,
    /// Client the token was issued to.
    pub client_id: Option<String>,
    /// Token id (logged and audited instead of the token).
    pub jti: String,
    /// Expiry.
    pub exp: i64,
    /// Scopes carried.
    pub scopes: Vec<String>,
    /// Where its revocation status is published (`status.status_list`), if it says.
    pub status: Option<StatusListRef>,
}

/// SHA-256 of a token → its checked claims and the JWKS generation that checked them.
type VerifiedCache = HashMap<[u8; 32], (Arc<Claims>, u64)>;

/// The issuer's keys as the proxy keeps them: until a token names an unknown `kid` (whatever
/// `Cache-Control` says), then refetched at most once per [`MIN_REFRESH`] (a second after a
/// failure), no redirects, the client's 15 s deadline.
fn key_options() -> KeySourceOptions {
    KeySourceOptions {
        ttl: TtlRule::UNTIL_UNKNOWN_KID,
        unknown_kid_interval: MIN_REFRESH.as_secs() as i64,
        interval_from_any_fetch: true,
        retry_after_error: RETRY_AFTER_FAILURE_SECS,
        max_redirects: 0,
        max_bytes: MAX_JWKS_BYTES,
        timeout: Duration::from_secs(15),
    }
}

/// The issuer's key source and the checks.
pub struct Verifier {
    issuer: Arc<Issuer>,
    keys: Arc<KeySource>,
    /// SHA-256 of a verified token → its claims and the JWKS generation that verified it.
    verified: Mutex<VerifiedCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("issuer", &self.issuer.issuer)
            .finish()
    }
}

fn invalid(e: &AccessTokenError) -> Refusal {
    Refusal::InvalidToken(e.to_string())
}

impl Verifier {
    /// For tokens of `issuer`; its keys are found through its RFC 8414 metadata.
    pub fn new(issuer: Arc<Issuer>) -> Result<Self, KeySourceError> {
        let keys = Arc::new(KeySource::new(
            issuer.issuer.clone(),
            KeyLocation::OAuthDiscovery(issuer.issuer.clone()),
            key_options(),
        )?);
        Ok(Self {
            issuer,
            keys,
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The issuer's key source (status lists are signed with the same keys as tokens).
    pub fn key_source(&self) -> Arc<KeySource> {
        self.keys.clone()
    }

    /// Fetch the issuer's keys ahead of the first token; a failure is only logged (the issuer
    /// may start later).
    pub async fn warm(&self, now: i64) {
        self.keys.keys(now).await;
    }

    /// The token's claims once its signature, `typ` and issuer are checked; remembered per
    /// token (by SHA-256) for as long as the JWKS it was checked against is current, so that a
    /// token used for many calls is verified once.
    async fn verified(&self, token: &str, now: i64) -> Result<Arc<Claims>, Refusal> {
        let digest = mayfly_crypto::sha256(token.as_bytes());
        let seen = self.keys.generation();
        if let Some(c) = self.verified.lock().ok().and_then(|m| {
            m.get(&digest)
                .filter(|(_, g)| *g == seen)
                .map(|(c, _)| c.clone())
        }) {
            return Ok(c);
        }
        let issuer = self.issuer.issuer.as_str();
        let claims = self
            .keys
            .verify_with(
                now,
                |keys| access::verify_signed::<Claims>(keys, token, issuer),
                |e| *e == AccessTokenError::UnknownKey,
            )
            .await
            .map_err(|e| e.map_or(Refusal::IssuerUnavailable, |e| invalid(&e)))?;
        let claims = Arc::new(claims);
        let generation = self.keys.generation();
        if let Ok(mut m) = self.verified.lock() {
            if m.len() >= MAX_VERIFIED {
                m.retain(|_, (c, g)| *g == generation && c.exp + SKEW > now);
            }
            if m.len() >= MAX_VERIFIED {
                m.clear();
            }
            m.insert(digest, (claims.clone(), generation));
        }
        Ok(claims)
    }

    /// Verify `token` for `route` at `now` (scopes: [`check_scopes`]).
    pub async fn verify(&self, token: &str, route: &Route, now: i64) -> Result<Caller, Refusal> {
        let c = self.verified(token, now).await?;
        let time = TimeRule {
            now,
            skew: SKEW,
            not_before: true,
        };
        access::check_claims(&*c, Some(&route.audience), Some(time)).map_err(|e| invalid(&e))?;
        let scopes: Vec<String> = mayfly_proto::scope_tokens(c.scope.as_deref())
            .map(str::to_string)
            .collect();
        Ok(Caller {
            sub: c.sub.clone(),
            client_id: c.client_id.clone(),
            jti: c.jti.clone(),
            exp: c.exp,
            scopes,
            status: c.status_list(),
        })
    }
}

/// Whether the caller's token carries every scope the route needs.
pub fn check_scopes(caller: &Caller, route: &Route) -> Result<(), Refusal> {
    let missing: Vec<&str> = route
        .scopes
        .iter()
        .filter(|s| !caller.scopes.contains(s))
        .map(String::as_str)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Refusal::InsufficientScope(missing.join(" ")))
    }
}
