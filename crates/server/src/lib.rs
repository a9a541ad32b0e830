//! The HTTP front of mayfly (axum): `/oauth2/token` (client credentials, token exchange, JWT
//! bearer), `/oauth2/introspect`, `/oauth2/revoke`,
//! metadata, `/jwks.json`, `/healthz`, `/readyz`, `/metrics`.
//!
//! Handlers are thin: read the form body, make one call into the engine (`mayfly_sts`), commit
//! the audit record it returns through the store, answer. Engine denials become HTTP responses in exactly one function,
//! [`error::denial_response`].
#![forbid(unsafe_code)]

mod clients;
pub mod error;
mod handlers;
pub mod issuers;
pub mod keyring;
pub mod leases;
mod metrics_setup;
mod policy;
mod ports;
mod reply;
pub mod spiffe;
mod state;
mod status_list;

pub use clients::{ClientError, client_from_config, client_from_stored};
pub use state::{App, AppOptions, StartError};

use std::net::SocketAddr;

use axum::Router;
use axum::routing::{get, post};

/// Check what [`App::start`] would refuse in the trusted issuers and the policy set, without
/// starting: returns the number of issuers and of policies. `clients` are the registered clients
/// whose lists become policies.
pub fn check_issuers_and_policy(
    config: &mayfly_config::Config,
    clients: &[mayfly_sts::Client],
) -> Result<(usize, usize), StartError> {
    let max_ttl = config.tokens.max_ttl.as_secs() as i64;
    issuers::Issuers::new(&config.issuers, max_ttl)?;
    let engine = match &config.policy_dir {
        Some(d) => mayfly_policy::PolicyEngine::load_dir(d, &policy::grants(clients))?,
        None => mayfly_policy::PolicyEngine::sugar_only(&policy::grants(clients))?,
    };
    Ok((config.issuers.len(), engine.policy_ids().len()))
}

/// Build the router for `app`.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/oauth2/token", post(handlers::token))
        .route("/oauth2/introspect", post(handlers::introspect))
        .route("/oauth2/revoke", post(handlers::revoke))
        .route(
            "/.well-known/oauth-authorization-server",
            get(handlers::metadata),
        )
        .route("/.well-known/openid-configuration", get(handlers::metadata))
        .route("/jwks.json", get(handlers::jwks))
        .route("/spiffe/bundle", get(handlers::spiffe_bundle))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics))
        // Leases and status lists.
        .route("/leases/{id}/renew", post(leases::renew))
        .route("/leases/{id}/end", post(leases::end))
        .route("/statuslists", get(status_list::aggregation))
        .route("/statuslists/{list}", get(status_list::get_list))
        .fallback(handlers::not_found)
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            handlers::deadline,
        ))
        .with_state(app)
}

pub use spiffe::tls::serve as serve_agent_api;

/// Serve `app` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router(app);
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
