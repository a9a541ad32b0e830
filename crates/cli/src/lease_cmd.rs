//! `mayfly lease end`: end a CI run's leases (where the platform cannot send webhooks, a
//! post-job step does it), one lease by id, or the lease a token is under.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use base64::Engine;
use clap::Subcommand;
use mayfly_store::CiSelector;
use mayfly_sts::{Clock, SystemClock};

use crate::token::{local_actor, post_admin, read_token_file};

/// `mayfly lease ...`.
#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    /// End leases, revoking every token under them: a CI run's (`--ci-run`), one by id
    /// (`--lease`, local mode), or the one a token is under (`--token-file` and `--server`,
    /// what a post-job step runs).
    End(EndArgs),
}

/// The arguments of `mayfly lease end`.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").args(["ci_run", "lease"])))]
pub struct EndArgs {
    /// TOML config file (local mode: the store and master key it names).
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// The CI run: `github:OWNER/REPO:RUN[:ATTEMPT[:JOB]]` or `gitlab:PROJECT/PATH:PIPELINE[:JOB]`.
    #[arg(long)]
    pub ci_run: Option<String>,
    /// One lease, by id (local mode).
    #[arg(long, conflicts_with = "server")]
    pub lease: Option<String>,
    /// The server to ask (with --ci-run: its admin endpoint; alone: the lease the token of
    /// --token-file is under).
    #[arg(long, requires = "token_file")]
    pub server: Option<String>,
    /// With --ci-run: an admin access token (scope `admin:tokens:revoke`). Alone: a token
    /// under the lease to end.
    #[arg(long, requires = "server")]
    pub token_file: Option<PathBuf>,
}

/// Parse `--ci-run`.
pub fn parse_ci_run(text: &str) -> anyhow::Result<CiSelector> {
    let usage = "write github:OWNER/REPO:RUN[:ATTEMPT[:JOB]] or gitlab:PROJECT/PATH:PIPELINE[:JOB]";
    let (provider, rest) = text
        .split_once(':')
        .with_context(|| format!("--ci-run {text}: {usage}"))?;
    let parts: Vec<&str> = rest.split(':').collect();
    let ok = |s: &&str| !s.is_empty();
    let sel = match (provider, parts.as_slice()) {
        ("github", [project, run, tail @ ..]) if tail.len() <= 2 && tail.iter().all(ok) => {
            CiSelector {
                provider: "github".into(),
                project: (*project).to_string(),
                run: (*run).to_string(),
                attempt: tail.first().map(|s| (*s).to_string()),
                job: tail.get(1).map(|s| (*s).to_string()),
            }
        }
        ("gitlab", [project, run, tail @ ..]) if tail.len() <= 1 && tail.iter().all(ok) => {
            CiSelector {
                provider: "gitlab".into(),
                project: (*project).to_string(),
                run: (*run).to_string(),
                attempt: None,
                job: tail.first().map(|s| (*s).to_string()),
            }
        }
        _ => bail!("--ci-run {text}: {usage}"),
    };
    if sel.project.is_empty() || sel.run.is_empty() || !sel.project.contains('/') {
        bail!("--ci-run {text}: {usage}");
    }
    Ok(sel)
}

/// The `lease` claim of a token (read, not verified: the server verifies it).
fn lease_of(token: &str) -> anyhow::Result<String> {
    let payload = token
        .split('.')
        .nth(1)
        .context("the token file does not hold a JWT")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .context("the token file does not hold a JWT")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&bytes).context("the token file does not hold a JWT")?;
    claims["lease"]
        .as_str()
        .map(str::to_string)
        .context("the token is not under a lease (no `lease` claim)")
}

/// `mayfly lease ...`.
pub async fn run(cmd: LeaseCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LeaseCmd::End(a) => end(a).await,
    }
}

