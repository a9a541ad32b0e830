//! `mayfly-floor`: the token endpoint reduced to HTTP plus its cryptography, to split the gap
//! between mayfly and the crypto ceiling into what HTTP on loopback costs (here) and what
//! mayfly's own work costs (audit record, replay check, policy, metrics: mayfly minus this).
//!
//! Per request, on mayfly's stack (tokio with the same choice of scheduler, axum over hyper
//! HTTP/1.1, mimalloc): read the body (at most 64 KiB), parse the form, verify the ES256
//! client assertion with `jsonwebtoken::decode` against the one registered key (signature,
//! `exp`, `aud`, `iss`, required claims), sign an RFC 9068 access token with Ed25519 and answer
//! as RFC 6749 §5.1 with `no-store`. It keeps no state: no replay check, no audit, no policy.
//! It is a measuring stick for `bench/run.sh`, never a server to deploy.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::Ed25519KeyPair;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use clap::Parser;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use mayfly_proto::Form;
use serde::Serialize;

// Shared with the ceiling (a module of the main binary of this package).
#[path = "../claims.rs"]
mod claims;
use claims::{AccessClaims, AssertionClaims};

// As `mayfly` itself: the floor must not differ from it in the allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const MAX_BODY: usize = 64 * 1024;

/// HTTP plus cryptography, nothing else: the floor under `mayfly server` in bench/run.sh.
#[derive(Parser)]
#[command(name = "mayfly-floor", version, about)]
struct FloorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18082")]
    listen: String,
    /// The issuer identifier: the assertions' `aud` and the tokens' `iss`.
    #[arg(long)]
    issuer: String,
    /// The client's JWK Set (its first key verifies the assertions).
    #[arg(long)]
    jwks: std::path::PathBuf,
    /// The registered client id (`iss` = `sub` of the assertions).
    #[arg(long, default_value = "bench-client")]
    client_id: String,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: String,
    token_type: &'a str,
    expires_in: u64,
    scope: &'a str,
}

struct Floor {
    issuer: String,
    client_id: String,
    key: DecodingKey,
    validation: Validation,
    signer: Ed25519KeyPair,
    header_b64: String,
    seq: AtomicU64,
}

fn main() -> anyhow::Result<()> {
    let args = FloorArgs::parse();
    let jwks: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&args.jwks).with_context(|| format!("reading {}", args.jwks.display()))?,
    )?;
    let jwk: Jwk = serde_json::from_value(jwks["keys"][0].clone()).context("client JWK")?;
    let key = DecodingKey::from_jwk(&jwk)?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[&args.issuer]);
    validation.set_issuer(&[&args.client_id]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud", "jti"]);
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| anyhow::anyhow!("Ed25519 keygen"))?;
    let signer = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| anyhow::anyhow!("Ed25519 key: {e}"))?;
    let header_b64 = B64.encode(serde_json::to_vec(
        &serde_json::json!({"alg": "EdDSA", "typ": "at+jwt", "kid": "floor-ed25519"}),
    )?);
    let state = Arc::new(Floor {
        issuer: args.issuer,
        client_id: args.client_id,
        key,
        validation,
        signer,
        header_b64,
        seq: AtomicU64::new(0),
    });
    // The same runtime as `mayfly server`: single-threaded on one CPU, a worker per core otherwise.
    let rt = if std::thread::available_parallelism().is_ok_and(|n| n.get() == 1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    rt.block_on(async move {
        let app = axum::Router::new()
            .route("/oauth2/token", axum::routing::post(token))
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
            .with_state(state);
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        eprintln!("floor-server listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        anyhow::Ok(())
    })
}

fn refuse(error: &'static str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"error\":\"{error}\"}}"),
    )
        .into_response()
}

async fn token(State(f): State<Arc<Floor>>, body: Bytes) -> Response {
    // The parser mayfly uses, so that the floor parses exactly as much.
    let Ok(form) = Form::parse(&body, &["resource"]) else {
        return refuse("invalid_request");
    };
    let (Some("client_credentials"), Some(ASSERTION_TYPE), Some(assertion)) = (
        form.get("grant_type"),
        form.get("client_assertion_type"),
        form.get("client_assertion"),
    ) else {
        return refuse("invalid_request");
    };
    if jsonwebtoken::decode::<AssertionClaims>(assertion, &f.key, &f.validation).is_err() {
        return refuse("invalid_client");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = AccessClaims {
        iss: &f.issuer,
        sub: &f.client_id,
        aud: "https://api.example.test",
        client_id: &f.client_id,
        scope: "read",
        jti: format!("floor-{}", f.seq.fetch_add(1, Ordering::Relaxed)),
        iat: now,
        exp: now + 300,
    };
    let Ok(payload) = serde_json::to_vec(&claims) else {
        return refuse("server_error");
    };
    let mut token = String::with_capacity(320);
    token.push_str(&f.header_b64);
    token.push('.');
    B64.encode_string(payload, &mut token);
    let sig = f.signer.sign(token.as_bytes());
    token.push('.');
    B64.encode_string(sig.as_ref(), &mut token);
    let body = TokenResponse {
        access_token: token,
        token_type: "Bearer",
        expires_in: 300,
        scope: "read",
    };
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (header::PRAGMA, "no-cache"),
        ],
        axum::Json(body),
    )
        .into_response()
}
