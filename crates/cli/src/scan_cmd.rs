//! `mayfly scan`: find static credentials in trees, git history, image tarballs and stdin.
//! Exit status: 0 clean, 1 findings remain, 2 the scan could not run or was incomplete.

use std::collections::HashSet;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use mayfly_scan::{Finding, Format, Location, Outcome, RuleSet, Scanner, Stats};
use mayfly_scan_sources::{Origin, Sink, SourceError, WalkOptions};

use crate::admin::Ctx;
use crate::debt_cmd;

/// Report format.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FormatArg {
    /// Lines for people (coloured on a terminal).
    Human,
    /// JSON: `{"version":1,"findings":[...],"stats":{...}}`.
    Json,
    /// SARIF 2.1.0 for code-scanning views.
    Sarif,
}

/// `mayfly scan ...`
#[derive(clap::Args)]
pub struct ScanArgs {
    /// Files or directories to scan (.gitignore is honoured); `-` reads standard input.
    paths: Vec<PathBuf>,
    /// Scan every blob of every commit reachable from any ref of this repository.
    #[arg(long, value_name = "REPO")]
    git: Vec<PathBuf>,
    /// Scan a `docker save` or OCI image tarball, layer by layer (deleted files included).
    #[arg(long, value_name = "TAR")]
    image: Vec<PathBuf>,
    /// Report format.
    #[arg(long, value_enum, default_value = "human")]
    format: FormatArg,
    /// Write the report to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Suppress the findings of an earlier `--format json` (or SARIF) report.
    #[arg(long, value_name = "FILE")]
    baseline: Option<PathBuf>,
    /// Scan files .gitignore and .ignore exclude too.
    #[arg(long)]
    no_ignore: bool,
    /// Your own rules (TOML, `[[rule]]` like the built-in ones; `disable = [ids]`).
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// Threads for walking trees (0: one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Print the secrets themselves. Only to a terminal: never into files or pipes.
    #[arg(long)]
    reveal: bool,
    /// No progress line on standard error.
    #[arg(long)]
    no_progress: bool,
    /// Enter every secret found into the key-debt inventory (by fingerprint only).
    #[arg(long, requires_all = ["owner", "expires"])]
    to_debt: bool,
    /// With --to-debt: who owns moving off these keys.
    #[arg(long, requires = "to_debt")]
    owner: Option<String>,
    /// With --to-debt: last day the keys may be used, YYYY-MM-DD (UTC).
    #[arg(long, value_name = "YYYY-MM-DD", requires = "to_debt")]
    expires: Option<String>,
    /// Config file (with --to-debt: where the inventory lives).
    #[arg(long, short)]
    config: Option<PathBuf>,
}

/// Run `mayfly scan`; errors become exit status 2.
pub fn run(args: ScanArgs) -> ExitCode {
    match scan(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mayfly scan: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

struct Collector<'a> {
    scanner: &'a Scanner,
    findings: Mutex<Vec<Finding>>,
    items: AtomicU64,
    bytes: AtomicU64,
    binary: AtomicU64,
    errors: AtomicU64,
}

impl Sink for Collector<'_> {
    fn item(&self, origin: &Origin, reader: &mut dyn std::io::Read) -> std::io::Result<()> {
        // `./x` and `x` are the same file: one fingerprint for both spellings.
        let path = origin.path.strip_prefix("./").unwrap_or(&origin.path);
        let loc = Location {
            path: path.to_string(),
            commit: origin.commit.clone(),
            layer: origin.layer.clone(),
        };
        let mut found = Vec::new();
        let outcome = self.scanner.scan_reader(reader, &mut |m| {
            if let Some(rule) = self.scanner.rule(m.rule) {
                found.push(Finding::new(rule, &loc, m.line, m.column, m.secret));
            }
        });
        match outcome {
            Ok(Outcome::Text(n)) => {
                self.items.fetch_add(1, Ordering::Relaxed);
                self.bytes.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Outcome::Binary) => {
                self.binary.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // What was read before the error is still reported.
                self.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("mayfly scan: {}: {e}", describe(origin));
            }
        }
        if !found.is_empty() {
            self.findings
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(found);
        }
        Ok(())
    }

    fn error(&self, what: &str, err: &SourceError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        eprintln!("mayfly scan: {what}: {err}");
    }
}

