//! Small text helpers: Cedar string literals, source positions, durations.

use std::fmt::Write as _;

/// `s` as a Cedar string literal (policy and schema syntax), quotes included.
pub(crate) fn cedar_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// 1-based (line, column) of a byte offset in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// The first labelled position of a miette diagnostic, as (line, column) in `text`.
pub(crate) fn diag_position(diag: &dyn miette::Diagnostic, text: &str) -> Option<(usize, usize)> {
    let mut labels = diag.labels()?;
    let first = labels.next()?;
    Some(line_col(text, first.offset()))
}

/// A diagnostic's message with its help, on one line.
pub(crate) fn diag_message(diag: &dyn miette::Diagnostic) -> String {
    let mut msg = diag.to_string();
    if let Some(help) = diag.help() {
        let _ = write!(msg, " (help: {help})");
    }
    msg
}

/// Parse a lifetime such as `90s`, `10m`, `1h` or `1h 30m` into whole seconds (at least one).
pub(crate) fn parse_ttl(value: &str) -> Result<i64, String> {
    let d =
        humantime::parse_duration(value.trim()).map_err(|e| format!("is not a duration ({e})"))?;
    if d.subsec_nanos() != 0 {
        return Err("is not a whole number of seconds".into());
    }
    let secs = i64::try_from(d.as_secs()).map_err(|_| "is too long".to_string())?;
    if secs == 0 {
        return Err("is zero".into());
    }
    Ok(secs)
}

/// Seconds as a short human duration (`600` -> `10m`).
pub(crate) fn format_ttl(secs: i64) -> String {
    let d = std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    humantime::format_duration(d).to_string().replace(' ', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(cedar_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(cedar_string("x\ny\u{1}"), r#""x\ny\u{1}""#);
    }

    #[test]
    fn positions_are_one_based() {
        assert_eq!(line_col("ab\ncd", 0), (1, 1));
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
    }

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("10m"), Ok(600));
        assert_eq!(parse_ttl("1h 30m"), Ok(5400));
        assert_eq!(parse_ttl("90s"), Ok(90));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("ten minutes").is_err());
        assert!(parse_ttl("1.5s").is_err());
        assert_eq!(format_ttl(600), "10m");
        assert_eq!(format_ttl(5400), "1h30m");
    }
}
