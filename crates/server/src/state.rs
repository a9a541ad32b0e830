//! Application state, start-up and the periodic tick (key schedule, client reload, purge).

use std::sync::{Arc, RwLock};

use mayfly_config::Config;
use mayfly_crypto::{Kek, KeyAlg};
use mayfly_proto::ServerMetadata;
use mayfly_store::{AuditLog, AuditSink, Store, StoreError};
use mayfly_sts::keys::{self, Schedule};
use mayfly_sts::{Clock, Settings};

use crate::clients::{ClientError, Registry, client_from_config};
use crate::keyring::{self, KeySnapshot};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A configured client is unusable.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A trusted issuer is unusable.
    #[error(transparent)]
    Issuer(#[from] crate::issuers::IssuerError),
    /// The policy set is invalid.
    #[error("policy: {0}")]
    Policy(#[from] mayfly_policy::PolicyError),
    /// SPIFFE issuing could not start.
    #[error("SPIFFE: {0}")]
    Spiffe(#[from] crate::spiffe::SpiffeError),
    /// No signing key could be made current.
    #[error("no signing key is current after planning; check the system clock")]
    NoKey,
}

/// What the binary (or a test) hands the server.
pub struct AppOptions {
    /// Validated config.
    pub config: Config,
    /// Issuer identifier (configured, or derived from the bound address).
    pub issuer: String,
    /// The store.
    pub store: Store,
    /// The master key.
    pub kek: Arc<Kek>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Where the audit JSON lines go.
    pub audit_sink: AuditSink,
}

pub(crate) struct Inner {
    settings: Settings,
    config: Config,
    store: Store,
    audit: AuditLog,
    kek: Arc<Kek>,
    clock: Arc<dyn Clock>,
    clients: Registry,
    keys: RwLock<Arc<KeySnapshot>>,
    schedule: Schedule,
    alg: KeyAlg,
    metadata: bytes::Bytes,
    issuers: crate::issuers::Issuers,
    policies: crate::policy::Policies,
    prometheus: Option<metrics_exporter_prometheus::PrometheusHandle>,
    spiffe: crate::spiffe::Spiffe,
    /// How our own JWT-SVIDs are accepted as subject tokens.
    svid_issuer: mayfly_sts::federation::TrustedIssuer,
    /// Who may introspect other clients' tokens.
    introspect_grants: mayfly_sts::IntrospectGrants,
    /// Status-list slots reserved for this replica.
    allocator: crate::status_list::Allocator,
    /// Status lists built recently.
    published: crate::status_list::Published,
}

/// The running application; cheap to clone.
#[derive(Clone)]
pub struct App(Arc<Inner>);

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "App({})", self.settings().issuer)
    }
}

/// The `introspect = [...]` grants of configured clients, and the proxy client's routes.
fn introspect_grants(config: &Config) -> mayfly_sts::IntrospectGrants {
    mayfly_sts::IntrospectGrants {
        clients: config
            .clients
            .iter()
            .map(|c| (c.id.clone(), c.introspect.clone()))
            .collect(),
        proxy_client: config.proxy.client_id.clone(),
        proxy_audiences: config
            .proxy
            .routes
            .iter()
            .map(|r| r.audience.clone())
            .collect(),
    }
}

