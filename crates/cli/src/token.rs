//! `mayfly token get`, `mayfly token inspect` and `mayfly token revoke`.

use std::io::Read;
use std::path::{Path, PathBuf};
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

/// `mayfly token revoke`: which live tokens to revoke, and where.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("selector")
        .required(true)
        .multiple(true)
        .args(["jti", "lease", "identity", "client", "issuer"])
))]
pub struct RevokeArgs {
    /// TOML config file (local mode: the store and master key it names).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// One token, by its `jti` (from the audit log or `mayfly token inspect`). A jti may begin
    /// with `-` (base64url), so the value is taken as it is.
    #[arg(long, allow_hyphen_values = true)]
    pub jti: Option<String>,
    /// Every token under this lease (the lease ends too).
    #[arg(long)]
    pub lease: Option<String>,
    /// Every token issued to this identity (the token's `sub`: a client id or SPIFFE ID).
    #[arg(long)]
    pub identity: Option<String>,
    /// Every token issued to this client.
    #[arg(long)]
    pub client: Option<String>,
    /// Every token exchanged from this trusted issuer's tokens (its `[[issuers]]` name).
    #[arg(long)]
    pub issuer: Option<String>,
    /// Only tokens issued at or after this time: RFC 3339 (`2026-12-01T00:00:00Z`) or a
    /// duration back from now (`2h`, `-2h`).
    #[arg(long, allow_hyphen_values = true)]
    pub since: Option<String>,
    /// Ask this server's admin endpoint instead of the store (needs --token-file).
    #[arg(long, requires = "token_file")]
    pub server: Option<String>,
    /// A file holding an access token of that server with audience `<issuer>/admin` and
    /// scope `admin:tokens:revoke`.
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
}

/// `--since`: an RFC 3339 time, or a duration back from `now`.
pub fn parse_since(text: &str, now: i64) -> anyhow::Result<i64> {
    if let Some(t) = mayfly_server::admin::rfc3339(text) {
        return Ok(t);
    }
    let d =
        humantime::parse_duration(text.strip_prefix('-').unwrap_or(text)).with_context(|| {
            format!(
                "--since {text}: write an RFC 3339 time (2026-12-01T00:00:00Z) or a duration (2h)"
            )
        })?;
    Ok(now - i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// Who an operator is in local mode: `local:<unix user>`.
pub fn local_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty() && u.len() <= 64 && !u.contains(char::is_whitespace));
    match user {
        Some(u) => format!("local:{u}"),
        None => {
            use std::os::unix::fs::MetadataExt;
            let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
            format!("local:uid={uid}")
        }
    }
}

/// A bearer token read from a file (surrounding whitespace dropped).
pub fn read_token_file(path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?,
    );
    let token = zeroize::Zeroizing::new(text.trim().to_string());
    if token.is_empty() {
        anyhow::bail!("{} holds no token", path.display());
    }
    Ok(token)
}

/// POST `body` as JSON to `url` with a bearer token; the JSON answer of a 2xx, or an error
/// naming the server's error code.
pub async fn post_admin(
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let resp = http()?
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let answer: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    if !status.is_success() {
        anyhow::bail!(
            "the server refused ({}): {} ({})",
            status.as_u16(),
            answer["error"].as_str().unwrap_or("no error code"),
            answer["error_description"].as_str().unwrap_or("")
        );
    }
    Ok(answer)
}

fn print_revoked(jtis: &[String], count: u64) {
    for j in jtis {
        println!("{j}");
    }
    eprintln!("revoked {count} token(s) and the tokens derived from them");
}

/// `mayfly token revoke ...`: in local mode through the store (audited with the operator's
/// unix user), or through a server's admin endpoint.
pub async fn revoke(a: RevokeArgs) -> anyhow::Result<ExitCode> {
    let now = SystemClock.now();
    let since = a
        .since
        .as_deref()
        .map(|s| parse_since(s, now))
        .transpose()?;
    if let (Some(server), Some(file)) = (&a.server, &a.token_file) {
        let token = read_token_file(file)?;
        let mut body = serde_json::Map::new();
        for (k, v) in [
            ("jti", &a.jti),
            ("lease", &a.lease),
            ("identity", &a.identity),
            ("client", &a.client),
            ("issuer", &a.issuer),
        ] {
            if let Some(v) = v {
                body.insert(k.into(), v.clone().into());
            }
        }
        if let Some(t) = since {
            body.insert("since".into(), t.into());
        }
        let url = format!("{}/admin/v1/revocations", server.trim_end_matches('/'));
        let answer = post_admin(&url, &token, &body.into()).await?;
        let jtis: Vec<String> = answer["jtis"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|j| j.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        print_revoked(&jtis, answer["revoked"].as_u64().unwrap_or(0));
        return Ok(ExitCode::SUCCESS);
    }
    let sel = mayfly_store::RevokeSelector {
        jti: a.jti,
        lease: a.lease,
        identity: a.identity,
        client: a.client,
        issuer: a.issuer,
        since,
    };
    let ctx = crate::admin::Ctx::open(a.config).await?;
    if let Some(jti) = sel.jti.as_deref()
        && ctx.store.issued_token(jti).await?.is_none()
    {
        anyhow::bail!(
            "no token with jti `{jti}` was issued by this deployment (see `mayfly audit tail`)"
        );
    }
    let kek = ctx.kek(false)?;
    let revoked = ctx.store.revoke_selected(&sel, now).await?;
    let event = mayfly_server::admin::revoke_event(&sel, &revoked, &local_actor(), now);
    ctx.record(kek, vec![event]).await?;
    print_revoked(&revoked, revoked.len() as u64);
    Ok(ExitCode::SUCCESS)
}
