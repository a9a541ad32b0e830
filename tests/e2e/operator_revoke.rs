//! Operator revocation: `POST /admin/v1/revocations` and `POST /admin/v1/leases/end` over real
//! HTTP (RFC 6750 bearer with the admin audience and scope), and the real `mayfly` binary's
//! `token revoke` and `lease end`, in local mode on the server's own SQLite store and through
//! the admin endpoint. Each selector revokes exactly what it names; every call is audited with
//! who asked.

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::ci_lease::{Ci, GH_SECRET, JOB, REPO, RUN, fixture};
use crate::fixture::peek;
use crate::support::run_cli;

impl Ci {
    /// An operator token: `ops` (with the admin scope) or `viewer` (without).
    async fn admin_token(&self, who: &str) -> String {
        let (key, scope) = match who {
            "ops" => (&self.ops, "admin:tokens:revoke"),
            _ => (&self.viewer, "admin:read"),
        };
        let aud = format!("{}/admin", self.s.url());
        let v = self
            .client_token(who, key, &[("audience", &aud), ("scope", scope)])
            .await;
        v["access_token"].as_str().unwrap().to_string()
    }

    /// POST `body` to an admin endpoint with `token` (if any); (status, WWW-Authenticate, body).
    async fn admin(&self, path: &str, token: Option<&str>, body: &Value) -> (u16, String, Value) {
        let mut req = self
            .s
            .http()
            .post(format!("{}{path}", self.s.url()))
            .json(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let st = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        (st, challenge, r.json().await.unwrap_or(Value::Null))
    }

    /// `mayfly ARGS` against this server's store (a config naming its data dir) or over HTTP,
    /// off the runtime's threads (the server answers on them meanwhile).
    async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let dir = self.env.dir().to_path_buf();
        let config = dir.join("cli.toml");
        if !config.exists() {
            std::fs::write(&config, format!("data_dir = \"{}\"\n", dir.display())).unwrap();
        }
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            run_cli(&dir, &a)
        })
        .await
        .unwrap()
    }

    fn cli_config(&self) -> String {
        self.env.dir().join("cli.toml").display().to_string()
    }
}

fn jti(t: &str) -> String {
    peek(t)["jti"].as_str().unwrap().to_string()
}

fn api_token(v: &Value) -> String {
    v["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn the_admin_endpoint_revokes_by_each_selector_and_audits_the_operator() {
    let ci = Ci::start(false).await;
    let ops = ci.admin_token("ops").await;
    let api = [("audience", crate::ci_lease::API)];
    let w1 = api_token(&ci.client_token("worker", &ci.worker, &api).await);
    let w2 = api_token(&ci.client_token("worker", &ci.worker, &api).await);

    // jti: that token only.
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"jti": jti(&w1)}),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v, json!({"revoked": 1, "jtis": [jti(&w1)]}));
    assert!(!ci.active(&w1).await);
    assert!(ci.active(&w2).await);
    assert!(
        ci.status_bit_soon(&w1).await,
        "the operator's revocation sets the status bit"
    );
    assert!(!ci.status_bit(&w2).await);
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["actor"].as_str()),
        (Some("revoke"), Some("ops")),
        "{e}"
    );
    assert_eq!(e["jti"], jti(&w1));
    assert_eq!(e["revoked"], json!([jti(&w1)]));
    assert_eq!(e["revoked_count"], 1);

    // issuer: every token exchanged from GitLab's tokens, none from GitHub's.
    let (gl, _) = ci.exchange(&ci.gitlab("g/p", "1", "2")).await;
    let (gh, _) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"issuer": "gitlab"}),
        )
        .await;
    assert_eq!((st, &v["jtis"]), (200, &json!([jti(&gl)])));
    assert!(!ci.active(&gl).await);
    assert!(ci.active(&gh).await);

    // identity: the token's subject.
    let sub = peek(&gh)["sub"].as_str().unwrap().to_string();
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"identity": sub}),
        )
        .await;
    assert_eq!((st, &v["revoked"]), (200, &json!(1)));
    assert!(!ci.active(&gh).await);
    assert!(ci.active(&w2).await);

    // lease: its tokens, and the lease ends (its holder's heartbeat learns it).
    let (l1, lease) = ci.leased().await;
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"lease": lease}),
        )
        .await;
    assert_eq!((st, &v["jtis"]), (200, &json!([jti(&l1)])));
    assert!(!ci.active(&l1).await);
    let r =
        ci.s.http()
            .post(format!("{}/leases/{lease}/renew", ci.s.url()))
            .bearer_auth(&l1)
            .send()
            .await
            .unwrap();
    assert_eq!(r.status().as_u16(), 409, "an ended lease is not renewed");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "lease_ended");

    // client + since: only that client's tokens issued at or after the time.
    ci.env.advance(100);
    let cut = ci.s.now();
    let w3 = api_token(&ci.client_token("worker", &ci.worker, &api).await);
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"client": "worker", "since": cut}),
        )
        .await;
    assert_eq!((st, &v["jtis"]), (200, &json!([jti(&w3)])), "{v}");
    assert!(!ci.active(&w3).await);
    assert!(ci.active(&w2).await, "issued before `since`");
    let e = ci.last().await;
    assert_eq!(e["client"], "worker");
    assert_eq!(e["reason"], format!("revoked_by_operator:since={cut}"));
    // since as RFC 3339, far back: the rest of the client's tokens.
    let (st, _, v) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"client": "worker", "since": "2020-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!((st, &v["jtis"]), (200, &json!([jti(&w2)])));
    assert!(!ci.active(&w2).await);

    // Nothing selected, or a malformed request: refused, audited.
    for body in [
        json!({}),
        json!({"since": 5}),
        json!({"client": "worker", "since": "last tuesday"}),
        json!({"client": "worker", "color": "red"}),
    ] {
        let (st, _, v) = ci.admin("/admin/v1/revocations", Some(&ops), &body).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (400, Some("invalid_request")),
            "{body}"
        );
        assert_eq!(ci.last().await["kind"], "deny");
    }
}

