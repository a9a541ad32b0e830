//! SPIFFE issuing: the trust domain's X.509 CA and JWT-SVID keys (sealed in the store, rotated
//! on the signing keys' schedule), the trust bundle, SVID signing for agents, and the server's
//! own X.509-SVID for the agent API.

pub(crate) mod agent_api;
mod node_attest;
pub mod tls;

use std::sync::{Arc, RwLock};

use mayfly_config::SpiffeConfig;
use mayfly_crypto::x509::{self, X509Ca};
use mayfly_crypto::{Kek, KeyAlg, SigningKey, VerifyingKeys};
use mayfly_proto::spiffe::BundleWire;
use mayfly_store::{AuditLog, AuthorityKind, Store, StoreError, StoredAuthority};
use mayfly_sts::keys::{self, KeyAction, KeyTimes, Schedule};
use mayfly_sts::{AuditEvent, Decision, EventKind};
use serde::Serialize;
use zeroize::Zeroizing;

/// Why SPIFFE issuing could not start or sign.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A certificate or key operation failed.
    #[error("{0}")]
    Crypto(#[from] mayfly_crypto::CryptoError),
    /// The upstream CA files could not be read.
    #[error(
        "cannot read the upstream CA file {path}: {source}; check [spiffe] upstream_ca_cert/upstream_ca_key"
    )]
    Upstream {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("agent API TLS: {0}")]
    Tls(String),
    /// No authority is current after planning.
    #[error("no SPIFFE {0} authority is current after planning; check the system clock")]
    NoAuthority(&'static str),
}

struct UpstreamCa {
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

/// One consistent view of the authorities.
pub(crate) struct Snapshot {
    /// The CA that signs X.509-SVIDs now.
    pub ca: Arc<X509Ca>,
    /// The key that signs JWT-SVIDs now.
    pub jwt_key: Arc<SigningKey>,
    /// Every published JWT-SVID key (verifying our own JWT-SVIDs as subject tokens).
    pub jwt_verifying: Arc<VerifyingKeys>,
    /// The bundle as agents receive it.
    pub bundle: BundleWire,
    /// The bundle in the SPIFFE trust bundle format (`GET /spiffe/bundle`).
    pub bundle_doc: bytes::Bytes,
    /// X.509 trust anchors (DER).
    pub roots: Vec<Vec<u8>>,
}

/// What issuing needs to know, fixed at start.
pub(crate) struct Params {
    pub trust_domain: String,
    pub issuer: String,
    pub cfg: SpiffeConfig,
    skew: i64,
    jwt_max_ttl: i64,
    upstream: Option<UpstreamCa>,
}

/// SPIFFE issuing state of one server process.
pub(crate) struct Spiffe {
    pub p: Params,
    snap: RwLock<Arc<Snapshot>>,
    /// The agent API's TLS material (server SVID, trust anchors), updated on each tick.
    pub tls: tls::TlsState,
}

/// How this server accepts its own JWT-SVIDs as token-exchange subject tokens: `iss` is the
/// issuer, `aud` must name the issuer or its token endpoint, ES256 only, identity = `sub`,
/// which must lie in our trust domain (the only issuer that may yield identities there).
pub(crate) fn svid_issuer(
    issuer: &str,
    settings: &mayfly_sts::Settings,
    cfg: &SpiffeConfig,
    trust_domain: &str,
) -> Result<mayfly_sts::federation::TrustedIssuer, SpiffeError> {
    let identity = mayfly_sts::identity::IdentityTemplate::parse("{/sub}")
        .map_err(|e| SpiffeError::Tls(e.to_string()))?;
    Ok(mayfly_sts::federation::TrustedIssuer {
        name: "spiffe".into(),
        issuer: issuer.to_string(),
        audiences: vec![issuer.to_string(), settings.token_endpoint.clone()],
        algorithms: vec![jsonwebtoken::Algorithm::ES256],
        max_token_age: cfg.jwt_svid_ttl.as_secs().max(60) as i64 + settings.clock_skew,
        trust_domain: trust_domain.to_string(),
        identity,
        attributes: vec![],
        one_time_use: false,
        client_auth: mayfly_sts::federation::ClientAuthRule::Optional,
        max_ttl: settings.max_ttl,
        ci: None,
    })
}

/// The trust bundle as stored now (for `mayfly bundle show`), without changing the schedule.
pub async fn bundle_from_store(
    store: &Store,
    kek: &Kek,
    config: &mayfly_config::Config,
    now: i64,
) -> Result<mayfly_spiffe::bundle::TrustBundle, SpiffeError> {
    let p = Params {
        trust_domain: config.trust_domain.clone(),
        issuer: String::new(),
        cfg: config.spiffe.clone(),
        skew: config.tokens.clock_skew.as_secs() as i64,
        jwt_max_ttl: config.tokens.max_ttl.as_secs() as i64,
        upstream: None,
    };
    let x509 = store.load_authorities(AuthorityKind::X509, kek).await?;
    let jwt = store.load_authorities(AuthorityKind::Jwt, kek).await?;
    let snap = p.build(x509, jwt, now)?;
    mayfly_spiffe::bundle::TrustBundle::from_wire(&snap.bundle)
        .map_err(|e| SpiffeError::Tls(e.to_string()))
}

/// SHA-256 (hex) of a join token's secret part: all the store keeps of it.
pub fn join_secret_hash(secret: &str) -> String {
    mayfly_crypto::hex(&mayfly_crypto::sha256(secret.as_bytes()))
}

/// The server's own SPIFFE ID (what agents authorise when they dial the agent API).
pub fn server_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/mayfly/server")
}

