//! Reports: human (optionally coloured), JSON and SARIF 2.1.0; baselines.

use std::collections::HashSet;
use std::io::{self, Write};

use serde::Serialize;
use serde_json::json;

use crate::{Finding, Rule, ScanError};

/// Totals of a scan, printed with every report.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    /// Items (files, blobs, layer members) scanned as text.
    pub items: u64,
    /// Bytes scanned.
    pub bytes: u64,
    /// Items skipped as binary.
    pub binary_skipped: u64,
    /// Items that could not be read.
    pub errors: u64,
    /// Findings dropped by the baseline.
    pub baseline_suppressed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Lines for people.
    Human,
    /// `{"version":1,"findings":[...],"stats":{...}}`.
    Json,
    /// SARIF 2.1.0, for code-scanning views.
    Sarif,
}

/// Write the report.
pub fn write(
    out: &mut dyn Write,
    format: Format,
    findings: &[Finding],
    stats: &Stats,
    rules: &[Rule],
    colour: bool,
) -> io::Result<()> {
    match format {
        Format::Human => human(out, findings, stats, colour),
        Format::Json => {
            serde_json::to_writer_pretty(
                &mut *out,
                &json!({"version": 1, "findings": findings, "stats": stats}),
            )?;
            writeln!(out)
        }
        Format::Sarif => {
            serde_json::to_writer_pretty(&mut *out, &sarif(findings, rules))?;
            writeln!(out)
        }
    }
}

fn human(out: &mut dyn Write, findings: &[Finding], stats: &Stats, colour: bool) -> io::Result<()> {
    let (red, bold, dim, reset) = if colour {
        ("\x1b[31m", "\x1b[1m", "\x1b[2m", "\x1b[0m")
    } else {
        ("", "", "", "")
    };
    for f in findings {
        let col = if f.column > 0 {
            format!(":{}", f.column)
        } else {
            String::new()
        };
        write!(
            out,
            "{bold}{}:{}{col}{reset}  {red}{}{reset}  {}",
            f.path, f.line, f.rule, f.masked
        )?;
        if let Some(c) = &f.commit {
            write!(out, "  {dim}commit {}{reset}", c.get(..12).unwrap_or(c))?;
        }
        if let Some(l) = &f.layer {
            write!(out, "  {dim}layer {}{reset}", l.get(..19).unwrap_or(l))?;
        }
        if let Some(s) = &f.secret {
            write!(out, "  {red}{s}{reset}")?;
        }
        writeln!(
            out,
            "  {dim}fp {}{reset}",
            f.fingerprint.get(..16).unwrap_or("")
        )?;
    }
    let mb = stats.bytes as f64 / 1e6;
    writeln!(
        out,
        "{} finding{} in {} item{} ({:.1} MB in {:.2} s; {} binary skipped{}{})",
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        stats.items,
        if stats.items == 1 { "" } else { "s" },
        mb,
        stats.seconds,
        stats.binary_skipped,
        if stats.baseline_suppressed > 0 {
            format!("; {} suppressed by the baseline", stats.baseline_suppressed)
        } else {
            String::new()
        },
        if stats.errors > 0 {
            format!("; {} could not be read", stats.errors)
        } else {
            String::new()
        },
    )
}

fn sarif(findings: &[Finding], rules: &[Rule]) -> serde_json::Value {
    let rule_index = |id: &str| rules.iter().position(|r| r.id == id);
    let results: Vec<_> = findings
        .iter()
        .map(|f| {
            let mut region = json!({"startLine": f.line.max(1)});
            if f.column > 0 {
                region["startColumn"] = json!(f.column);
            }
            let mut r = json!({
                "ruleId": f.rule,
                "level": "error",
                "message": {"text": format!("{} ({})", f.description, f.masked)},
                "locations": [{"physicalLocation": {
                    "artifactLocation": {"uri": f.path},
                    "region": region,
                }}],
                "partialFingerprints": {"mayfly/v1": f.fingerprint},
                "properties": {"secretSha256": f.secret_sha256},
            });
            if let Some(i) = rule_index(&f.rule) {
                r["ruleIndex"] = json!(i);
            }
            if let Some(c) = &f.commit {
                r["properties"]["commit"] = json!(c);
            }
            if let Some(l) = &f.layer {
                r["properties"]["layer"] = json!(l);
            }
            r
        })
        .collect();
    let rules: Vec<_> = rules
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.id,
                "shortDescription": {"text": r.description},
                "defaultConfiguration": {"level": "error"},
            })
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "mayfly scan",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/mayfly/mayfly",
                "rules": rules,
            }},
            "results": results,
        }],
    })
}

/// The fingerprints of a baseline: a file written by `--format json` (or SARIF).
pub fn load_baseline(text: &str, name: &str) -> Result<HashSet<String>, ScanError> {
    let bad = |msg: &str| ScanError::Baseline {
        file: name.to_string(),
        msg: msg.to_string(),
    };
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let mut set = HashSet::new();
    if let Some(list) = v.get("findings").and_then(|f| f.as_array()) {
        for f in list {
            let fp = f
                .get("fingerprint")
                .and_then(|x| x.as_str())
                .ok_or_else(|| bad("a finding has no `fingerprint`"))?;
            set.insert(fp.to_string());
        }
        return Ok(set);
    }
    if let Some(runs) = v.get("runs").and_then(|r| r.as_array()) {
        for run in runs {
            for r in run
                .get("results")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                if let Some(fp) = r
                    .pointer("/partialFingerprints/mayfly~1v1")
                    .and_then(|x| x.as_str())
                {
                    set.insert(fp.to_string());
                }
            }
        }
        return Ok(set);
    }
    Err(bad(
        "neither a `mayfly scan --format json` report (`findings`) nor SARIF (`runs`): write one with `mayfly scan --format json ... > baseline.json`",
    ))
}
