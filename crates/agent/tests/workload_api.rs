//! The agent driven by the `spiffe` crate's Workload API client (third-party), a raw gRPC
//! client and raw HTTP, over real unix sockets, with real crypto on the test server side.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers: a failure is a test failure"
)]

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures_util::StreamExt;
use spiffe::{JwtSvid, SpiffeId, TrustDomain, WorkloadApiError};
use support::{Fixture, ISSUER, TD, assert_logged, capture_log, entry, jwt_claims, my_uid, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn uid_selector(uid: u32) -> String {
    format!("unix:uid:{uid}")
}

fn td() -> TrustDomain {
    TrustDomain::new(TD).unwrap()
}

fn serial_of(der: &[u8]) -> Vec<u8> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    cert.raw_serial().to_vec()
}

fn is_denied(e: &WorkloadApiError) -> bool {
    matches!(e, WorkloadApiError::NoIdentityIssued)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spiffe_crate_fetches_svids_and_bundles_and_validates() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let other = entry("e-other", "workload/other", &[uid_selector(my_uid() + 1)]);
    let fx = Fixture::start(vec![other, me], |_| {}).await;
    let mode = std::fs::metadata(&fx.socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o777);
    let client = fx.client().await;

    // X.509-SVID: the matching entry only, chaining to the bundle's CA.
    let svids = client.fetch_all_x509_svids().await.unwrap();
    assert_eq!(svids.len(), 1);
    let svid = &svids[0];
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );
    let leaf_der = svid.leaf().as_bytes();
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf_der).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(fx.server.ca_der()).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    let ctx = client.fetch_x509_context().await.unwrap();
    let bundle = ctx.bundle_set().get(&td()).unwrap();
    assert_eq!(bundle.authorities().len(), 1);
    assert_eq!(bundle.authorities()[0].as_bytes(), fx.server.ca_der());

    // X.509 bundles.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let b = bundles.get(&td()).unwrap();
    assert_eq!(b.authorities()[0].as_bytes(), fx.server.ca_der());

    // JWT-SVID, cached for the same process, entry and audience set.
    let jwt = client.fetch_jwt_svid(["aud-1"], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );
    assert_eq!(jwt.audience(), ["aud-1".to_string()]);
    let again = client.fetch_jwt_token(["aud-1"], None).await.unwrap();
    assert_eq!(again, jwt.token());
    let other_aud = client
        .fetch_jwt_token(["aud-2", "aud-1"], None)
        .await
        .unwrap();
    assert_ne!(other_aud, jwt.token());

    // JWT bundles: usable by the third-party verifier itself.
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles.get(&td()).is_some());
    let local = JwtSvid::parse_and_validate(jwt.token(), &jwt_bundles, &["aud-1"]).unwrap();
    assert_eq!(local.spiffe_id(), jwt.spiffe_id());

    // Validation through the agent.
    let validated = client
        .validate_jwt_token("aud-1", jwt.token())
        .await
        .unwrap();
    assert_eq!(validated.spiffe_id(), jwt.spiffe_id());
    let err = client
        .validate_jwt_token("someone-else", jwt.token())
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
    let mut tampered = jwt.token().to_string();
    tampered.pop();
    tampered.push(if jwt.token().ends_with('A') { 'B' } else { 'A' });
    let err = client
        .validate_jwt_token("aud-1", &tampered)
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");

    // Asking for an identity the caller does not have is the same as having none.
    let not_mine = SpiffeId::new("spiffe://example.org/workload/other").unwrap();
    let err = client
        .fetch_jwt_svid(["aud-1"], Some(&not_mine))
        .await
        .unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    // And no audience is an invalid request.
    let err = client
        .fetch_jwt_svid(Vec::<String>::new(), None)
        .await
        .unwrap_err();
    assert!(err.is_invalid_argument(), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_without_entry_gets_permission_denied_only() {
    let other = entry("e-other", "workload/other", &[uid_selector(my_uid() + 1)]);
    let fx = Fixture::start(vec![other], |_| {}).await;
    let client = fx.client().await;
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    let err = client.fetch_jwt_svid(["aud"], None).await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    let err = client.fetch_x509_bundles().await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    let err = client.fetch_jwt_bundles().await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");
    let err = client.validate_jwt_token("aud", "a.b.c").await.unwrap_err();
    assert!(is_denied(&err), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executable_selectors_sha256_path_user() {
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let hash = mayfly_crypto::hex(&mayfly_crypto::sha256(&std::fs::read(&exe).unwrap()));
    let uid = uid_selector(my_uid());
    let by_hash = entry(
        "e-hash",
        "by/hash",
        &[uid.clone(), format!("unix:sha256:{hash}")],
    );
    let by_path = entry(
        "e-path",
        "by/path",
        &[format!("unix:path:{}", exe.display())],
    );
    // A different binary (here: one byte different) fails its sha256 selector.
    let changed = mayfly_crypto::hex(&mayfly_crypto::sha256(b"another build"));
    let wrong_hash = entry(
        "e-wrong",
        "by/wrong-hash",
        &[format!("unix:sha256:{changed}")],
    );
    let wrong_path = entry(
        "e-wrong-path",
        "by/wrong-path",
        &["unix:path:/usr/bin/true".into()],
    );
    let mut entries = vec![by_hash, by_path, wrong_hash, wrong_path];
    let user = std::fs::read_to_string("/etc/passwd").ok().and_then(|p| {
        p.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 2 && f[2] == my_uid().to_string()).then(|| f[0].to_string())
        })
    });
    if let Some(name) = &user {
        entries.push(entry("e-user", "by/user", &[format!("unix:user:{name}")]));
    }
    let fx = Fixture::start(entries, |_| {}).await;
    let client = fx.client().await;
    let got: BTreeSet<String> = client
        .fetch_all_x509_svids()
        .await
        .unwrap()
        .iter()
        .map(|s| s.spiffe_id().to_string())
        .collect();
    let mut want: BTreeSet<String> = [
        "spiffe://example.org/by/hash",
        "spiffe://example.org/by/path",
    ]
    .map(String::from)
    .into();
    if user.is_some() {
        want.insert("spiffe://example.org/by/user".into());
    }
    assert_eq!(got, want);
}