/// Agent SPIFFE IDs live under this path.
pub fn agent_prefix(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/mayfly/agent/")
}

#[derive(Serialize)]
struct JwtSvidClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a [String],
    exp: i64,
    iat: i64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<serde_json::Value>,
}

impl Spiffe {
    /// Load (or create) the authorities and the server's own SVID.
    pub(crate) async fn start(
        config: &mayfly_config::Config,
        issuer: &str,
        store: &Store,
        kek: &Kek,
        audit: &AuditLog,
        now: i64,
    ) -> Result<Spiffe, SpiffeError> {
        let cfg = &config.spiffe;
        let trust_domain = &config.trust_domain;
        let skew = config.tokens.clock_skew.as_secs() as i64;
        let jwt_max_ttl = config.tokens.max_ttl.as_secs() as i64;
        let upstream = match &cfg.upstream_ca {
            None => None,
            Some((c, k)) => {
                let read = |p: &std::path::Path| {
                    std::fs::read_to_string(p).map_err(|source| SpiffeError::Upstream {
                        path: p.display().to_string(),
                        source,
                    })
                };
                Some(UpstreamCa {
                    cert_pem: read(c)?,
                    key_pem: Zeroizing::new(read(k)?),
                })
            }
        };
        let p = Params {
            trust_domain: trust_domain.to_string(),
            issuer: issuer.to_string(),
            cfg: cfg.clone(),
            skew,
            jwt_max_ttl: jwt_max_ttl.max(cfg.jwt_svid_ttl.as_secs() as i64),
            upstream,
        };
        let snap = Arc::new(p.load(store, kek, audit, now).await?);
        let tls = tls::TlsState::new(&p, &snap, now)?;
        Ok(Spiffe {
            p,
            snap: RwLock::new(snap),
            tls,
        })
    }

    /// Apply the authorities' schedule at `now` and reload; renew the server's own SVID when
    /// it is past half its life or its CA has changed.
    pub(crate) async fn refresh(
        &self,
        store: &Store,
        kek: &Kek,
        audit: &AuditLog,
        now: i64,
    ) -> Result<(), SpiffeError> {
        let snap = Arc::new(self.p.load(store, kek, audit, now).await?);
        self.tls.update(&self.p, &snap, now)?;
        if let Ok(mut w) = self.snap.write() {
            *w = snap;
        }
        Ok(())
    }

