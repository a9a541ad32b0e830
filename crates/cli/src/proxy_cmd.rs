//! `mayfly proxy`: wiring only (the proxy is `mayfly_proxy`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use mayfly_proxy::{Proxy, ProxyCredentials, ProxyOptions};
use mayfly_store::AuditLog;
use mayfly_sts::SystemClock;

/// Run the proxy until SIGINT/SIGTERM.
pub async fn run(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    crate::server::init_tracing();
    let cfg = crate::server::load_config(config.as_deref())?;
    let p = &cfg.proxy;
    if p.routes.is_empty() {
        bail!(
            "no [[proxy.routes]] in the config: add one, e.g.\n  [[proxy.routes]]\n  name = \"stripe\"\n  path_prefix = \"/stripe/\"\n  upstream = \"https://api.stripe.com\"\n  audience = \"https://api.stripe.com\"\n  inject = {{ header = \"Authorization\", value = \"Bearer {{key}}\" }}"
        );
    }
    let introspection = p.revocation == mayfly_config::RevocationMode::Introspection;
    let credentials = match (p.client_id.clone(), p.key_file.clone()) {
        (Some(client_id), Some(key_file)) => Some(ProxyCredentials {
            client_id,
            signer: crate::keyfile::load_private_jwk(&key_file)?,
        }),
        _ if introspection => bail!(
            "the proxy checks revocation by introspection at the issuer and needs a client of its own: `mayfly keygen --out proxy`, register it with `mayfly client add --id proxy --jwks-file proxy.jwks.json --audience AUDIENCE` (one --audience per route audience, so it may introspect those tokens), then set proxy.client_id = \"proxy\" and proxy.key_file = \"proxy.private.jwk.json\"; or set proxy.revocation = \"status_list\" to check tokens offline against the issuer's status lists"
        ),
        _ => None,
    };
    let issuer = match p.issuer.as_ref().or(cfg.issuer.as_ref()) {
        Some(u) => u.as_str().trim_end_matches('/').to_string(),
        None => bail!(
            "the proxy needs to know the token issuer: set proxy.issuer (or the top-level issuer) to the mayfly server's URL"
        ),
    };
    let store = crate::server::open_store(&cfg).await?;
    let kek = Arc::new(crate::keyfile::master_key(&cfg.data_dir, false)?);
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .with_context(|| format!("cannot listen on proxy.listen {}", p.listen))?;
    let addr = listener.local_addr()?;
    let audit = AuditLog::start(
        store.clone(),
        kek.clone(),
        crate::server::audit_sink(&cfg)?,
        0,
        Arc::new(SystemClock),
    );
    let proxy = Proxy::start(ProxyOptions {
        config: cfg.proxy.clone(),
        issuer,
        credentials,
        store,
        kek,
        clock: Arc::new(SystemClock),
        audit,
    })
    .await
    .context("cannot start the proxy")?;
    eprintln!(
        "mayfly: proxy listening on http://{addr} ({} routes; revocation: {}; {})",
        proxy.routes(),
        p.revocation.as_str(),
        crate::scheduler()
    );
    proxy
        .serve(listener, crate::server::shutdown_signal())
        .await
        .context("proxy failed")?;
    eprintln!("mayfly: proxy stopped");
    Ok(ExitCode::SUCCESS)
}