/// A raw client from the crate's own generated code, over a tonic channel on the socket.
async fn raw_client(
    fx: &Fixture,
) -> mayfly_agent::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient<
    tonic::transport::Channel,
> {
    let path = fx.socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://agent.invalid")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .unwrap();
    mayfly_agent::proto::spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_security_header_is_invalid_argument() {
    use mayfly_agent::proto::{JwtsvidRequest, X509svidRequest};
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let mut client = raw_client(&fx).await;

    let status = client.fetch_x509svid(X509svidRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let req = JwtsvidRequest {
        audience: vec!["a".into()],
        spiffe_id: String::new(),
    };
    let status = client.fetch_jwtsvid(req.clone()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let mut wrong = tonic::Request::new(req.clone());
    wrong
        .metadata_mut()
        .insert("workload.spiffe.io", "yes".parse().unwrap());
    let status = client.fetch_jwtsvid(wrong).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    // With the header, the same raw client is served.
    let mut ok = tonic::Request::new(req);
    ok.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let resp = client.fetch_jwtsvid(ok).await.unwrap().into_inner();
    assert_eq!(resp.svids.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_and_bundle_change_are_pushed_on_open_streams() {
    let mut me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    me.x509_ttl = 4; // renewed about every 2 s
    let fx = Fixture::start(vec![me], |c| c.sync_interval = Duration::from_millis(200)).await;
    let client = fx.client().await;

    let mut svids = client.stream_x509_svids().await.unwrap();
    let first = within("first X.509-SVID", svids.next())
        .await
        .unwrap()
        .unwrap();
    let second = within("rotated X.509-SVID", svids.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.spiffe_id(), second.spiffe_id());
    assert_ne!(
        serial_of(first.leaf().as_bytes()),
        serial_of(second.leaf().as_bytes())
    );
    assert_ne!(first.private_key().as_ref(), second.private_key().as_ref());

    let mut bundles = client.stream_x509_bundles().await.unwrap();
    let before = within("first bundle", bundles.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(before.get(&td()).unwrap().authorities().len(), 1);
    let next_ca = fx.server.add_authority();
    // Rotations may push the same bundle set again; wait for the one with the new CA.
    loop {
        let set = within("bundle with the new CA", bundles.next())
            .await
            .unwrap()
            .unwrap();
        let auth = set.get(&td()).unwrap();
        if auth.authorities().len() == 2 {
            assert_eq!(auth.authorities()[1].as_bytes(), next_ca.as_slice());
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_keeps_serving_current_svids() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |c| c.sync_interval = Duration::from_millis(100)).await;
    fx.server
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let client = fx.client().await;
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://example.org/workload/me"
    );
    // Minting needs the server: Unavailable, not a denial.
    let err = client.fetch_jwt_svid(["aud"], None).await.unwrap_err();
    assert!(!is_denied(&err) && !err.is_invalid_argument(), "{err:?}");
}

/// Run by `workload_exit_is_reported_with_its_jtis` in a child process: fetch a JWT-SVID from
/// the agent at `MAYFLY_AGENT_TEST_CHILD_SOCKET`, print its jti, exit. A no-op otherwise.
#[tokio::test]
async fn child_workload() {
    let Ok(endpoint) = std::env::var("MAYFLY_AGENT_TEST_CHILD_SOCKET") else {
        return;
    };
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let token = client.fetch_jwt_token(["child-aud"], None).await.unwrap();
    println!("JTI={}", jwt_claims(&token)["jti"].as_str().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_exit_is_reported_with_its_jtis() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "child_workload",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("MAYFLY_AGENT_TEST_CHILD_SOCKET", fx.endpoint())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let out = within("the child", child.wait_with_output()).await.unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let jti = stdout
        .lines()
        .find_map(|l| l.split_once("JTI=").map(|(_, jti)| jti.trim()))
        .unwrap_or_else(|| panic!("child printed no jti: {stdout}"))
        .to_string();
    let mut exited = fx.server.exited_rx.lock().await;
    let report = within("the exit report", exited.recv()).await.unwrap();
    assert_eq!(report.pid, pid);
    assert_eq!(report.jwt_svid_jtis, vec![jti]);
    assert_eq!(
        report.spiffe_ids,
        vec!["spiffe://example.org/workload/me".to_string()]
    );
    assert_eq!(fx.agent.status().tracked_processes, 0);
}

/// `GET` on the HTTP socket with the security header; returns (status, JSON body).
async fn http_get(path: &std::path::Path, target: &str) -> (u16, serde_json::Value) {
    http_get_with(path, target, "workload.spiffe.io: true\r\n").await
}

/// `GET` on the HTTP socket with `extra` header lines; returns (status, JSON body).
async fn http_get_with(
    path: &std::path::Path,
    target: &str,
    extra: &str,
) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::UnixStream::connect(path).await.unwrap();
    let req = format!("GET {target} HTTP/1.1\r\nHost: agent\r\n{extra}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_endpoint_exchanges_the_callers_jwt_svid() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let sock = &fx.http_socket;

    let (status, body) = http_get(sock, "/v1/token?audience=https%3A%2F%2Fapi&scope=read").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["access_token"],
        "at-for-spiffe://example.org/workload/me"
    );
    assert_eq!(body["scope"], "read");
    let exchanges = fx.server.exchanges.lock().unwrap().clone();
    assert_eq!(
        exchanges,
        vec![(
            vec![ISSUER.to_string()],
            "https://api".to_string(),
            Some("read".to_string())
        )]
    );

    let (status, body) = http_get(sock, "/v1/token?scope=read").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = http_get(sock, "/v1/token?audience=forbidden").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_target"))
    );
    let (status, body) = http_get(sock, "/v1/token?audience=unreachable").await;
    assert_eq!(status, 502, "{body}");
    assert!(body["error"].is_string() && body["error_description"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_endpoint_requires_the_security_header() {
    capture_log();
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let sock = &fx.http_socket;
    // As a browser or a forged server-side request would send it: no header, or another value.
    for extra in [
        "",
        "workload.spiffe.io: yes\r\n",
        "workload.spiffe.io: TRUE\r\n",
    ] {
        let (status, body) =
            http_get_with(sock, "/v1/token?audience=https%3A%2F%2Fapi", extra).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{extra:?}: {body}"
        );
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("workload.spiffe.io"),
            "{body}"
        );
    }
    assert!(fx.server.exchanges.lock().unwrap().is_empty());
    assert_logged("agent token request refused reason=\"security header missing\"");
    let (status, _) = http_get(sock, "/v1/token?audience=https%3A%2F%2Fapi").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_endpoint_denies_unknown_callers() {
    let other = entry("e-other", "workload/other", &[uid_selector(my_uid() + 1)]);
    let fx = Fixture::start(vec![other], |_| {}).await;
    let (status, body) = http_get(&fx.http_socket, "/v1/token?audience=x").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("access_denied"))
    );
    assert!(fx.server.exchanges.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_is_replaced_live_one_refused_and_shutdown_ends_streams() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    // A live socket: refused.
    let err = fx
        .agent
        .serve(&fx.socket, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("in use"), "{err}");
    // A stale one (nobody listening): replaced.
    let stale = fx.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    let agent = fx.agent.clone();
    let path = stale.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        agent
            .serve(&path, async move {
                let _ = rx.await;
            })
            .await
    });
    let endpoint = format!("unix:{}", stale.display());
    let client = within("the replaced socket", async {
        loop {
            if let Ok(c) = spiffe::WorkloadApiClient::connect_to(&endpoint).await
                && c.fetch_x509_svid().await.is_ok()
            {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Shutdown completes even with a stream open (the agent ends its streams first).
    let mut open = client.stream_x509_svids().await.unwrap();
    within("first push", open.next()).await.unwrap().unwrap();
    tx.send(()).unwrap();
    within("shutdown with an open stream", served)
        .await
        .unwrap()
        .unwrap();
    assert!(!stale.exists());
    assert!(within("end of stream", open.next()).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_in_a_directory_others_can_write_is_refused() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let open = fx.dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let sock = open.join("agent.sock");
    let err = fx
        .agent
        .serve(&sock, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, mayfly_agent::AgentError::SocketDir { path, .. } if *path == open),
        "{err}"
    );
    let err = fx
        .agent
        .serve_http(&sock, std::future::ready(()))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("chmod go-w"), "{err}");
    assert!(!sock.exists());
    // A directory the agent creates is 0755: reachable by every uid, writable by the agent.
    let fresh = fx.dir.path().join("fresh");
    fx.agent
        .serve(&fresh.join("agent.sock"), std::future::ready(()))
        .await
        .unwrap();
    let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755);
}

/// `/v1/token` follows the caller's parent by default: a script's `curl` gets a token whose
/// JWT-SVID is reported (so the token revoked) when the script exits, not when curl does;
/// `bind=self` follows curl. `lease` is passed through; `Accept: application/jwt` answers the
/// bare token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_follows_the_callers_parent_unless_bound_to_itself() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let out = fx.dir.path();
    let script = r#"
        get() { curl -sf --unix-socket "$SOCK" -H 'workload.spiffe.io: true' "$@"; }
        get 'http://agent/v1/token?audience=https%3A%2F%2Fapi&lease=new' > "$OUT/parent.json"
        get 'http://agent/v1/token?audience=https%3A%2F%2Fapi&bind=self&lease=L-1' > "$OUT/self.json"
        get -H 'Accept: application/jwt' 'http://agent/v1/token?audience=https%3A%2F%2Fapi' > "$OUT/bare"
        touch "$OUT/done"
        read line || true
    "#;
    let mut script = tokio::process::Command::new("sh")
        .args(["-c", script])
        .env("SOCK", &fx.http_socket)
        .env("OUT", out)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let script_pid = script.id().unwrap();
    within("the script's requests", async {
        while !out.join("done").exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let json = |name: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(name)).unwrap()).unwrap()
    };
    assert_eq!(
        json("parent.json")["access_token"],
        "at-for-spiffe://example.org/workload/me"
    );
    assert_eq!(json("self.json")["token_type"], "Bearer");
    assert_eq!(
        std::fs::read_to_string(out.join("bare")).unwrap(),
        "at-for-spiffe://example.org/workload/me"
    );
    assert_eq!(
        *fx.server.leases.lock().unwrap(),
        vec![Some("new".to_string()), Some("L-1".to_string()), None]
    );
    let jtis = fx.server.exchanged_jtis.lock().unwrap().clone();
    // The script's two parent-bound requests share one JWT-SVID (one per process and audience).
    assert_eq!(jtis[0], jtis[2]);
    assert_ne!(jtis[0], jtis[1]);
    let mut exited = fx.server.exited_rx.lock().await;
    // The bind=self curl has exited: only its own JWT-SVID is reported, not the script's.
    let report = within("curl's exit report", exited.recv()).await.unwrap();
    assert_ne!(report.pid, script_pid);
    assert_eq!(report.jwt_svid_jtis, vec![jtis[1].clone()]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), exited.recv())
            .await
            .is_err(),
        "the script still runs: nothing more is reported"
    );
    drop(script.stdin.take());
    assert!(script.wait().await.unwrap().success());
    let report = within("the script's exit report", exited.recv())
        .await
        .unwrap();
    assert_eq!(report.pid, script_pid);
    assert_eq!(report.jwt_svid_jtis, vec![jtis[0].clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_token_refuses_an_unknown_bind_or_a_malformed_lease() {
    let me = entry("e-me", "workload/me", &[uid_selector(my_uid())]);
    let fx = Fixture::start(vec![me], |_| {}).await;
    let sock = &fx.http_socket;
    for target in [
        "/v1/token?audience=x&bind=session",
        "/v1/token?audience=x&lease=a%20b",
        &format!("/v1/token?audience=x&lease={}", "a".repeat(129)),
    ] {
        let (status, body) = http_get(sock, target).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_request")),
            "{target}: {body}"
        );
    }
    assert!(fx.server.exchanges.lock().unwrap().is_empty());
}