    /// The current snapshot.
    pub(crate) fn snapshot(&self) -> Arc<Snapshot> {
        match self.snap.read() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Sign an X.509-SVID for `spiffe_id` from `csr_der`; returns (chain, not_after).
    pub(crate) fn sign_x509(
        &self,
        csr_der: &[u8],
        spiffe_id: &str,
        dns_names: &[String],
        ttl: i64,
        now: i64,
    ) -> Result<(Vec<Vec<u8>>, i64), mayfly_crypto::CryptoError> {
        self.p
            .sign_x509(&self.snapshot(), csr_der, spiffe_id, dns_names, ttl, now)
    }

    /// Mint a JWT-SVID; returns (token, jti, exp).
    pub(crate) fn mint_jwt(
        &self,
        spiffe_id: &str,
        audience: &[String],
        ttl: i64,
        now: i64,
        slot: Option<mayfly_sts::StatusSlot>,
    ) -> Result<(String, String, i64), mayfly_crypto::CryptoError> {
        let ttl = ttl.clamp(10, self.p.jwt_max_ttl);
        let jti = mayfly_crypto::random_id()?;
        let exp = now + ttl;
        let claims = JwtSvidClaims {
            iss: &self.p.issuer,
            sub: spiffe_id,
            aud: audience,
            exp,
            iat: now,
            jti: &jti,
            status: slot.map(|s| mayfly_sts::lease::status_claim(&self.p.issuer, s)),
        };
        let token = self.snapshot().jwt_key.sign_jwt(Some("JWT"), &claims)?;
        Ok((token, jti, exp))
    }

    /// How long revocation records of JWT-SVIDs must be kept.
    pub(crate) fn jwt_max_ttl(&self) -> i64 {
        self.p.jwt_max_ttl + self.p.skew
    }
}

impl Params {
    async fn load(
        &self,
        store: &Store,
        kek: &Kek,
        audit: &AuditLog,
        now: i64,
    ) -> Result<Snapshot, SpiffeError> {
        let x509 = self
            .plan(AuthorityKind::X509, store, kek, audit, now)
            .await?;
        let jwt = self
            .plan(AuthorityKind::Jwt, store, kek, audit, now)
            .await?;
        self.build(x509, jwt, now)
    }

    /// Sign with the snapshot's CA; returns (chain, not_after).
    pub(crate) fn sign_x509(
        &self,
        snap: &Snapshot,
        csr_der: &[u8],
        spiffe_id: &str,
        dns_names: &[String],
        ttl: i64,
        now: i64,
    ) -> Result<(Vec<Vec<u8>>, i64), mayfly_crypto::CryptoError> {
        let ttl = ttl.clamp(10, self.cfg.max_x509_svid_ttl.as_secs() as i64);
        // Backdated by the skew so a peer whose clock is slightly behind accepts it.
        let chain = snap
            .ca
            .sign_svid(csr_der, spiffe_id, dns_names, now - self.skew, now + ttl)?;
        let not_after = (now + ttl).min(snap.ca.not_after());
        Ok((chain, not_after))
    }

    fn schedule(&self, kind: AuthorityKind) -> Schedule {
        Schedule {
            rotation: self.cfg.ca_rotation.as_secs() as i64,
            max_ttl: match kind {
                AuthorityKind::X509 => self.cfg.max_x509_svid_ttl.as_secs() as i64,
                AuthorityKind::Jwt => self.jwt_max_ttl,
            },
            skew: self.skew,
        }
    }

