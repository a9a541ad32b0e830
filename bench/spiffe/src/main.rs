//! `mayfly-spiffebench`: the SPIFFE benchmarks behind docs/PERFORMANCE.md (`bench/spiffe.sh`).
//!
//! - `jwt` calls FetchJWTSVID on `mayfly agent`'s Workload API socket through the third-party
//!   `spiffe` crate client, sequentially or from C concurrent clients; after this process's first
//!   call every answer comes from the agent's cache.
//! - `x509` attests as an agent (join token) and drives `POST /agent/v1/svid/x509` over the
//!   server's mutual TLS with `mayfly_agent::HttpUpstream`, many signings in flight, with CSRs
//!   made before the clock starts.
//! - `ceiling` measures `X509Ca::sign_svid` in a loop on one thread: the upper bound for one core.
//!
//! Each prints a JSON report on stdout and a one-line summary on stderr; a run with any failed
//! call exits non-zero. What it does not do: start or configure mayfly (the script does), or
//! measure peers.

mod ceiling;
mod closed;
mod jwt;
mod stats;
mod x509;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mayfly-spiffebench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// FetchJWTSVID latency and throughput from the agent's cache.
    Jwt(jwt::JwtArgs),
    /// X.509-SVID signings per second at the server, over mutual TLS.
    X509(x509::X509Args),
    /// Single-thread signing ceiling: X509Ca::sign_svid in a loop.
    Ceiling {
        /// Seconds to spend on each of the two measurements.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        /// A name for the report.
        #[arg(long, default_value = "ceiling")]
        label: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Worker threads: one per core this process may run on (the script pins it to one).
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Jwt(args) => rt()?.block_on(jwt::run(args)),
        Command::X509(args) => rt()?.block_on(x509::run(args)),
        Command::Ceiling { seconds, label } => ceiling::run(seconds, &label),
    }
}