fn metadata(issuer: &str, scopes: Vec<String>, alg: KeyAlg) -> ServerMetadata {
    let algs: Vec<String> = ["ES256", "ES384", "EdDSA", "RS256", "PS256"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let methods = vec!["private_key_jwt".to_string()];
    ServerMetadata {
        issuer: issuer.to_string(),
        token_endpoint: format!("{issuer}/oauth2/token"),
        jwks_uri: format!("{issuer}/jwks.json"),
        introspection_endpoint: format!("{issuer}/oauth2/introspect"),
        revocation_endpoint: format!("{issuer}/oauth2/revoke"),
        status_list_aggregation_endpoint: Some(format!("{issuer}/statuslists")),
        grant_types_supported: vec![
            mayfly_proto::GRANT_CLIENT_CREDENTIALS.into(),
            mayfly_proto::GRANT_TOKEN_EXCHANGE.into(),
            mayfly_proto::GRANT_JWT_BEARER.into(),
        ],
        response_types_supported: vec![],
        token_endpoint_auth_methods_supported: methods.clone(),
        token_endpoint_auth_signing_alg_values_supported: algs.clone(),
        introspection_endpoint_auth_methods_supported: methods.clone(),
        introspection_endpoint_auth_signing_alg_values_supported: algs.clone(),
        revocation_endpoint_auth_methods_supported: methods,
        revocation_endpoint_auth_signing_alg_values_supported: algs,
        scopes_supported: scopes,
        access_token_signing_alg_values_supported: vec![alg.name().to_string()],
    }
}

impl App {
    /// Build the app: load clients, plan keys, start the audit committer.
    pub async fn start(o: AppOptions) -> Result<App, StartError> {
        let issuer = o.issuer.trim_end_matches('/').to_string();
        let t = &o.config.tokens;
        let max_ttl = t.max_ttl.as_secs() as i64;
        let settings = Settings {
            token_endpoint: format!("{issuer}/oauth2/token"),
            issuer: issuer.clone(),
            default_ttl: t.default_ttl.as_secs() as i64,
            max_ttl,
            clock_skew: t.clock_skew.as_secs() as i64,
            max_assertion_lifetime: t.max_assertion_lifetime.as_secs() as i64,
        };
        let mut config_clients = Vec::with_capacity(o.config.clients.len());
        for c in &o.config.clients {
            config_clients.push(client_from_config(c, max_ttl).await?);
        }
        let uri_sources = o
            .config
            .clients
            .iter()
            .filter(|c| matches!(c.jwks, mayfly_config::JwksSource::Uri(_)))
            .cloned()
            .collect();
        let clients = Registry::new(config_clients, uri_sources, max_ttl);
        clients.reload(&o.store).await?;
        let issuers = crate::issuers::Issuers::new(&o.config.issuers, max_ttl)?;
        let entries = crate::policy::entry_grants(&o.store.list_entries(None).await?);
        let policies = crate::policy::Policies::load(
            o.config.policy_dir.clone(),
            crate::policy::grants(clients.all().iter().map(|c| c.as_ref())),
            entries,
        )?;
        let (schedule, alg) = keyring::key_policy(t);
        // A consumed assertion jti is remembered for as long as that assertion could be accepted.
        let replay_window = settings.max_assertion_lifetime + 2 * settings.clock_skew;
        let audit = AuditLog::start(
            o.store.clone(),
            o.kek.clone(),
            o.audit_sink,
            replay_window,
            o.clock.clone(),
        );
        let now = o.clock.now();
        let snap = plan_and_load(&o.store, &o.kek, &audit, &schedule, alg, now).await?;
        let spiffe =
            crate::spiffe::Spiffe::start(&o.config, &issuer, &o.store, &o.kek, &audit, now).await?;
        let svid_issuer = crate::spiffe::svid_issuer(
            &issuer,
            &settings,
            &o.config.spiffe,
            &o.config.trust_domain,
        )?;
        let introspect_grants = introspect_grants(&o.config);
        let md = metadata(&issuer, clients.all_scopes(), alg);
        let metadata = bytes::Bytes::from(serde_json::to_vec(&md).unwrap_or_default());
        let allocator = crate::status_list::Allocator::new(o.config.status_list.size);
        let app = App(Arc::new(Inner {
            settings,
            config: o.config,
            store: o.store,
            audit,
            kek: o.kek,
            clock: o.clock,
            clients,
            keys: RwLock::new(Arc::new(snap)),
            schedule,
            alg,
            metadata,
            issuers,
            policies,
            prometheus: crate::metrics_setup::handle(),
            spiffe,
            svid_issuer,
            introspect_grants,
            allocator,
            published: crate::status_list::Published::default(),
        }));
        crate::leases::spawn_reaper(&app);
        Ok(app)
    }

    /// A handle that does not keep the app alive (for its background tasks).
    pub(crate) fn downgrade(&self) -> std::sync::Weak<Inner> {
        Arc::downgrade(&self.0)
    }

    /// The app behind `weak`, if it is still alive.
    pub(crate) fn upgrade(weak: &std::sync::Weak<Inner>) -> Option<App> {
        weak.upgrade().map(App)
    }

    /// The issuer identifier.
    pub fn issuer(&self) -> &str {
        &self.settings().issuer
    }

    /// Run the schedule at the clock's current time: rotate keys when due, reload run-time
    /// clients, purge expired replay records, drain the metrics recorder. The binary calls this every few seconds; tests
    /// call it after moving a fake clock.
    pub async fn tick(&self) -> Result<(), StartError> {
        let i = self;
        // Histogram samples pile up in the recorder until drained: without this, memory would
        // grow with traffic whenever nobody scrapes /metrics.
        if let Some(p) = i.prometheus() {
            p.run_upkeep();
        }
        let now = i.clock().now();
        let snap = plan_and_load(i.store(), i.kek(), i.audit(), i.schedule(), i.alg(), now).await?;
        if let Ok(mut k) = i.0.keys.write() {
            *k = Arc::new(snap);
        }
        i.spiffe()
            .refresh(i.store(), i.kek(), i.audit(), now)
            .await?;
        i.clients().reload(i.store()).await?;
        // Clients that publish their keys at a URL rotate them on their own schedule.
        i.clients().refresh_all_uris(now).await;
        // A changed policy directory, client list or entry list compiles into a new set (or is
        // refused).
        self.reload_policy_if_changed().await;
        i.store()
            .purge_expired(now - i.settings().clock_skew)
            .await?;
        i.store()
            .purge_expired_spiffe(now - i.settings().clock_skew)
            .await?;
        Ok(())
    }

    /// Rebuild the policy set now (SIGHUP). Returns whether a new set is in force; an invalid
    /// one is refused and the previous set stays. Either way it is a `policy_change` event.
    pub async fn reload_policy(&self) -> bool {
        let r = self.rebuild_policies(true).await;
        self.audit_policy_reload(r).await
    }

    /// Rebuild the policy set if the clients, the entries or the directory changed (audited
    /// likewise).
    pub(crate) async fn reload_policy_if_changed(&self) -> bool {
        let r = self.rebuild_policies(false).await;
        self.audit_policy_reload(r).await
    }

    /// Read the inputs and rebuild the set. Building compiles and validates every policy (seconds
    /// for thousands of entries), so it runs on a blocking thread, not on a request's worker.
    async fn rebuild_policies(&self, force: bool) -> crate::policy::Reload {
        let entries = self.entry_grants().await;
        let clients = self.client_grants();
        let app = self.clone();
        tokio::task::spawn_blocking(move || app.policies().reload(clients, entries, force))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the policy rebuild stopped; the set in force stays");
                crate::policy::Reload::Unchanged
            })
    }

    /// The registration entries as policy inputs, read from the store (entries are added at
    /// run time, possibly through another replica); `None` when the store cannot say, and the
    /// set keeps the entries it has.
    async fn entry_grants(&self) -> Option<Vec<mayfly_policy::EntryGrant>> {
        match self.0.store.list_entries(None).await {
            Ok(entries) => Some(crate::policy::entry_grants(&entries)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registration entries; the policy set keeps the ones it has");
                None
            }
        }
    }

    /// Who may obtain which token is as much the audit log's business as the tokens: a set
    /// taken is an `allow` with its fingerprint, a set refused a `deny` (`policy_refused`).
    /// Returns whether a new set is in force.
    async fn audit_policy_reload(&self, r: crate::policy::Reload) -> bool {
        use crate::policy::Reload;
        use mayfly_sts::{AuditEvent, Decision, EventKind};
        let (decision, reason, applied) = match r {
            Reload::Unchanged => return false,
            Reload::Applied(fingerprint) => {
                (Decision::Allow, format!("sha256:{fingerprint}"), true)
            }
            Reload::Refused => (Decision::Deny, "policy_refused".to_string(), false),
        };
        let mut e = AuditEvent::new(EventKind::PolicyChange, self.clock().now(), decision);
        e.reason = Some(reason);
        if let Err(err) = self.audit().commit(mayfly_store::Pending::event(e)).await {
            tracing::error!(error = %err, "cannot record the policy change in the audit log");
        }
        applied
    }

    fn client_grants(&self) -> Vec<mayfly_policy::ClientGrant> {
        crate::policy::grants(self.clients().all().iter().map(|c| c.as_ref()))
    }

    /// How often [`App::tick`] should run, in seconds.
    pub fn tick_interval(&self) -> u64 {
        (self.schedule().rotation / 20).clamp(1, 10) as u64
    }

    pub(crate) fn keys(&self) -> Arc<KeySnapshot> {
        match self.0.keys.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// One accessor per field of the state (`keys` is [`App::keys`]), named after the field.
impl App {
    /// Issuer-wide settings of the engine.
    pub(crate) fn settings(&self) -> &Settings {
        &self.0.settings
    }

    /// The validated configuration.
    pub(crate) fn config(&self) -> &Config {
        &self.0.config
    }

    /// The store.
    pub(crate) fn store(&self) -> &Store {
        &self.0.store
    }

    /// The audit log (group commit).
    pub(crate) fn audit(&self) -> &AuditLog {
        &self.0.audit
    }

    /// The key-encryption key.
    pub(crate) fn kek(&self) -> &Arc<Kek> {
        &self.0.kek
    }

    /// The clock.
    pub(crate) fn clock(&self) -> &Arc<dyn Clock> {
        &self.0.clock
    }

    /// The registered clients.
    pub(crate) fn clients(&self) -> &Registry {
        &self.0.clients
    }

    /// The signing-key schedule.
    pub(crate) fn schedule(&self) -> &Schedule {
        &self.0.schedule
    }

    /// The signing algorithm.
    pub(crate) fn alg(&self) -> KeyAlg {
        self.0.alg
    }

    /// The server metadata document.
    pub(crate) fn metadata(&self) -> &bytes::Bytes {
        &self.0.metadata
    }

    /// The trusted issuers.
    pub(crate) fn issuers(&self) -> &crate::issuers::Issuers {
        &self.0.issuers
    }

    /// The policy set.
    pub(crate) fn policies(&self) -> &crate::policy::Policies {
        &self.0.policies
    }

    /// The metrics recorder, if installed.
    pub(crate) fn prometheus(&self) -> &Option<metrics_exporter_prometheus::PrometheusHandle> {
        &self.0.prometheus
    }

    /// SPIFFE issuing state.
    pub(crate) fn spiffe(&self) -> &crate::spiffe::Spiffe {
        &self.0.spiffe
    }

    /// How our own JWT-SVIDs are accepted as subject tokens.
    pub(crate) fn svid_issuer(&self) -> &mayfly_sts::federation::TrustedIssuer {
        &self.0.svid_issuer
    }

    /// Who may introspect other clients' tokens.
    pub(crate) fn introspect_grants(&self) -> &mayfly_sts::IntrospectGrants {
        &self.0.introspect_grants
    }

    /// Status-list slots reserved for this replica.
    pub(crate) fn allocator(&self) -> &crate::status_list::Allocator {
        &self.0.allocator
    }

    /// Status lists built recently.
    pub(crate) fn published(&self) -> &crate::status_list::Published {
        &self.0.published
    }
}

/// Plan the key schedule at `now`, apply it (auditing each change), and load a snapshot.
async fn plan_and_load(
    store: &Store,
    kek: &Kek,
    audit: &AuditLog,
    schedule: &Schedule,
    alg: KeyAlg,
    now: i64,
) -> Result<KeySnapshot, StartError> {
    let stored = store.load_keys(kek).await?;
    let times: Vec<_> = stored.iter().map(|k| k.times.clone()).collect();
    let stored = if keys::plan(&times, now, schedule).is_empty() {
        stored
    } else {
        // Replicas sharing a database plan under one lock, re-reading the keys inside it: the
        // first applies the schedule, the others find nothing left to do and load its keys.
        let lock = store.key_lock().await?;
        let stored = store.load_keys(kek).await?;
        let times: Vec<_> = stored.iter().map(|k| k.times.clone()).collect();
        let actions = keys::plan(&times, now, schedule);
        let stored = if actions.is_empty() {
            stored
        } else {
            keyring::apply_and_record(store, kek, audit, &actions, now, alg, "").await?;
            store.load_keys(kek).await?
        };
        lock.release().await?;
        stored
    };
    keyring::snapshot(stored, now).ok_or(StartError::NoKey)
}