    /// Plan one kind under the replicas' key lock (as for signing keys) and return what is
    /// stored afterwards.
    async fn plan(
        &self,
        kind: AuthorityKind,
        store: &Store,
        kek: &Kek,
        audit: &AuditLog,
        now: i64,
    ) -> Result<Vec<StoredAuthority>, SpiffeError> {
        let schedule = self.schedule(kind);
        let stored = store.load_authorities(kind, kek).await?;
        if self.actions(&stored, now, &schedule).is_empty() {
            return Ok(stored);
        }
        let lock = store.key_lock().await?;
        let stored = store.load_authorities(kind, kek).await?;
        let actions = self.actions(&stored, now, &schedule);
        for a in &actions {
            let (what, id) = self.apply(kind, a, store, kek, now).await?;
            let mut e = AuditEvent::new(EventKind::KeyRotation, now, Decision::Allow);
            e.reason = Some(format!("spiffe_{}_{what}", kind_name(kind)));
            e.jti = Some(id);
            // An audit failure must not leave the key schedule half applied: log and go on.
            if let Err(err) = audit.commit(mayfly_store::Pending::event(e)).await {
                tracing::error!(error = %err, "audit of a SPIFFE authority change failed");
            }
        }
        let stored = store.load_authorities(kind, kek).await?;
        lock.release().await?;
        Ok(stored)
    }

    /// The schedule's actions, except that an expired authority stays stored for one more
    /// rotation period: the bundle's sequence number is derived from the stored times and must
    /// not go backwards when it leaves.
    fn actions(&self, stored: &[StoredAuthority], now: i64, s: &Schedule) -> Vec<KeyAction> {
        let times: Vec<KeyTimes> = stored.iter().map(|a| a.times.clone()).collect();
        keys::plan(&times, now, s)
            .into_iter()
            .filter(|a| match a {
                KeyAction::Remove { kid } => times
                    .iter()
                    .any(|t| &t.kid == kid && t.expires_at + s.rotation <= now),
                _ => true,
            })
            .collect()
    }

    async fn apply(
        &self,
        kind: AuthorityKind,
        a: &KeyAction,
        store: &Store,
        kek: &Kek,
        now: i64,
    ) -> Result<(&'static str, String), SpiffeError> {
        match a {
            KeyAction::Create {
                not_before,
                not_after,
                expires_at,
            } => {
                let id = mayfly_crypto::random_id()?;
                let times = KeyTimes {
                    kid: id.clone(),
                    created_at: now,
                    not_before: *not_before,
                    not_after: *not_after,
                    expires_at: *expires_at,
                };
                let (public, private) = match kind {
                    AuthorityKind::X509 => {
                        // Valid from its publication (minus skew) until its last SVID expires.
                        let (nb, na) = (now - self.skew, *expires_at + self.skew);
                        let ca = match &self.upstream {
                            None => X509Ca::self_signed(&self.trust_domain, nb, na)?,
                            Some(u) => X509Ca::intermediate(
                                &self.trust_domain,
                                &u.cert_pem,
                                &u.key_pem,
                                nb,
                                na,
                            )?,
                        };
                        let mut chain = vec![ca.cert_der().to_vec()];
                        chain.extend(ca.upstream_chain().iter().cloned());
                        (x509::certs_to_pem(&chain), ca.key_pkcs8())
                    }
                    AuthorityKind::Jwt => {
                        let key = SigningKey::generate(KeyAlg::ES256, Some(&id))?;
                        (key.public_jwk().to_string(), key.to_pkcs8()?)
                    }
                };
                store
                    .insert_authority(kind, &times, &public, &private, kek)
                    .await?;
                Ok(("created", id))
            }
            KeyAction::Reschedule(t) => {
                store.reschedule_authority(t).await?;
                Ok(("rescheduled", t.kid.clone()))
            }
            KeyAction::Remove { kid } => {
                store.remove_authority(kid).await?;
                Ok(("removed", kid.clone()))
            }
        }
    }