fn describe(o: &Origin) -> String {
    let mut s = o.path.clone();
    if let Some(c) = &o.commit {
        s.push_str(&format!(" (commit {c})"));
    }
    if let Some(l) = &o.layer {
        s.push_str(&format!(" (layer {l})"));
    }
    s
}

fn scan(args: ScanArgs) -> anyhow::Result<ExitCode> {
    let (paths, stdin_too, debt_until) = check_args(&args)?;
    let (scanner, baseline) = load_rules(&args)?;
    let collector = Collector {
        scanner: &scanner,
        findings: Mutex::new(Vec::new()),
        items: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        binary: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    };
    let started = Instant::now();
    run_sources(&args, &paths, stdin_too, &collector, started);
    let mut findings = collector
        .findings
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    findings.sort_by(|a, b| {
        (&a.path, a.line, a.column, &a.rule, &a.commit, &a.layer)
            .cmp(&(&b.path, b.line, b.column, &b.rule, &b.commit, &b.layer))
    });
    let before = findings.len();
    findings.retain(|f| !baseline.contains(&f.fingerprint));
    if args.reveal {
        findings.iter_mut().for_each(Finding::reveal);
    }
    let stats = Stats {
        items: collector.items.load(Ordering::Relaxed),
        bytes: collector.bytes.load(Ordering::Relaxed),
        binary_skipped: collector.binary.load(Ordering::Relaxed),
        errors: collector.errors.load(Ordering::Relaxed),
        baseline_suppressed: (before - findings.len()) as u64,
        seconds: started.elapsed().as_secs_f64(),
    };
    write_report(&args, &findings, &stats, &scanner)?;
    if let (Some(until), Some(owner)) = (debt_until, &args.owner) {
        to_debt(args.config.clone(), &findings, owner, until)?;
    }
    Ok(if stats.errors > 0 {
        ExitCode::from(2)
    } else if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The paths to walk, whether standard input is scanned too, and the debt expiry asked for.
fn check_args(args: &ScanArgs) -> anyhow::Result<(Vec<PathBuf>, bool, Option<i64>)> {
    let stdin_too = args.paths.iter().any(|p| p.as_os_str() == "-");
    let paths: Vec<PathBuf> = args
        .paths
        .iter()
        .filter(|p| p.as_os_str() != "-")
        .cloned()
        .collect();
    if paths.is_empty() && !stdin_too && args.git.is_empty() && args.image.is_empty() {
        bail!(
            "nothing to scan: give a path, `--git REPO`, `--image TAR`, or `-` for standard input"
        );
    }
    if args.reveal && (args.output.is_some() || !std::io::stdout().is_terminal()) {
        bail!(
            "--reveal prints secrets only to a terminal, never into a file or pipe: drop --reveal, or run without --output and redirection"
        );
    }
    let debt_until = match (&args.to_debt, &args.expires) {
        (true, Some(d)) => {
            let t = mayfly_store::end_of_day(d)?;
            if t <= debt_cmd::now() {
                bail!("--expires {d} is in the past: give the last day the keys may still be used");
            }
            Some(t)
        }
        _ => None,
    };
    Ok((paths, stdin_too, debt_until))
}

/// The scanner (built-in or user rules) and the baseline's fingerprints.
fn load_rules(args: &ScanArgs) -> anyhow::Result<(Scanner, HashSet<String>)> {
    let rules = match &args.rules {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read rules file {}", f.display()))?;
            RuleSet::with_user_rules(&text, &f.display().to_string())?
        }
        None => RuleSet::builtin()?,
    };
    let scanner = Scanner::new(rules)?;
    let baseline: HashSet<String> = match &args.baseline {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("cannot read baseline {}", f.display()))?;
            mayfly_scan::load_baseline(&text, &f.display().to_string())?
        }
        None => HashSet::new(),
    };
    Ok((scanner, baseline))
}

