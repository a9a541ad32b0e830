//! Counts what a source yields: `[THREADS=n] cargo run --release -p mayfly-scan-sources --example
//! count -- walk|git|image|stdin PATH...`. Prints items, bytes, errors and the time taken.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use mayfly_scan_sources::{Origin, Sink, SourceError, WalkOptions};

/// Drains every reader, counting nothing itself (the returned stats do).
struct Drain;

impl Sink for Drain {
    fn item(&self, _origin: &Origin, reader: &mut dyn Read) -> std::io::Result<()> {
        std::io::copy(reader, &mut std::io::sink()).map(|_| ())
    }

    fn error(&self, what: &str, err: &SourceError) {
        eprintln!("error: {what}: {err}");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args.next().unwrap_or_default();
    let paths: Vec<PathBuf> = args.map(PathBuf::from).collect();
    let opts = WalkOptions {
        threads: std::env::var("THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(0),
        ..WalkOptions::default()
    };
    let start = Instant::now();
    let first = paths.first().cloned().unwrap_or_else(|| PathBuf::from("."));
    let stats = match source.as_str() {
        "walk" => mayfly_scan_sources::walk(&paths, &opts, &Drain)?,
        "git" => mayfly_scan_sources::git(&first, &opts, &Drain)?,
        "image" => mayfly_scan_sources::image(&first, &opts, &Drain)?,
        "stdin" => mayfly_scan_sources::stdin(&opts, &Drain)?,
        _ => return Err("usage: count walk|git|image|stdin PATH...".into()),
    };
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{stats:?} in {secs:.2}s ({:.0} MB/s)",
        stats.bytes as f64 / secs / 1e6
    );
    Ok(())
}
