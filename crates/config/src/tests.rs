use super::*;

const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"k1"}]}"#;

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::from_toml_str(text, "test.toml", Path::new("."), &env)
}

#[test]
fn issue_example_keys_work_as_written() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("billing-worker.jwks.json"), JWKS).unwrap();
    let text = r#"
listen = "127.0.0.1:8080"
issuer = "http://127.0.0.1:8080"
data_dir = "./mayfly-data"
[tokens]
default_ttl = "5m"
max_ttl = "1h"
clock_skew = "30s"
signing_alg = "EdDSA"
key_rotation = "24h"
[[clients]]
id = "billing-worker"
jwks_file = "billing-worker.jwks.json"
audiences = ["https://api.example.test"]
scopes = ["read", "write"]
"#;
    let c = Config::from_toml_str(text, "x.toml", dir.path(), &[]).unwrap();
    assert_eq!(c.tokens.default_ttl, Duration::from_secs(300));
    assert_eq!(c.tokens.max_ttl, Duration::from_secs(3600));
    assert_eq!(c.tokens.signing_alg, SigningAlg::EdDSA);
    assert_eq!(c.clients[0].scopes, vec!["read", "write"]);
    assert!(matches!(c.clients[0].jwks, JwksSource::Static(_)));
}

#[test]
fn defaults() {
    let c = parse("", &[]).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.tokens.default_ttl, Duration::from_secs(300));
    assert_eq!(c.tokens.clock_skew, Duration::from_secs(30));
    assert!(c.issuer.is_none());
}

#[test]
fn environment_overrides_file() {
    let c = parse(
        "[tokens]\ndefault_ttl = \"5m\"\n",
        &[
            ("MAYFLY_TOKENS_DEFAULT_TTL", "2m"),
            ("MAYFLY_LISTEN", "127.0.0.1:9999"),
        ],
    )
    .unwrap();
    assert_eq!(c.tokens.default_ttl, Duration::from_secs(120));
    assert_eq!(c.listen.port(), 9999);
}

#[test]
fn environment_clients_as_toml() {
    let env = r#"[{ id = "a", audiences = ["x"], jwks = { keys = [ { kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" } ] } }]"#;
    let c = parse("", &[("MAYFLY_CLIENTS", env)]).unwrap();
    assert_eq!(c.clients[0].id, "a");
}

