//! `mayfly-loadgen`: the load generator behind docs/PERFORMANCE.md.
//!
//! - `keygen` makes the benchmark client's ES256 key and its public JWKS (given to both servers).
//! - `run` drives `client_credentials` with `private_key_jwt` over keep-alive HTTP/1.1, with a
//!   distinct ES256 assertion per request, signed before the clock starts. Closed loop (as fast as
//!   the server answers) or open loop (`--rate`, latency from each request's scheduled send time).
//! - `ceiling` measures the crypto-bound ceiling on one thread: one ES256 assertion verify
//!   (jsonwebtoken with aws-lc-rs, as the server does) plus one Ed25519 token signature.
//!
//! What it does not do: TLS, HTTP/2, or any check of the tokens beyond the status code and the
//! first response's shape. Every non-200 answer is an error, and a run with errors exits non-zero.

mod ceiling;
mod claims;
mod keys;
mod run;
mod stats;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mayfly-loadgen", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ES256 client key: DIR/client.pkcs8.der and DIR/client.jwks.json.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Send token requests and print a JSON report on stdout.
    Run(Box<run::RunArgs>),
    /// Single-thread crypto ceiling: ES256 verify + Ed25519 sign per iteration.
    Ceiling {
        /// Seconds to spend on each of the three measurements.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { out } => keys::keygen(&out),
        Command::Run(args) => run::run(*args),
        Command::Ceiling { seconds } => ceiling::ceiling(seconds),
    }
}