/// Feed every requested source through the collector (progress on a terminal).
fn run_sources(
    args: &ScanArgs,
    paths: &[PathBuf],
    stdin_too: bool,
    collector: &Collector<'_>,
    started: Instant,
) {
    let opts = WalkOptions {
        no_ignore: args.no_ignore,
        threads: args.threads,
        ..WalkOptions::default()
    };
    let done = AtomicBool::new(false);
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    std::thread::scope(|s| {
        if show_progress {
            s.spawn(|| progress(collector, &done, started));
        }
        let fatal = |what: String, r: Result<mayfly_scan_sources::Stats, SourceError>| {
            if let Err(e) = r {
                collector.errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("mayfly scan: {what}: {e}");
            }
        };
        if !paths.is_empty() {
            fatal(
                "scanning paths".into(),
                mayfly_scan_sources::walk(paths, &opts, collector),
            );
        }
        if stdin_too {
            fatal(
                "standard input".into(),
                mayfly_scan_sources::stdin(&opts, collector),
            );
        }
        for repo in &args.git {
            fatal(
                format!("git repository {}", repo.display()),
                mayfly_scan_sources::git(repo, &opts, collector),
            );
        }
        for tar in &args.image {
            fatal(
                format!("image {}", tar.display()),
                mayfly_scan_sources::image(tar, &opts, collector),
            );
        }
        done.store(true, Ordering::Relaxed);
    });
}

/// Write the report to `--output` or standard output (coloured on a terminal).
fn write_report(
    args: &ScanArgs,
    findings: &[Finding],
    stats: &Stats,
    scanner: &Scanner,
) -> anyhow::Result<()> {
    let format = match args.format {
        FormatArg::Human => Format::Human,
        FormatArg::Json => Format::Json,
        FormatArg::Sarif => Format::Sarif,
    };
    match &args.output {
        Some(file) => {
            let mut f = std::io::BufWriter::new(
                std::fs::File::create(file)
                    .with_context(|| format!("cannot write the report to {}", file.display()))?,
            );
            mayfly_scan::write(&mut f, format, findings, stats, scanner.rules(), false)?;
            f.flush()?;
        }
        None => {
            let stdout = std::io::stdout();
            let colour = stdout.is_terminal() && std::env::var_os("NO_COLOR").is_none();
            let mut out = std::io::BufWriter::new(stdout.lock());
            mayfly_scan::write(&mut out, format, findings, stats, scanner.rules(), colour)?;
            out.flush()?;
        }
    }

    Ok(())
}

fn progress(c: &Collector<'_>, done: &AtomicBool, started: Instant) {
    let mut err = std::io::stderr();
    while !done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        let mb = c.bytes.load(Ordering::Relaxed) as f64 / 1e6;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        let _ = write!(
            err,
            "\r\x1b[2Kscanning: {} items, {:.0} MB ({:.0} MB/s), {} findings",
            c.items.load(Ordering::Relaxed),
            mb,
            mb / secs,
            c.findings.lock().map(|f| f.len()).unwrap_or(0),
        );
    }
    let _ = write!(err, "\r\x1b[2K");
}

/// Enter each distinct secret into the key-debt inventory by its SHA-256; secrets already in
/// it (wrapped or by fingerprint) are left alone.
fn to_debt(
    config: Option<PathBuf>,
    findings: &[Finding],
    owner: &str,
    expires_at: i64,
) -> anyhow::Result<()> {
    if owner.trim().is_empty() {
        bail!("--owner is empty: name the team that will move off these keys");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let ctx = Ctx::open(config).await?;
        let kek = ctx.kek(true)?;
        let mut done = HashSet::new();
        let (mut added, mut known) = (0, 0);
        for f in findings {
            if !done.insert(f.secret_sha256.clone()) {
                continue;
            }
            let existing = ctx.store.debt_by_fingerprint(&f.secret_sha256).await?;
            if let Some(e) = existing.first() {
                known += 1;
                eprintln!(
                    "mayfly scan: {}:{} ({}) is already in the inventory as `{}`",
                    f.path, f.line, f.rule, e.name
                );
                continue;
            }
            let mut at = match (&f.commit, &f.layer) {
                (Some(c), _) => format!("{}@{}", f.path, c.get(..12).unwrap_or(c)),
                (None, Some(l)) => format!("{}@{}", f.path, l.get(..19).unwrap_or(l)),
                _ => f.path.clone(),
            };
            at.push_str(&format!(":{}", f.line));
            let entry = debt_cmd::new_entry(
                format!("scan-{}-{}", f.rule, f.secret_sha256.get(..10).unwrap_or("")),
                owner.to_string(),
                expires_at,
                Vec::new(),
                f.secret_sha256.clone(),
                false,
                Some(at),
            );
            if debt_cmd::enter(&ctx, kek.clone(), &entry, None).await? {
                added += 1;
            } else {
                known += 1;
            }
        }
        eprintln!(
            "mayfly scan: key-debt inventory: {added} added, {known} already there (see `mayfly debt list`)"
        );
        anyhow::Ok(())
    })
}
