//! `mayfly token get` and `mayfly token inspect`.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use mayfly_client::{TokenRequest, discover, fetch_keys, get_token, http, verify_access_token};
use mayfly_sts::{Clock, SystemClock};

/// Get a token and print it.
pub async fn get(
    issuer: &str,
    client_id: &str,
    key: &Path,
    audience: Option<String>,
    scope: Option<String>,
    expires_in: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let key = crate::keyfile::load_private_jwk(key)?;
    let http = http()?;
    let req = TokenRequest {
        audience,
        scope,
        expires_in,
    };
    let resp = get_token(&http, issuer, client_id, &key, &req, SystemClock.now()).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        println!("{}", resp.access_token);
    }
    Ok(ExitCode::SUCCESS)
}

/// Verify a token against the issuer's JWKS and show its claims.
pub async fn inspect(
    token: &str,
    issuer: &str,
    audience: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read the token from standard input")?;
        s.trim().to_string()
    } else {
        token.to_string()
    };
    let http = http()?;
    let md = discover(&http, issuer).await?;
    let keys = fetch_keys(&md).await?;
    let claims = verify_access_token(&keys, &token, &md.issuer, audience)?;
    println!("{}", serde_json::to_string_pretty(&claims)?);
    let exp = claims
        .get("exp")
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0);
    let left = exp - SystemClock.now();
    if left > 0 {
        eprintln!("signature valid; expires in {left}s");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("signature valid, but EXPIRED {}s ago", -left);
        Ok(ExitCode::from(2))
    }
}