#[tokio::test]
async fn admin_endpoints_refuse_missing_foreign_weak_revoked_and_expired_tokens() {
    let ci = Ci::start(false).await;
    let body = json!({"client": "worker"});
    for path in ["/admin/v1/revocations", "/admin/v1/leases/end"] {
        let (st, challenge, v) = ci.admin(path, None, &body).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (401, Some("invalid_token")),
            "{path}"
        );
        assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
        assert_eq!(ci.last().await["reason"], "admin_no_token");
    }
    let (st, _, _) = ci
        .admin("/admin/v1/revocations", Some("not.a.token"), &body)
        .await;
    assert_eq!(st, 401);
    assert_eq!(ci.last().await["reason"], "admin_token_invalid");

    // Our token, for the API (not the admin audience).
    let api = api_token(
        &ci.client_token(
            "worker",
            &ci.worker,
            &[("audience", crate::ci_lease::API), ("scope", "read")],
        )
        .await,
    );
    let (st, challenge, v) = ci.admin("/admin/v1/revocations", Some(&api), &body).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_token")));
    assert!(challenge.contains("invalid_token"));
    assert_eq!(ci.last().await["reason"], "admin_wrong_audience");
    assert!(ci.active(&api).await, "nothing was revoked");

    // For the admin audience, without the scope: 403 insufficient_scope (RFC 6750 §3.1).
    let weak = ci.admin_token("viewer").await;
    for path in ["/admin/v1/revocations", "/admin/v1/leases/end"] {
        let (st, challenge, v) = ci.admin(path, Some(&weak), &body).await;
        assert_eq!(
            (st, v["error"].as_str()),
            (403, Some("insufficient_scope")),
            "{path}"
        );
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("scope=\"admin:tokens:revoke\""),
            "{challenge}"
        );
        assert_eq!(ci.last().await["reason"], "admin_insufficient_scope");
    }

    // A revoked operator token (revoked by itself).
    let ops = ci.admin_token("ops").await;
    let (st, _, _) = ci
        .admin(
            "/admin/v1/revocations",
            Some(&ops),
            &json!({"jti": jti(&ops)}),
        )
        .await;
    assert_eq!(st, 200);
    let (st, _, v) = ci.admin("/admin/v1/revocations", Some(&ops), &body).await;
    assert_eq!((st, v["error"].as_str()), (401, Some("invalid_token")));
    assert_eq!(ci.last().await["reason"], "admin_token_invalid");
    // An expired one.
    let ops = ci.admin_token("ops").await;
    ci.env.advance(3600);
    let (st, _, _) = ci.admin("/admin/v1/revocations", Some(&ops), &body).await;
    assert_eq!(st, 401);
    assert_eq!(ci.last().await["reason"], "admin_token_invalid");
}

