//! Where the JSON-lines copy of the log goes, and the anchors written into it.

use std::io::Write;

use mayfly_crypto::Kek;

/// Where the JSON-lines copy goes.
#[derive(Debug)]
pub enum AuditSink {
    /// Nowhere.
    Off,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// An append-only file.
    File(std::fs::File),
}

/// Write the anchor owed for the newest head, if any (an idle log, or the committer stopping).
pub(super) fn anchor_now(
    anchoring: &mut crate::anchor::Anchoring,
    kek: &Kek,
    sink: &mut AuditSink,
    now: i64,
) {
    if matches!(sink, AuditSink::Off) {
        return;
    }
    if let Some(line) = anchoring.take(kek, now)
        && let Err(e) = write_lines(sink, &[line])
    {
        tracing::error!(error = %e, "cannot write an audit anchor to the audit output");
    }
}

pub(super) fn write_lines(sink: &mut AuditSink, lines: &[String]) -> std::io::Result<()> {
    fn put(w: &mut dyn Write, lines: &[String]) -> std::io::Result<()> {
        for l in lines {
            w.write_all(l.as_bytes())?;
            w.write_all(b"\n")?;
        }
        w.flush()
    }
    match sink {
        AuditSink::Off => Ok(()),
        AuditSink::Stdout => put(&mut std::io::stdout().lock(), lines),
        AuditSink::Stderr => put(&mut std::io::stderr().lock(), lines),
        AuditSink::File(f) => put(f, lines),
    }
}