    fn build(
        &self,
        x509s: Vec<StoredAuthority>,
        jwts: Vec<StoredAuthority>,
        now: i64,
    ) -> Result<Snapshot, SpiffeError> {
        let sequence = sequence(&x509s, now).max(sequence(&jwts, now));
        // X.509: every published CA's trust anchor; the current one signs.
        let x_times: Vec<KeyTimes> = x509s.iter().map(|a| a.times.clone()).collect();
        let cur = keys::current(&x_times, now)
            .map(|t| t.kid.clone())
            .ok_or(SpiffeError::NoAuthority("X.509"))?;
        let mut roots: Vec<Vec<u8>> = Vec::new();
        let mut ca = None;
        for a in &x509s {
            let published = a.times.created_at <= now && now < a.times.expires_at;
            if !published && a.times.kid != cur {
                continue;
            }
            let chain = x509::certs_from_pem(&a.public)?;
            let Some((first, rest)) = chain.split_first() else {
                continue;
            };
            let parsed = X509Ca::from_parts(first, rest.to_vec(), &a.private_pkcs8)?;
            for r in parsed.roots() {
                if !roots.contains(&r) {
                    roots.push(r);
                }
            }
            if a.times.kid == cur {
                ca = Some(Arc::new(parsed));
            }
        }
        let ca = ca.ok_or(SpiffeError::NoAuthority("X.509"))?;
        // JWT: every published key verifies; the current one signs.
        let j_times: Vec<KeyTimes> = jwts.iter().map(|a| a.times.clone()).collect();
        let jcur = keys::current(&j_times, now)
            .map(|t| t.kid.clone())
            .ok_or(SpiffeError::NoAuthority("JWT"))?;
        let mut jwks = Vec::new();
        let mut jwt_key = None;
        for a in &jwts {
            if a.times.created_at <= now
                && now < a.times.expires_at
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&a.public)
            {
                jwks.push(v);
            }
            if a.times.kid == jcur {
                jwt_key = Some(Arc::new(SigningKey::from_pkcs8(
                    KeyAlg::ES256,
                    &a.times.kid,
                    &a.private_pkcs8,
                )?));
            }
        }
        let jwt_key = jwt_key.ok_or(SpiffeError::NoAuthority("JWT"))?;
        let set = serde_json::json!({ "keys": jwks });
        let jwt_verifying = Arc::new(
            VerifyingKeys::from_jwks(&set)
                .map_err(|_| SpiffeError::NoAuthority("JWT (unusable published key)"))?,
        );
        let bundle = BundleWire {
            trust_domain: self.trust_domain.clone(),
            sequence,
            x509_authorities: roots.iter().map(|d| b64(d)).collect(),
            jwt_authorities: set,
            refresh_hint: (self.cfg.ca_rotation.as_secs() / 10).clamp(10, 300),
        };
        let bundle_doc = mayfly_spiffe::bundle::TrustBundle::from_wire(&bundle)
            .and_then(|b| b.to_document())
            .map(|d| bytes::Bytes::from(d.to_string()))
            .map_err(|e| SpiffeError::Tls(format!("bundle: {e}")))?;
        Ok(Snapshot {
            ca,
            jwt_key,
            jwt_verifying,
            bundle,
            bundle_doc,
            roots,
        })
    }
}

/// The bundle's sequence number: the latest time its content changed, derived from the stored
/// times so that every replica computes the same number.
fn sequence(stored: &[StoredAuthority], now: i64) -> u64 {
    stored
        .iter()
        .map(|a| {
            if a.times.expires_at <= now {
                a.times.expires_at
            } else {
                a.times.created_at
            }
        })
        .max()
        .unwrap_or(0)
        .max(0) as u64
}

fn kind_name(k: AuthorityKind) -> &'static str {
    match k {
        AuthorityKind::X509 => "x509_ca",
        AuthorityKind::Jwt => "jwt_key",
    }
}

pub(crate) fn b64(d: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(d)
}