#[tokio::test]
async fn the_admin_endpoint_ends_a_ci_runs_leases() {
    let ci = Ci::start(false).await;
    let ops = ci.admin_token("ops").await;
    let (a, _) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    let (b, _) = ci.exchange(&ci.gha(REPO, RUN, "1", "2832853556")).await;
    let (c, _) = ci.exchange(&ci.gha(REPO, "940463256", "1", JOB)).await;
    let sel =
        json!({"provider": "github", "project": REPO, "run": RUN, "attempt": "1", "job": JOB});
    let (st, _, v) = ci.admin("/admin/v1/leases/end", Some(&ops), &sel).await;
    assert_eq!((st, &v), (200, &json!({"ended": 1, "revoked": 1})));
    assert!(!ci.active(&a).await);
    assert!(ci.active(&b).await && ci.active(&c).await);
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["reason"].as_str()),
        (Some("lease_end"), Some("operator"))
    );
    assert_eq!(e["actor"], "ops");
    // The whole run.
    let sel = json!({"provider": "github", "project": REPO, "run": RUN});
    let (st, _, v) = ci.admin("/admin/v1/leases/end", Some(&ops), &sel).await;
    assert_eq!((st, &v), (200, &json!({"ended": 1, "revoked": 1})));
    assert!(!ci.active(&b).await);
    assert!(ci.active(&c).await);
    let (st, _, v) = ci
        .admin(
            "/admin/v1/leases/end",
            Some(&ops),
            &json!({"provider": "circleci", "project": REPO, "run": RUN}),
        )
        .await;
    assert_eq!((st, v["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn the_cli_revokes_by_selector_locally_and_through_the_admin_endpoint() {
    let ci = Ci::start(false).await;
    let cfg = ci.cli_config();
    let api = [("audience", crate::ci_lease::API)];
    let w1 = api_token(&ci.client_token("worker", &ci.worker, &api).await);
    let w2 = api_token(&ci.client_token("worker", &ci.worker, &api).await);
    let (gl, _) = ci.exchange(&ci.gitlab("g/p", "1", "2")).await;
    let (gh, _) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    let (l1, lease) = ci.leased().await;

    // --jti (a jti may begin with '-').
    let (code, out, err) = ci
        .cli(&[
            "token",
            "revoke",
            "--config",
            &ci.cli_config(),
            "--jti",
            &jti(&w1),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), jti(&w1));
    assert!(err.contains("revoked 1 token(s)"), "{err}");
    assert!(!ci.active(&w1).await);
    assert!(ci.active(&w2).await);
    let e = ci.last().await;
    assert_eq!(e["kind"], "revoke");
    assert!(e["actor"].as_str().unwrap().starts_with("local:"), "{e}");
    assert_eq!(e["revoked_count"], 1);

    let (code, _, err) = ci
        .cli(&["token", "revoke", "--config", &cfg, "--jti", "no-such-jti"])
        .await;
    assert_eq!(code, 1);
    assert!(err.contains("no token with jti `no-such-jti`"), "{err}");

    // --issuer, --identity, --lease.
    let (code, out, _) = ci
        .cli(&["token", "revoke", "--config", &cfg, "--issuer", "gitlab"])
        .await;
    assert_eq!((code, out.trim()), (0, jti(&gl).as_str()));
    assert!(!ci.active(&gl).await && ci.active(&gh).await);
    let sub = peek(&gh)["sub"].as_str().unwrap().to_string();
    let (code, out, _) = ci
        .cli(&["token", "revoke", "--config", &cfg, "--identity", &sub])
        .await;
    assert_eq!((code, out.trim()), (0, jti(&gh).as_str()));
    assert!(!ci.active(&gh).await);
    let (code, out, _) = ci
        .cli(&["token", "revoke", "--config", &cfg, "--lease", &lease])
        .await;
    assert_eq!((code, out.trim()), (0, jti(&l1).as_str()));
    assert!(!ci.active(&l1).await);

    // --client with --since: a time after w2 was issued selects nothing; 2h back selects it.
    let future = "2099-01-01T00:00:00Z";
    let (code, out, err) = ci
        .cli(&[
            "token", "revoke", "--config", &cfg, "--client", "worker", "--since", future,
        ])
        .await;
    assert_eq!((code, out.trim()), (0, ""), "{err}");
    assert!(err.contains("revoked 0 token(s)"), "{err}");
    assert!(ci.active(&w2).await);
    let (code, out, _) = ci
        .cli(&[
            "token", "revoke", "--config", &cfg, "--client", "worker", "--since", "2h",
        ])
        .await;
    assert_eq!((code, out.trim()), (0, jti(&w2).as_str()));
    assert!(!ci.active(&w2).await);

    // A selector is required.
    let (code, _, err) = ci
        .cli(&["token", "revoke", "--config", &cfg, "--since", "2h"])
        .await;
    assert_eq!(code, 2, "{err}");

    // Through the admin endpoint with an operator's token file; refused with a weak one.
    let w4 = api_token(&ci.client_token("worker", &ci.worker, &api).await);
    let tokens: PathBuf = ci.env.dir().join("ops.token");
    std::fs::write(&tokens, format!("{}\n", ci.admin_token("ops").await)).unwrap();
    let weak: PathBuf = ci.env.dir().join("viewer.token");
    std::fs::write(&weak, ci.admin_token("viewer").await).unwrap();
    let (code, _, err) = ci
        .cli(&[
            "token",
            "revoke",
            "--server",
            ci.s.url(),
            "--token-file",
            weak.to_str().unwrap(),
            "--client",
            "worker",
        ])
        .await;
    assert_eq!(code, 1);
    assert!(
        err.contains("403") && err.contains("insufficient_scope"),
        "{err}"
    );
    assert!(ci.active(&w4).await);
    let (code, out, err) = ci
        .cli(&[
            "token",
            "revoke",
            "--server",
            ci.s.url(),
            "--token-file",
            tokens.to_str().unwrap(),
            "--client",
            "worker",
        ])
        .await;
    assert_eq!((code, out.trim()), (0, jti(&w4).as_str()), "{err}");
    assert!(!ci.active(&w4).await);
    assert_eq!(ci.last().await["actor"], "ops");
}

#[tokio::test]
async fn lease_end_from_the_cli_ends_a_ci_run_or_the_lease_a_token_is_under() {
    let ci = Ci::start(true).await;
    let cfg = ci.cli_config();
    let (a, _) = ci.exchange(&ci.gha(REPO, RUN, "1", JOB)).await;
    let (b, _) = ci.exchange(&ci.gha(REPO, RUN, "1", "2832853556")).await;
    let (c, _) = ci.exchange(&ci.gha(REPO, "940463256", "1", JOB)).await;

    // Local: one job of the run.
    let run = format!("github:{REPO}:{RUN}:1:{JOB}");
    let (code, out, err) = ci
        .cli(&["lease", "end", "--config", &cfg, "--ci-run", &run])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        err.contains("ended 1 lease(s), revoked 1 token(s)"),
        "{err}"
    );
    assert!(!ci.active(&a).await && ci.active(&b).await && ci.active(&c).await);
    let e = ci.last().await;
    assert_eq!(
        (e["kind"].as_str(), e["reason"].as_str()),
        (Some("lease_end"), Some("operator"))
    );
    assert!(e["actor"].as_str().unwrap().starts_with("local:"));
    // The webhook for the same job, later: nothing left to end.
    let body = fixture("github_workflow_job_completed.json");
    let (st, v) = ci.github("workflow_job", "late-1", &body, GH_SECRET).await;
    assert_eq!((st, &v), (200, &json!({"ended": 0})));

    // Through the admin endpoint: the whole run.
    let tokens = ci.env.dir().join("ops.token");
    std::fs::write(&tokens, ci.admin_token("ops").await).unwrap();
    let run = format!("github:{REPO}:{RUN}");
    let (code, out, err) = ci
        .cli(&[
            "lease",
            "end",
            "--ci-run",
            &run,
            "--server",
            ci.s.url(),
            "--token-file",
            tokens.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("ended 1 lease(s), revoked 1 token(s)"),
        "{out}"
    );
    assert!(!ci.active(&b).await && ci.active(&c).await);

    // A post-job step with only its own token: ends the lease the token is under.
    let (l1, lease) = ci.leased().await;
    let (l2, _) = {
        let v = ci
            .client_token(
                "worker",
                &ci.worker,
                &[("audience", crate::ci_lease::API), ("lease", &lease)],
            )
            .await;
        (api_token(&v), ())
    };
    let own = ci.env.dir().join("job.token");
    std::fs::write(&own, &l1).unwrap();
    let (code, out, err) = ci
        .cli(&[
            "lease",
            "end",
            "--server",
            ci.s.url(),
            "--token-file",
            own.to_str().unwrap(),
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("lease {lease} ended, revoked 2 token(s)")),
        "{out}"
    );
    assert!(!ci.active(&l1).await && !ci.active(&l2).await);
    assert!(ci.active(&c).await);

    for bad in [
        vec![
            "lease",
            "end",
            "--config",
            cfg.as_str(),
            "--ci-run",
            "github:no-slash:1",
        ],
        vec!["lease", "end", "--config", cfg.as_str()],
    ] {
        let (code, _, err) = ci.cli(&bad).await;
        assert_eq!(code, 1, "{bad:?}: {err}");
    }
}