#[test]
fn unknown_key_names_file_and_key() {
    let e = parse("[tokens]\ndefault_tll = \"5m\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("test.toml") && e.contains("default_tll"), "{e}");
}

#[test]
fn unknown_env_var_is_an_error() {
    let e = parse("", &[("MAYFLY_TOKENS_DEFALT_TTL", "5m")]).unwrap_err();
    assert!(e.source_name.contains("MAYFLY_TOKENS_DEFALT_TTL"));
}

#[test]
fn bad_duration_names_key_and_fix() {
    let e = parse("[tokens]\nmax_ttl = \"forever\"\n", &[]).unwrap_err();
    assert_eq!(e.key, "tokens.max_ttl");
    assert!(e.fix.contains("5m"));
}

#[test]
fn unreadable_jwks_file_names_key() {
    let e = parse(
        "[[clients]]\nid = \"a\"\njwks_file = \"/nonexistent/x.json\"\naudiences = [\"x\"]\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(e.key, "clients[0].jwks_file");
}

#[test]
fn private_key_material_is_refused() {
    let text = "[[clients]]\nid = \"a\"\naudiences = [\"x\"]\njwks = { keys = [ { kty = \"OKP\", crv = \"Ed25519\", x = \"AA\", d = \"BB\" } ] }\n";
    let e = parse(text, &[]).unwrap_err();
    assert!(e.problem.contains("private"), "{e}");
}

#[test]
fn ttl_rules() {
    assert_eq!(
        parse("[tokens]\ndefault_ttl = \"2h\"\n", &[])
            .unwrap_err()
            .key,
        "tokens.default_ttl"
    );
    assert_eq!(
        parse("[tokens]\nmax_ttl = \"48h\"\ndefault_ttl = \"1m\"\n", &[])
            .unwrap_err()
            .key,
        "tokens.max_ttl"
    );
    assert_eq!(
        parse("[tokens]\nsigning_alg = \"HS256\"\n", &[])
            .unwrap_err()
            .key,
        "tokens.signing_alg"
    );
}

#[test]
fn issuer_must_be_https_off_loopback() {
    assert_eq!(
        parse("issuer = \"http://sts.example.com\"\n", &[])
            .unwrap_err()
            .key,
        "issuer"
    );
    assert!(parse("issuer = \"https://sts.example.com\"\n", &[]).is_ok());
}

#[test]
fn non_loopback_listen_needs_an_issuer() {
    assert_eq!(
        parse("listen = \"0.0.0.0:8080\"\n", &[]).unwrap_err().key,
        "issuer"
    );
    assert!(
        parse(
            "listen = \"0.0.0.0:8080\"\nissuer = \"https://sts.example.com\"\n",
            &[]
        )
        .is_ok()
    );
}

/// The issue's `[[issuers]]` example, as written.
#[test]
fn issuer_example_works_as_written() {
    let text = r#"
issuer = "https://sts.example.com"
[[issuers]]
name = "k8s-prod"
issuer = "https://kubernetes.default.svc.cluster.local"
jwks_uri = "https://k8s.example.com/openid/v1/jwks"
audiences = ["mayfly"]
algorithms = ["RS256", "ES256"]
max_token_age = "1h"
trust_domain = "example.org"
identity = "spiffe://example.org/ns/{/kubernetes.io/namespace}/sa/{/kubernetes.io/serviceaccount/name}"
"#;
    let c = parse(text, &[]).unwrap();
    let i = &c.issuers[0];
    assert_eq!(i.name, "k8s-prod");
    assert_eq!(i.trust_domain, "example.org");
    assert!(matches!(&i.keys, IssuerKeys::Uri(u) if u.host_str() == Some("k8s.example.com")));
    assert_eq!(i.max_token_age, Duration::from_secs(3600));
    assert_eq!(
        c.trust_domain, "sts.example.com",
        "defaults to the issuer's host"
    );
    assert!(!i.one_time_use && !i.client_auth_required);
}

#[test]
fn issuer_errors_name_the_key_and_fix() {
    let base = "[[issuers]]\nname = \"gh\"\nissuer = \"https://token.actions.githubusercontent.com\"\naudiences = [\"mayfly\"]\n";
    for (extra, key, needle) in [
        (
            "preset = \"github-actions\"\njwks_uri = \"http://keys.example.com/jwks\"\n",
            "issuers[0].jwks_uri",
            "plain http",
        ),
        (
            "preset = \"jenkins\"\njwks_uri = \"https://k/jwks\"\n",
            "issuers[0].preset",
            "unknown preset",
        ),
        (
            "jwks_uri = \"https://k/jwks\"\n",
            "issuers[0].identity",
            "identity template or a preset",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\ndiscovery = true\n",
            "issuers[0].jwks_uri",
            "exactly one",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\nalgorithms = [\"HS256\"]\n",
            "issuers[0].algorithms",
            "never HMAC",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\nalgorithms = [\"none\"]\n",
            "issuers[0].algorithms",
            "never `none`",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\nclient_auth = \"sometimes\"\n",
            "issuers[0].client_auth",
            "not a rule",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\nmax_token_age = \"soon\"\n",
            "issuers[0].max_token_age",
            "not a duration",
        ),
        (
            "preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\nattributes = { env = \"environment\" }\n",
            "issuers[0].attributes.env",
            "JSON pointer",
        ),
    ] {
        let e = parse(&format!("{base}{extra}"), &[]).unwrap_err();
        assert_eq!(e.key, key, "{extra}: {e}");
        assert!(e.to_string().contains(needle), "{extra}: {e}");
    }
    let twice = format!(
        "{base}preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\n{base}preset = \"github-actions\"\njwks_uri = \"https://k/jwks\"\n"
    );
    assert_eq!(parse(&twice, &[]).unwrap_err().key, "issuers[1].name");
    let bad_td = parse("trust_domain = \"Example.ORG\"\n", &[]).unwrap_err();
    assert_eq!(bad_td.key, "trust_domain");
}

/// An issuer yields identities only in a trust domain of its own: by default `<name>.<ours>`,
/// never ours, never another issuer's; a whole-ID issuer (JWT-SVIDs) must name its own.
#[test]
fn issuer_trust_domains_are_their_own() {
    let k8s = |name: &str, extra: &str| {
        format!(
            "[[issuers]]\nname = \"{name}\"\nissuer = \"https://{name}\"\npreset = \"kubernetes\"\njwks_uri = \"https://k/jwks\"\naudiences = [\"mayfly\"]\n{extra}"
        )
    };
    let own = "trust_domain = \"example.org\"\n";
    let c = parse(
        &format!("{own}{}{}", k8s("k8s-prod", ""), k8s("K8s-Dev", "")),
        &[],
    )
    .unwrap();
    assert_eq!(c.issuers[0].trust_domain, "k8s-prod.example.org");
    assert_eq!(c.issuers[1].trust_domain, "k8s-dev.example.org");

    for (text, key, needle) in [
        // Our own trust domain, explicitly: refused.
        (
            format!("{own}{}", k8s("k8s", "trust_domain = \"example.org\"\n")),
            "issuers[0].trust_domain",
            "this server's own trust domain",
        ),
        // A federated JWT-SVID issuer claiming our trust domain.
        (
            format!(
                "{own}[[issuers]]\nname = \"partner\"\nissuer = \"https://partner\"\npreset = \"spiffe-jwt-svid\"\njwks_uri = \"https://k/jwks\"\naudiences = [\"mayfly\"]\ntrust_domain = \"example.org\"\n"
            ),
            "issuers[0].trust_domain",
            "this server's own trust domain",
        ),
        // A JWT-SVID issuer must name the trust domain it signs for.
        (
            format!(
                "{own}[[issuers]]\nname = \"partner\"\nissuer = \"https://partner\"\npreset = \"spiffe-jwt-svid\"\njwks_uri = \"https://k/jwks\"\naudiences = [\"mayfly\"]\n"
            ),
            "issuers[0].trust_domain",
            "needs the trust domain it signs for",
        ),
        // Two issuers, one trust domain: their identities could collide.
        (
            format!(
                "{own}{}{}",
                k8s("prod", "trust_domain = \"k8s.example\"\n"),
                k8s("dev", "trust_domain = \"k8s.example\"\n")
            ),
            "issuers[1].trust_domain",
            "already the trust domain of issuer `prod`",
        ),
        // A literal host in the template other than the issuer's trust domain.
        (
            format!(
                "{own}{}",
                k8s(
                    "k8s",
                    "identity = \"spiffe://example.org/ns/{/kubernetes.io/namespace}\"\n"
                )
            ),
            "issuers[0].identity",
            "names trust domain `example.org`",
        ),
        (
            format!("{own}{}", k8s("k8s", "trust_domain = \"K8S\"\n")),
            "issuers[0].trust_domain",
            "not a SPIFFE trust domain",
        ),
        (
            format!(
                "{own}{}",
                k8s("k8s", "attributes = { issuer = \"/iss\" }\n")
            ),
            "issuers[0].attributes.issuer",
            "set by mayfly",
        ),
        (
            format!("{own}{}", k8s("mayfly", "")),
            "issuers[0].name",
            "reserved",
        ),
    ] {
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(e.to_string().contains(needle), "{text}: {e}");
    }
}

#[test]
fn issuers_and_policy_from_the_environment() {
    let c = parse(
        "",
        &[
            ("MAYFLY_TRUST_DOMAIN", "example.org"),
            ("MAYFLY_POLICY_DIR", "/etc/mayfly/policies"),
            (
                "MAYFLY_ISSUERS",
                r#"[{ name = "k8s", issuer = "https://k8s", preset = "kubernetes", jwks_uri = "https://k8s/jwks", audiences = ["mayfly"] }]"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.trust_domain, "example.org");
    assert_eq!(
        c.policy_dir.as_deref(),
        Some(Path::new("/etc/mayfly/policies"))
    );
    assert_eq!(c.issuers[0].preset.as_deref(), Some("kubernetes"));
}

#[test]
fn node_attestation_from_the_environment() {
    let c = parse(
        "",
        &[
            (
                "MAYFLY_ISSUERS",
                r#"[{ name = "k8s", issuer = "https://k8s", preset = "kubernetes", jwks_uri = "https://k8s/jwks", audiences = ["mayfly"] }]"#,
            ),
            (
                "MAYFLY_NODE_ATTESTATION",
                r#"[{ issuer = "k8s", audience = "mayfly-node", node_claims = ["/kubernetes.io/node/name"] }]"#,
            ),
        ],
    )
    .unwrap();
    assert_eq!(c.node_attestation[0].issuer, "k8s");
    assert_eq!(c.node_attestation[0].audience, "mayfly-node");
}

#[test]
fn proxy_routes_parse_and_bad_ones_say_how_to_fix() {
    let ok = r#"
[proxy]
listen = "127.0.0.1:0"
client_id = "mayfly-proxy"
key_file = "proxy.private.jwk.json"
[[proxy.routes]]
name = "stripe"
path_prefix = "/stripe/"
upstream = "https://api.stripe.com/v1"
audience = "https://api.stripe.com"
scopes = ["payments"]
inject = { header = "Authorization", value = "Bearer {key}" }
drop_headers = ["Cookie"]
policy_file = "policies/stripe.cedar"
[[proxy.routes]]
name = "maps"
host = "Maps.Proxy.Internal"
upstream = "http://127.0.0.1:9000"
audience = "maps"
key = "google-maps"
inject = { query = "key" }
"#;
    let c = parse(ok, &[]).unwrap();
    let p = &c.proxy;
    assert_eq!(p.revocation_cache, Duration::from_secs(5));
    assert_eq!(p.routes.len(), 2);
    assert_eq!(p.routes[0].key, "stripe");
    assert_eq!(
        p.routes[0].inject,
        Inject::Header {
            name: "authorization".into(),
            template: "Bearer {key}".into()
        }
    );
    assert_eq!(p.routes[0].drop_headers, vec!["cookie"]);
    // Resolved like every other file (relative to the config file).
    let pf = p.routes[0].policy_file.as_ref().unwrap();
    assert!(pf.ends_with("policies/stripe.cedar"), "{pf:?}");
    assert!(p.routes[1].policy_file.is_none());
    assert_eq!(
        p.routes[1].matcher,
        RouteMatch::Host("maps.proxy.internal".into())
    );
    assert_eq!(p.routes[1].key, "google-maps");
    let c = parse(ok, &[("MAYFLY_PROXY_REVOCATION_CACHE", "2s")]).unwrap();
    assert_eq!(c.proxy.revocation_cache, Duration::from_secs(2));
    assert_eq!(c.proxy.revocation, crate::RevocationMode::Introspection);
    let c = parse(ok, &[("MAYFLY_PROXY_REVOCATION", "status_list")]).unwrap();
    assert_eq!(c.proxy.revocation, crate::RevocationMode::StatusList);

    let route = |extra: &str| {
        format!(
            "[[proxy.routes]]\nname = \"r\"\nupstream = \"https://u.test\"\naudience = \"a\"\n{extra}\n"
        )
    };
    for (text, key) in [
        (route("path_prefix = \"/r/\""), "proxy.routes[0].inject"),
        (
            route("inject = { query = \"k\" }"),
            "proxy.routes[0].path_prefix",
        ),
        (
            route("path_prefix = \"/r/\"\nhost = \"h\"\ninject = { query = \"k\" }"),
            "proxy.routes[0].path_prefix",
        ),
        (
            route("path_prefix = \"/r/\"\ninject = { header = \"X-Key\", value = \"no placeholder\" }"),
            "proxy.routes[0].inject.value",
        ),
        (
            route("path_prefix = \"/r/\"\ninject = { header = \"X-Key\", query = \"k\" }"),
            "proxy.routes[0].inject",
        ),
        (
            route("path_prefix = \"/r/\"\ninject = { basic = \"nokey\" }"),
            "proxy.routes[0].inject.basic",
        ),
        (
            "[[proxy.routes]]\nname = \"r\"\npath_prefix = \"/r/\"\nupstream = \"https://u.test/?k=1\"\naudience = \"a\"\ninject = { query = \"k\" }\n".to_string(),
            "proxy.routes[0].upstream",
        ),
        (
            "[proxy]\nclient_id = \"p\"\n".to_string(),
            "proxy.client_id",
        ),
        // A prefix that no normalised request path could match.
        (
            route("path_prefix = \"/a//b/\"\ninject = { query = \"k\" }"),
            "proxy.routes[0].path_prefix",
        ),
        (
            route("path_prefix = \"/%61pi/\"\ninject = { query = \"k\" }"),
            "proxy.routes[0].path_prefix",
        ),
        (
            route("path_prefix = \"/a%2Fb/\"\ninject = { query = \"k\" }"),
            "proxy.routes[0].path_prefix",
        ),
        (
            "[proxy]\nrevocation_cache = \"1h\"\n".to_string(),
            "proxy.revocation_cache",
        ),
        (
            "[proxy]\nrevocation = \"crl\"\n".to_string(),
            "proxy.revocation",
        ),
    ] {
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, key, "{text}: {e}");
        assert!(!e.fix.is_empty());
    }
}

/// The route's key crosses the proxy → upstream hop: plain http only to this host.
#[test]
fn plain_http_upstreams_must_be_loopback() {
    let route = |upstream: &str| {
        format!(
            "[[proxy.routes]]\nname = \"r\"\npath_prefix = \"/r/\"\nupstream = \"{upstream}\"\naudience = \"a\"\ninject = {{ query = \"k\" }}\n"
        )
    };
    for ok in [
        "http://127.0.0.1:9000",
        "http://127.8.9.10/base",
        "http://[::1]:8080/",
        "http://localhost:3000",
        "http://LocalHost",
        "https://api.example.com",
        "https://10.0.0.5",
    ] {
        let c = parse(&route(ok), &[]).unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(
            c.proxy.routes[0].upstream.as_str().trim_end_matches('/'),
            url::Url::parse(ok).unwrap().as_str().trim_end_matches('/')
        );
    }
    for bad in [
        "http://api.example.com",
        "http://10.0.0.5:8080",
        "http://0.0.0.0:9000",
        "http://[::ffff:127.0.0.1]/",
        "http://localhost.example.com",
        "http://127.0.0.1.nip.io",
    ] {
        let e = parse(&route(bad), &[]).unwrap_err();
        assert_eq!(e.key, "proxy.routes[0].upstream", "{bad}: {e}");
        assert!(e.to_string().contains("not loopback"), "{bad}: {e}");
        assert!(e.fix.contains("https://"), "{bad}: {e}");
    }
}

#[test]
fn client_introspect_grants_and_ids() {
    let jwks = r#"jwks = { keys = [ { kty = "OKP", crv = "Ed25519", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" } ] }"#;
    let text = format!(
        "[[clients]]\nid = \"rs\"\naudiences = [\"x\"]\nintrospect = [\"https://api\"]\n{jwks}\n"
    );
    let c = Config::from_toml_str(&text, "t.toml", Path::new("."), &[]).unwrap();
    assert_eq!(c.clients[0].introspect, vec!["https://api".to_string()]);
    let text =
        format!("[[clients]]\nid = \"rs\"\naudiences = [\"x\"]\nintrospect = [\"\"]\n{jwks}\n");
    let e = Config::from_toml_str(&text, "t.toml", Path::new("."), &[]).unwrap_err();
    assert_eq!(e.key, "clients[0].introspect");
    // One rule for ids, here and at run time: no whitespace of any kind.
    for bad in ["a b", "a\u{a0}b", ""] {
        let text = format!("[[clients]]\nid = \"{bad}\"\naudiences = [\"x\"]\n{jwks}\n");
        let e = Config::from_toml_str(&text, "t.toml", Path::new("."), &[]).unwrap_err();
        assert_eq!(e.key, "clients[0].id");
        assert_eq!(e.problem, crate::CLIENT_ID_RULE);
        assert!(!crate::valid_client_id(bad));
    }
}

#[test]
fn leases_and_status_lists_default_override_and_refuse() {
    let c = parse("", &[]).unwrap();
    assert_eq!(
        (
            c.leases.grace,
            c.leases.max_lifetime,
            c.leases.ci_max_lifetime
        ),
        (
            Duration::from_secs(30),
            Duration::from_secs(24 * 3600),
            Duration::from_secs(6 * 3600)
        )
    );
    assert_eq!(
        (c.status_list.size, c.status_list.ttl),
        (1 << 20, Duration::from_secs(60))
    );
    let c = parse(
        "[leases]\ngrace = \"10s\"\n[status_list]\nsize = 4096\n",
        &[
            ("MAYFLY_LEASES_CI_MAX_LIFETIME", "2h"),
            ("MAYFLY_STATUS_LIST_TTL", "30s"),
        ],
    )
    .unwrap();
    assert_eq!(c.leases.grace, Duration::from_secs(10));
    assert_eq!(c.leases.ci_max_lifetime, Duration::from_secs(7200));
    assert_eq!(c.status_list.size, 4096);
    assert_eq!(c.status_list.ttl, Duration::from_secs(30));
    for (text, key) in [
        ("[leases]\ngrace = \"1s\"\n", "leases.grace"),
        ("[leases]\nmax_lifetime = \"30s\"\n", "leases.max_lifetime"),
        (
            "[leases]\nci_max_lifetime = \"8d\"\n",
            "leases.ci_max_lifetime",
        ),
        ("[status_list]\nsize = 1000\n", "status_list.size"),
        ("[status_list]\nsize = 33554432\n", "status_list.size"),
        ("[status_list]\nttl = \"2h\"\n", "status_list.ttl"),
    ] {
        let e = parse(text, &[]).unwrap_err();
        assert_eq!(e.key, key, "{text}");
    }
}
