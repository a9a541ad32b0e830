//! Token verification against the issuer's JWKS: discovery (RFC 8414) → `jwks_uri`, cached;
//! refreshed when a token names an unknown key, one refresh at a time and at most one per
//! [`MIN_REFRESH`]. Checks `typ: at+jwt`, the signature, `iss`, `aud` (a string or a list
//! holding the route's audience), `exp`/`nbf`/`iat` with [`SKEW`], and the route's scopes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use mayfly_crypto::{VerifyError, VerifyingKeys};
use mayfly_proto::ServerMetadata;
use serde::Deserialize;

use crate::error::Refusal;
use crate::route::Route;

/// Clock skew allowed on `exp`, `nbf` and `iat`, in seconds.
pub const SKEW: i64 = 30;
/// Least time between two JWKS fetches after a successful one.
pub const MIN_REFRESH: Duration = Duration::from_secs(10);
/// Least time between two attempts after a failed one.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// Longest token accepted (bytes): far above any mayfly token, bounds the work per request.
const MAX_TOKEN_LEN: usize = 8 * 1024;
/// Signature algorithms of mayfly access tokens.
const ALGS: &[Algorithm] = &[Algorithm::EdDSA, Algorithm::ES256];
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

/// One audience or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Aud {
    One(String),
    Many(Vec<String>),
}

/// The RFC 9068 claims the proxy reads.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Aud,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    exp: i64,
    #[serde(default)]
    nbf: Option<i64>,
    #[serde(default)]
    iat: Option<i64>,
    jti: String,
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
}

/// SHA-256 of a token → its checked claims and the JWKS generation that checked them.
type VerifiedCache = HashMap<[u8; 32], (Arc<Claims>, u64)>;

struct Refresh {
    last: Option<Instant>,
    last_failed: bool,
}

/// The JWKS cache and the checks.
pub struct Verifier {
    issuer: Arc<Issuer>,
    keys: RwLock<Option<Arc<VerifyingKeys>>>,
    generation: AtomicU64,
    refresh: tokio::sync::Mutex<Refresh>,
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

fn invalid(why: &str) -> Refusal {
    Refusal::InvalidToken(why.to_string())
}

impl Verifier {
    /// For tokens of `issuer`.
    pub fn new(issuer: Arc<Issuer>) -> Self {
        Self {
            issuer,
            keys: RwLock::new(None),
            generation: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(Refresh {
                last: None,
                last_failed: false,
            }),
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn current(&self) -> Option<Arc<VerifyingKeys>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// Fetch the JWKS now unless another task just did (or one was fetched within
    /// [`MIN_REFRESH`]). `seen` is the generation the caller's verdict came from.
    pub async fn refresh(&self, seen: u64) -> Result<Arc<VerifyingKeys>, Refusal> {
        let mut r = self.refresh.lock().await;
        if self.generation.load(Ordering::Acquire) != seen
            && let Some(k) = self.current()
        {
            return Ok(k);
        }
        let wait = if r.last_failed {
            RETRY_AFTER_FAILURE
        } else {
            MIN_REFRESH
        };
        if r.last.is_some_and(|t| t.elapsed() < wait) {
            return self.current().ok_or(Refusal::IssuerUnavailable);
        }
        r.last = Some(Instant::now());
        let fetched = async {
            let md = self.issuer.metadata().await?;
            mayfly_client::fetch_keys(self.issuer.http(), &md).await
        }
        .await;
        match fetched {
            Ok(keys) => {
                r.last_failed = false;
                let keys = Arc::new(keys);
                tracing::info!(keys = keys.len(), "fetched the issuer's JWKS");
                if let Ok(mut k) = self.keys.write() {
                    *k = Some(keys.clone());
                }
                self.generation.fetch_add(1, Ordering::AcqRel);
                Ok(keys)
            }
            Err(e) => {
                r.last_failed = true;
                self.issuer.forget().await;
                tracing::warn!(error = %e, "cannot fetch the issuer's JWKS");
                self.current().ok_or(Refusal::IssuerUnavailable)
            }
        }
    }

    /// The token's claims once its signature, `typ` and issuer are checked; remembered per
    /// token (by SHA-256) for as long as the JWKS it was checked against is current, so that a
    /// token used for many calls is verified once.
    async fn verified(&self, token: &str, now: i64) -> Result<Arc<Claims>, Refusal> {
        let digest = mayfly_crypto::sha256(token.as_bytes());
        let seen = self.generation.load(Ordering::Acquire);
        if let Some(c) = self.verified.lock().ok().and_then(|m| {
            m.get(&digest)
                .filter(|(_, g)| *g == seen)
                .map(|(c, _)| c.clone())
        }) {
            return Ok(c);
        }
        let first = self.current().map(|k| k.verify::<Claims>(token, ALGS));
        let verified = match first {
            Some(Ok(v)) => v,
            Some(Err(VerifyError::UnknownKey)) | None => {
                let keys = self.refresh(seen).await?;
                keys.verify::<Claims>(token, ALGS).map_err(|e| match e {
                    VerifyError::UnknownKey => {
                        invalid("the token is signed by a key the issuer does not publish")
                    }
                    _ => invalid("the token is not a valid signed JWT of the issuer"),
                })?
            }
            Some(Err(VerifyError::BadSignature)) => {
                return Err(invalid("the token's signature does not verify"));
            }
            Some(Err(_)) => {
                return Err(invalid("the token is not a valid signed JWT of the issuer"));
            }
        };
        let typ = verified.header.typ.as_deref().unwrap_or("");
        if !typ.eq_ignore_ascii_case("at+jwt") && !typ.eq_ignore_ascii_case("application/at+jwt") {
            return Err(invalid("the token is not an access token (typ at+jwt)"));
        }
        if verified.claims.iss != self.issuer.issuer {
            return Err(invalid("the token was issued by another issuer"));
        }
        let claims = Arc::new(verified.claims);
        let generation = self.generation.load(Ordering::Acquire);
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
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid("the token is too long"));
        }
        let c = self.verified(token, now).await?;
        let aud_ok = match &c.aud {
            Aud::One(a) => *a == route.audience,
            Aud::Many(v) => v.contains(&route.audience),
        };
        if !aud_ok {
            return Err(invalid("the token is for another audience"));
        }
        if now >= c.exp + SKEW {
            return Err(invalid("the token has expired"));
        }
        if c.nbf.is_some_and(|nbf| nbf > now + SKEW) || c.iat.is_some_and(|iat| iat > now + SKEW) {
            return Err(invalid("the token is not valid yet"));
        }
        let scopes: Vec<String> = mayfly_proto::scope_tokens(c.scope.as_deref())
            .map(str::to_string)
            .collect();
        Ok(Caller {
            sub: c.sub.clone(),
            client_id: c.client_id.clone(),
            jti: c.jti.clone(),
            exp: c.exp,
            scopes,
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