async fn end(a: EndArgs) -> anyhow::Result<ExitCode> {
    let sel = a.ci_run.as_deref().map(parse_ci_run).transpose()?;
    match (sel, &a.lease, &a.server, &a.token_file) {
        (Some(sel), _, Some(server), Some(file)) => {
            let token = read_token_file(file)?;
            let body = serde_json::json!({
                "provider": sel.provider, "project": sel.project, "run": sel.run,
                "attempt": sel.attempt, "job": sel.job,
            });
            let url = format!("{}/admin/v1/leases/end", server.trim_end_matches('/'));
            let answer = post_admin(&url, &token, &body).await?;
            println!(
                "ended {} lease(s), revoked {} token(s)",
                answer["ended"].as_u64().unwrap_or(0),
                answer["revoked"].as_u64().unwrap_or(0)
            );
        }
        (None, None, Some(server), Some(file)) => {
            let token = read_token_file(file)?;
            let lease = lease_of(&token)?;
            let url = format!("{}/leases/{lease}/end", server.trim_end_matches('/'));
            let answer = post_admin(&url, &token, &serde_json::json!({})).await?;
            println!(
                "lease {lease} ended, revoked {} token(s)",
                answer["revoked"].as_u64().unwrap_or(0)
            );
        }
        (sel, lease, None, None) if sel.is_some() || lease.is_some() => {
            return end_local(a.config, sel, lease.clone()).await;
        }
        _ => bail!(
            "say which lease: --ci-run RUN (local, or with --server and --token-file), --lease ID, or --server URL --token-file FILE"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Local mode: end through the store, audited with the operator's unix user.
async fn end_local(
    config: Option<PathBuf>,
    sel: Option<CiSelector>,
    lease: Option<String>,
) -> anyhow::Result<ExitCode> {
    let ctx = crate::admin::Ctx::open(config).await?;
    let kek = ctx.kek(false)?;
    let now = SystemClock.now();
    let ends = match (sel, lease) {
        (Some(sel), _) => ctx.store.end_ci_leases(&sel, "operator", now).await?,
        (None, Some(id)) => match ctx.store.end_lease(&id, "operator", now).await? {
            Some(e) => vec![e],
            None => bail!("no lease `{id}`"),
        },
        (None, None) => bail!("say which lease: --ci-run or --lease"),
    };
    let actor = local_actor();
    let ended: Vec<_> = ends.iter().filter(|e| !e.already_ended).collect();
    let events = ended
        .iter()
        .map(|e| {
            let mut ev = e.audit_event(now);
            ev.actor = Some(actor.clone());
            ev
        })
        .collect();
    ctx.record(kek, events).await?;
    let revoked: usize = ended.iter().map(|e| e.revoked.len()).sum();
    for e in &ended {
        println!("{}", e.lease.id);
    }
    eprintln!("ended {} lease(s), revoked {revoked} token(s)", ended.len());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_runs_parse_with_optional_attempt_and_job() {
        let s = parse_ci_run("github:octo-org/octo-repo:123").unwrap();
        assert_eq!(
            (s.provider.as_str(), s.project.as_str(), s.run.as_str()),
            ("github", "octo-org/octo-repo", "123")
        );
        assert_eq!((s.attempt, s.job), (None, None));
        let s = parse_ci_run("github:o/r:123:2:987").unwrap();
        assert_eq!(
            (s.attempt.as_deref(), s.job.as_deref()),
            (Some("2"), Some("987"))
        );
        let s = parse_ci_run("gitlab:group/sub/project:2366:1977").unwrap();
        assert_eq!(
            (s.project.as_str(), s.job.as_deref()),
            ("group/sub/project", Some("1977"))
        );
        for bad in [
            "github",
            "github:o/r",
            "github:repo:1",
            "github:o/r:1:2:3:4",
            "github:o/r:1::3",
            "gitlab:g/p:1:2:3",
            "circle:o/r:1",
        ] {
            assert!(parse_ci_run(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_lease_claim_is_read_from_a_token() {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let t = format!(
            "{}.{}.sig",
            b64.encode(b"{\"alg\":\"EdDSA\"}"),
            b64.encode(b"{\"lease\":\"L1\",\"sub\":\"x\"}")
        );
        assert_eq!(lease_of(&t).unwrap(), "L1");
        let t = format!("a.{}.b", b64.encode(b"{\"sub\":\"x\"}"));
        assert!(lease_of(&t).is_err());
        assert!(lease_of("not a jwt").is_err());
    }
}
