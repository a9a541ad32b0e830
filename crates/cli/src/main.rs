//! `mayfly`: short-lived, audience-scoped credentials instead of static API keys.
#![forbid(unsafe_code)]

mod admin;
mod debt_cmd;
mod exec_cmd;
mod keyfile;
mod lease_cmd;
mod policy_cmd;
mod proxy_cmd;
mod scan_cmd;
mod server;
mod spiffe_cmd;
mod token;
mod transfer;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

// The token path allocates many small short-lived buffers (JSON, base64, headers); mimalloc's
// thread-local free lists measured faster than glibc malloc there (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mayfly: workloads prove what they are and get short-lived, audience-scoped tokens.
#[derive(Parser)]
#[command(name = "mayfly", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the token service (embedded default without --config: 127.0.0.1:8080, ./mayfly-data).
    Server {
        /// TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Validate configuration.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Signing keys of this server.
    Keys {
        /// TOML config file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: KeysCmd,
    },
    /// The audit log.
    Audit {
        /// TOML config file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Generate a client key pair as JWK files (PREFIX.private.jwk.json, mode 0600, and PREFIX.jwks.json).
    Keygen {
        /// Algorithm: ES256, ES384 or EdDSA.
        #[arg(long, default_value = "ES256")]
        alg: String,
        /// Key id (default: the key's RFC 7638 thumbprint).
        #[arg(long)]
        kid: Option<String>,
        /// Output prefix.
        #[arg(long)]
        out: PathBuf,
    },
    /// Clients registered at run time (beside those in the config file).
    Client {
        /// TOML config file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: ClientCmd,
    },
    /// Get or inspect tokens.
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Run a command with a token under a lease that ends when the command does: the token in
    /// $MAYFLY_TOKEN and in the file $MAYFLY_TOKEN_FILE, refreshed, revoked at exit.
    Exec(Box<exec_cmd::ExecArgs>),
    /// Cedar policies: check a directory, run a test file, explain a decision.
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// SPIFFE registration entries: which local processes get which SPIFFE ID.
    Entry {
        /// TOML config file of the server.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: spiffe_cmd::EntryCmd,
    },
    /// Run the SPIFFE agent (Workload API on a unix socket), or `mayfly agent token create`, `mayfly agent list`, `mayfly agent evict`.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        cmd: Option<spiffe_cmd::AgentCmd>,
        #[command(flatten)]
        args: spiffe_cmd::AgentArgs,
    },
    /// Leases: the tokens under a lease live only as long as it does.
    Lease {
        #[command(subcommand)]
        cmd: lease_cmd::LeaseCmd,
    },
    /// The trust domain's trust bundle.
    Bundle {
        #[command(subcommand)]
        cmd: BundleCmd,
    },
    /// Run the legacy translation proxy: workloads present mayfly tokens, the proxy injects the
    /// static key of a key-only upstream (`[proxy]` and `[[proxy.routes]]` in the config).
    Proxy {
        /// TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// The key-debt inventory: every static key that still exists, its owner and expiry date.
    Debt {
        /// TOML config file.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        cmd: debt_cmd::DebtCmd,
    },
    /// Find static credentials in files, git history, container images or standard input
    /// (exit 0 clean, 1 findings, 2 error).
    Scan(scan_cmd::ScanArgs),
    /// Apply the database migrations now (servers also apply them at start) and list them.
    Migrate {
        /// TOML config file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Write the whole store (keys sealed, clients, revocations, replay records, audit log) to a
    /// new file, to move it to another database with `mayfly import`. Stop the servers first.
    Export {
        /// TOML config file (the store to read).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The file to create (JSON lines, mode 0600).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
    },
    /// Load a `mayfly export` file into an empty store (SQLite or PostgreSQL), in one
    /// transaction; needs the exported deployment's master key. Run it before any server starts
    /// on the target.
    Import {
        /// TOML config file (the store to fill).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The export file.
        #[arg(long = "in", value_name = "PATH")]
        input: PathBuf,
    },
}

#[derive(Subcommand)]
enum BundleCmd {
    /// Print the X.509 authorities as PEM (for `mayfly agent --trust-bundle`), or with --json
    /// the SPIFFE trust bundle document.
    Show {
        /// TOML config file of the server.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The SPIFFE bundle JSON instead of PEM.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate FILE (and the files it names) without starting anything.
    Check {
        /// The config file.
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysCmd {
    /// List signing keys and their schedule.
    List,
    /// Start signing with the next key now; the current one stays published until its tokens expire.
    Rotate {
        /// Rotate even if the next key was published too recently for JWKS caches to have it.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Print the last events as JSON lines.
    Tail {
        /// How many.
        #[arg(short, long, default_value_t = 20)]
        n: i64,
    },
    /// Check the whole chain; exit 1 and name every edited, deleted or reordered event.
    Verify {
        /// A file holding the anchors the server wrote to its audit output (the JSON-lines
        /// copy itself will do): a tail cut from the database, head included, is found.
        #[arg(long, value_name = "FILE")]
        anchor: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ClientCmd {
    /// Register a client.
    Add {
        /// client_id.
        #[arg(long)]
        id: String,
        /// Its public JWK Set file (from `mayfly keygen`).
        #[arg(long)]
        jwks_file: PathBuf,
        /// An audience it may request (repeat for several).
        #[arg(long = "audience", required = true)]
        audiences: Vec<String>,
        /// A scope it may request (repeat for several).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Lifetime cap, e.g. 10m.
        #[arg(long)]
        max_ttl: Option<String>,
    },
    /// List clients (config and run time).
    List,
    /// Remove a run-time client.
    Remove {
        /// client_id.
        id: String,
    },
}

#[derive(Subcommand)]
enum TokenCmd {
    /// Get a token with client credentials and private_key_jwt; prints the access token.
    Get {
        /// Issuer URL.
        #[arg(long, env = "MAYFLY_ISSUER")]
        issuer: String,
        /// client_id.
        #[arg(long)]
        client_id: String,
        /// Private JWK file.
        #[arg(long)]
        key: PathBuf,
        /// Audience (sent as RFC 8707 resource).
        #[arg(long)]
        audience: Option<String>,
        /// Scopes, space separated.
        #[arg(long)]
        scope: Option<String>,
        /// Requested lifetime in seconds (can only shorten).
        #[arg(long)]
        expires_in: Option<u64>,
        /// Print the whole JSON response instead of the token.
        #[arg(long)]
        json: bool,
    },
    /// Verify a token against the issuer's JWKS and show its claims and time left.
    Inspect {
        /// The token ('-' reads standard input).
        token: String,
        /// Issuer URL.
        #[arg(long, env = "MAYFLY_ISSUER")]
        issuer: String,
        /// Expected audience.
        #[arg(long)]
        audience: Option<String>,
    },
    /// Revoke live tokens this deployment issued, and every token derived from them: by jti,
    /// lease, identity, client or trusted issuer (all that are given must match), optionally
    /// only those issued since a time. Operator action on the store (audited with your unix
    /// user), or with --server through its admin endpoint.
    Revoke(token::RevokeArgs),
}

/// The async runtime for this process. With one core to run on (a `taskset` or cpuset of one
/// CPU, or a cgroup quota of one: what `available_parallelism` reports), the work-stealing
/// scheduler has nobody to steal from and only adds cross-thread wake-ups and atomics to every
/// task switch; the single-threaded scheduler does the same work for less (20-40% more proxied
/// calls per second on one pinned core, `bench/proxy.sh`). With more cores, one worker per core.
fn runtime_builder() -> tokio::runtime::Builder {
    if cpus() == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

/// The CPUs this process may run on (None: unknown): what the runtime is sized for. Read once
/// (it reads cgroup files), so that the banner names the scheduler that was chosen.
fn cpus() -> Option<usize> {
    static CPUS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .ok()
            .map(std::num::NonZeroUsize::get)
    })
}

/// The scheduler this process runs on, for the start-up banners: operators pinning a sidecar
/// to a core can see that it noticed.
pub(crate) fn scheduler() -> String {
    match cpus() {
        Some(1) => "1 CPU: single-threaded scheduler".into(),
        Some(n) => format!("{n} CPUs: one worker each"),
        None => "CPU count unknown: multi-threaded scheduler".into(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The scanner runs on its own threads; only --to-debt starts a runtime.
    let cli = match cli.cmd {
        Cmd::Scan(args) => return scan_cmd::run(args),
        cmd => Cli { cmd },
    };
    let rt = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mayfly: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mayfly: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.cmd {
        Cmd::Server { config } => server::run(config).await,
        Cmd::Config {
            cmd: ConfigCmd::Check { file },
        } => admin::config_check(&file).await,
        Cmd::Keys { config, cmd } => match cmd {
            KeysCmd::List => admin::keys_list(config).await,
            KeysCmd::Rotate { force } => admin::keys_rotate(config, force).await,
        },
        Cmd::Audit { config, cmd } => match cmd {
            AuditCmd::Tail { n } => admin::audit_tail(config, n).await,
            AuditCmd::Verify { anchor } => admin::audit_verify(config, anchor.as_deref()).await,
        },
        Cmd::Entry { config, cmd } => spiffe_cmd::entry(config, cmd).await,
        Cmd::Proxy { config } => proxy_cmd::run(config).await,
        Cmd::Debt { config, cmd } => debt_cmd::run(config, cmd).await,
        Cmd::Scan(args) => Ok(scan_cmd::run(args)),
        Cmd::Agent {
            cmd: Some(spiffe_cmd::AgentCmd::Token { config, cmd }),
            ..
        } => match cmd {
            spiffe_cmd::TokenCmd::Create { ttl, agent_name } => {
                spiffe_cmd::join_token_create(config, &ttl, agent_name).await
            }
        },
        Cmd::Agent {
            cmd: Some(spiffe_cmd::AgentCmd::List { config, json }),
            ..
        } => spiffe_cmd::agent_list(config, json).await,
        Cmd::Agent {
            cmd: Some(spiffe_cmd::AgentCmd::Evict { config, spiffe_id }),
            ..
        } => spiffe_cmd::agent_evict(config, &spiffe_id).await,
        Cmd::Agent { cmd: None, args } => spiffe_cmd::agent_run(args).await,
        Cmd::Bundle {
            cmd: BundleCmd::Show { config, json },
        } => spiffe_cmd::bundle_show(config, json).await,
        Cmd::Keygen { alg, kid, out } => keyfile::keygen(&alg, kid.as_deref(), &out),
        Cmd::Client { config, cmd } => match cmd {
            ClientCmd::Add {
                id,
                jwks_file,
                audiences,
                scopes,
                max_ttl,
            } => admin::client_add(config, id, &jwks_file, audiences, scopes, max_ttl).await,
            ClientCmd::List => admin::client_list(config).await,
            ClientCmd::Remove { id } => admin::client_remove(config, &id).await,
        },
        Cmd::Token { cmd } => match cmd {
            TokenCmd::Get {
                issuer,
                client_id,
                key,
                audience,
                scope,
                expires_in,
                json,
            } => token::get(&issuer, &client_id, &key, audience, scope, expires_in, json).await,
            TokenCmd::Inspect {
                token,
                issuer,
                audience,
            } => token::inspect(&token, &issuer, audience.as_deref()).await,
            TokenCmd::Revoke(args) => token::revoke(args).await,
        },
        Cmd::Lease { cmd } => lease_cmd::run(cmd).await,
        Cmd::Exec(args) => exec_cmd::run(*args).await,
        Cmd::Policy { cmd } => policy_cmd::run(cmd),
        Cmd::Migrate { config } => transfer::migrate(config).await,
        Cmd::Export { config, out } => transfer::export(config, &out).await,
        Cmd::Import { config, input } => transfer::import(config, &input).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A jti is base64url and may begin with `-`: it is a value, not a flag.
    #[test]
    fn a_jti_beginning_with_a_hyphen_is_a_value() {
        let cli = Cli::try_parse_from(["mayfly", "token", "revoke", "--jti", "-Ab_9"]).unwrap();
        match cli.cmd {
            Cmd::Token {
                cmd: TokenCmd::Revoke(a),
            } => assert_eq!(a.jti.as_deref(), Some("-Ab_9")),
            _ => panic!("not token revoke"),
        }
    }

    /// A revocation names at least one selector; --server and --token-file go together.
    #[test]
    fn revoke_needs_a_selector_and_a_complete_server_pair() {
        assert!(Cli::try_parse_from(["mayfly", "token", "revoke"]).is_err());
        assert!(Cli::try_parse_from(["mayfly", "token", "revoke", "--since", "2h"]).is_err());
        let cli = Cli::try_parse_from([
            "mayfly", "token", "revoke", "--client", "c", "--issuer", "gh", "--since", "-2h",
        ])
        .unwrap();
        match cli.cmd {
            Cmd::Token {
                cmd: TokenCmd::Revoke(a),
            } => {
                assert_eq!(a.client.as_deref(), Some("c"));
                assert_eq!(a.since.as_deref(), Some("-2h"));
            }
            _ => panic!("not token revoke"),
        }
        assert!(
            Cli::try_parse_from([
                "mayfly", "token", "revoke", "--client", "c", "--server", "http://x"
            ])
            .is_err()
        );
    }
}
