//! A request path in normal form: the only form the proxy's router, a route's policy and its
//! forwarder take, so that whatever a caller spells, the policy decides on the path the
//! upstream is then sent, byte for byte (and a route prefix in config is written in it).
//!
//! Normal form (RFC 3986 §6.2.2, plus merged slashes):
//! - percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded (`%61` is `a`,
//!   `%2e` is `.`), and the hex digits of every other escape are upper case (`%3b` is `%3B`);
//! - `.` and `..` segments, literal or encoded, are removed (§5.2.4; `..` never climbs above
//!   `/`);
//! - runs of `/` are one `/` (an empty segment is no segment, as most upstreams read it).
//!
//! Refused outright, because upstreams disagree on what they mean: an encoded `/` (`%2F`) or
//! `\` (`%5C`), a raw `\`, a NUL (`%00`), a `%` not followed by two hex digits, escapes that do
//! not decode to UTF-8, a path not starting with `/`, and a `.` or `..` segment with a `;`
//! parameter (`..;/`, which some servers read as `..`).
//!
//! Letter case in the path is kept: paths are case-sensitive (RFC 3986 §6.2.2.1), so
//! `/Invoices` and `/invoices` are different paths to the proxy, as to most upstreams.
//!
//! A path already in normal form is taken as it is, without a copy ([`NormalPath::new`] checks
//! it in one pass): the usual call costs no allocation.

use std::borrow::Cow;

/// Why a request path is refused (400 `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    /// `%2F`: some upstreams decode it into a separator, others keep it in the segment.
    #[error(
        "the path holds an encoded `/` (%2F), which upstreams read in different ways; send the path without it"
    )]
    EncodedSlash,
    /// `%5C`: some upstreams read `\` as `/`.
    #[error(
        "the path holds an encoded `\\` (%5C), which some upstreams read as `/`; send the path without it"
    )]
    EncodedBackslash,
    /// A raw `\`.
    #[error("the path holds a `\\`, which some upstreams read as `/`; send the path without it")]
    Backslash,
    /// A NUL byte, raw or `%00`.
    #[error("the path holds a NUL byte (%00); send the path without it")]
    Nul,
    /// A `%` not followed by two hex digits.
    #[error("the path holds a `%` not followed by two hex digits; encode a literal `%` as %25")]
    BadEscape,
    /// Percent-escapes that do not decode to UTF-8.
    #[error("the path is not UTF-8 once percent-decoded")]
    NotUtf8,
    /// The path does not start with `/` (e.g. `OPTIONS *`).
    #[error("the path does not start with `/`")]
    NotAbsolute,
    /// A `.` or `..` segment with a `;` parameter, which some servers read as the dot segment.
    #[error(
        "the path holds a `.` or `..` segment with a `;` parameter, which some upstreams read as a dot segment; send a normalised path"
    )]
    DotParameter,
}

impl PathError {
    /// The audit event's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            PathError::EncodedSlash => "path_encoded_slash",
            PathError::EncodedBackslash => "path_encoded_backslash",
            PathError::Backslash => "path_backslash",
            PathError::Nul => "path_nul",
            PathError::BadEscape => "path_bad_escape",
            PathError::NotUtf8 => "path_not_utf8",
            PathError::NotAbsolute => "path_not_absolute",
            PathError::DotParameter => "path_dot_parameter",
        }
    }
}

/// A request path in normal form (see the module), or the remainder of one below a route's
/// prefix (which starts with `/`, or is empty when the path is the prefix itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath<'a>(Cow<'a, str>);

impl<'a> NormalPath<'a> {
    /// Normalise a request path (as on the wire: percent-encoded), or refuse it.
    pub fn new(raw: &'a str) -> Result<Self, PathError> {
        if is_normal(raw) {
            Ok(Self(Cow::Borrowed(raw)))
        } else {
            normalise(raw).map(|s| {
                if s == raw {
                    Self(Cow::Borrowed(raw))
                } else {
                    Self(Cow::Owned(s))
                }
            })
        }
    }

    /// The path, percent-encoded: what the upstream is sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether normalising changed the path (it was spelled some other way).
    pub fn rewritten(&self) -> bool {
        matches!(self.0, Cow::Owned(_))
    }

    /// The remainder below byte `at` (the end of a route's prefix), normal as the whole is;
    /// `None` unless `at` is at a segment boundary (a `/`, or the end).
    pub fn suffix(&self, at: usize) -> Option<NormalPath<'_>> {
        let rest = self.0.get(at..)?;
        (rest.is_empty() || rest.starts_with('/')).then_some(NormalPath(Cow::Borrowed(rest)))
    }

    /// For an upstream that ignores case: ASCII letters lower-cased (not the hex digits of
    /// escapes, which stay upper case), so that `/Admin` is `/admin` to a policy as to the
    /// upstream. No copy when there is nothing to lower.
    pub fn into_ascii_lowercase(self) -> Self {
        let b = self.0.as_bytes();
        let mut i = 0;
        let mut upper = false;
        while i < b.len() {
            if b[i] == b'%' {
                i += 3;
                continue;
            }
            upper |= b[i].is_ascii_uppercase();
            i += 1;
        }
        if !upper {
            return self;
        }
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                out.extend_from_slice(b.get(i..i + 3).unwrap_or(&b[i..]));
                i += 3;
                continue;
            }
            out.push(b[i].to_ascii_lowercase());
            i += 1;
        }
        // Only ASCII letters changed: still UTF-8.
        match String::from_utf8(out) {
            Ok(s) => NormalPath(Cow::Owned(s)),
            Err(_) => self,
        }
    }

    /// The path as a route policy sees it (`context.path`): percent-decoded, starting with
    /// `/`. Decoding cannot add a segment or a dot segment: `%2F` is refused and `%2E` is
    /// already decoded, so the decided path has the same segments as the forwarded one.
    pub fn decoded(&self) -> Cow<'_, str> {
        // UTF-8 was checked when the path was made.
        let d = percent_encoding::percent_decode_str(&self.0).decode_utf8_lossy();
        if d.starts_with('/') {
            d
        } else {
            Cow::Owned(format!("/{d}"))
        }
    }
}

/// RFC 3986 `unreserved`.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn upper_hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `.` or `..`, or either with a `;` parameter (`..;x`).
fn dot_segment(seg: &str) -> Option<bool> {
    let (head, param) = match seg.split_once(';') {
        Some((h, _)) => (h, true),
        None => (seg, false),
    };
    matches!(head, "." | "..").then_some(param)
}

/// Whether `raw` is its own normal form (so [`normalise`] would return it unchanged), in one
/// pass and without allocating. `false` sends the path to [`normalise`], which also finds
/// what to refuse.
fn is_normal(raw: &str) -> bool {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' | 0 => return false,
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(upper_hex),
                    b.get(i + 2).copied().and_then(upper_hex),
                ) else {
                    return false;
                };
                let v = (h << 4) | l;
                // Non-ASCII escapes go the long way, which checks their UTF-8.
                if is_unreserved(v) || matches!(v, b'/' | b'\\' | 0) || v >= 0x80 {
                    return false;
                }
                i += 3;
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'/') => return false,
            _ => {}
        }
        i += 1;
    }
    !raw[1..].split('/').any(|s| dot_segment(s).is_some())
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// The normal form of `raw` (see the module), or why it is refused.
fn normalise(raw: &str) -> Result<String, PathError> {
    let b = raw.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // 1. Escapes: unreserved decoded, the rest upper-cased; refusals.
    let mut bytes = Vec::with_capacity(b.len());
    let mut high = false;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::BadEscape);
                };
                let v = (h << 4) | l;
                match v {
                    b'/' => return Err(PathError::EncodedSlash),
                    b'\\' => return Err(PathError::EncodedBackslash),
                    0 => return Err(PathError::Nul),
                    _ if is_unreserved(v) => bytes.push(v),
                    _ => {
                        high |= v >= 0x80;
                        bytes.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
                    }
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            c => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    // Only ASCII was put in for ASCII escapes: still UTF-8.
    let decoded = String::from_utf8(bytes).map_err(|_| PathError::NotUtf8)?;
    if high
        && percent_encoding::percent_decode_str(&decoded)
            .decode_utf8()
            .is_err()
    {
        return Err(PathError::NotUtf8);
    }
    // 2. Dot segments (RFC 3986 §5.2.4) and empty segments, on whole segments.
    let mut out = String::with_capacity(decoded.len());
    // Where each kept segment starts in `out`, so that `..` can cut it off.
    let mut starts: Vec<usize> = Vec::new();
    let mut trailing = false;
    let mut segs = decoded[1..].split('/').peekable();
    while let Some(seg) = segs.next() {
        let last = segs.peek().is_none();
        match dot_segment(seg) {
            Some(true) => return Err(PathError::DotParameter),
            Some(false) => {
                if seg == ".."
                    && let Some(s) = starts.pop()
                {
                    out.truncate(s);
                }
                trailing = last;
            }
            None if seg.is_empty() => trailing = last,
            None => {
                starts.push(out.len());
                out.push('/');
                out.push_str(seg);
            }
        }
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, PathError> {
        NormalPath::new(p).map(|n| n.as_str().to_string())
    }

    #[test]
    fn normal_forms() {
        for (raw, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a/b/", "/a/b/"),
            ("//a///b//", "/a/b/"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/../../a", "/a"),
            ("/..", "/"),
            ("/a/%2e%2E/b", "/b"),
            ("/a/%2E/b", "/a/b"),
            ("/a/.%2e/b", "/b"),
            ("/%61dmin", "/admin"),
            ("/%7e%5f%2d", "/~_-"),
            ("/a%3bb", "/a%3Bb"),
            ("/a%20b", "/a%20b"),
            ("/caf%c3%a9", "/caf%C3%A9"),
            ("/a..b/.x/..y", "/a..b/.x/..y"),
            ("/a;b/c", "/a;b/c"),
            ("/Invoices", "/Invoices"),
            ("/é", "/é"),
        ] {
            assert_eq!(norm(raw).as_deref(), Ok(want), "{raw}");
            // Idempotent; the normal form is kept, and found so without a copy when ASCII.
            let n = NormalPath::new(want).unwrap();
            assert!(!n.rewritten(), "{want}");
            assert_eq!(n.as_str(), want);
            assert_eq!(is_normal(want), !want.contains("%C"), "{want}");
        }
        for (raw, e) in [
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedBackslash),
            ("/a\\b", PathError::Backslash),
            ("/a%00", PathError::Nul),
            ("/a\0", PathError::Nul),
            ("/a%zz", PathError::BadEscape),
            ("/a%2", PathError::BadEscape),
            ("/a%", PathError::BadEscape),
            ("/a%ff", PathError::NotUtf8),
            ("/a%c0%af", PathError::NotUtf8),
            ("*", PathError::NotAbsolute),
            ("a/b", PathError::NotAbsolute),
            ("/a/..;/b", PathError::DotParameter),
            ("/a/.;x/b", PathError::DotParameter),
            ("/a/%2e%2e;/b", PathError::DotParameter),
        ] {
            assert_eq!(norm(raw), Err(e), "{raw}");
        }
    }

    #[test]
    fn the_policy_sees_the_decoded_path() {
        let n = NormalPath::new("/caf%C3%A9/a%3Bb%20c").unwrap();
        assert_eq!(n.decoded(), "/café/a;b c");
        assert_eq!(n.suffix(n.as_str().len()).unwrap().decoded(), "/");
        let n = NormalPath::new("/up/x").unwrap();
        assert_eq!(n.suffix(3).unwrap().as_str(), "/x");
        assert_eq!(n.suffix(2), None);
        let n = NormalPath::new("/Invoices/%c3%89/ADMIN%3b").unwrap();
        assert_eq!(
            n.into_ascii_lowercase().as_str(),
            "/invoices/%C3%89/admin%3B"
        );
        let n = NormalPath::new("/a/%3B").unwrap().into_ascii_lowercase();
        assert!(!n.rewritten());
        assert_eq!(n.suffix(9), None);
    }

    /// What every normal form holds (the fuzz target `path` checks the same on any input).
    fn check(raw: &str) {
        let Ok(n) = NormalPath::new(raw) else {
            assert!(!is_normal(raw), "{raw:?}");
            return;
        };
        let s = n.as_str();
        assert!(
            s.starts_with('/') && !s.contains("//") && !s.contains('\\'),
            "{raw:?}"
        );
        assert!(
            s[1..].split('/').all(|g| dot_segment(g).is_none()),
            "{raw:?}"
        );
        assert_eq!(
            NormalPath::new(s).as_ref().map(NormalPath::rewritten),
            Ok(false)
        );
        assert_eq!(is_normal(raw), !n.rewritten() && is_normal(s), "{raw:?}");
        if !n.rewritten() {
            assert_eq!(s, raw);
        }
        for (i, _) in s.match_indices('%') {
            let v = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap();
            assert!(s[i + 1..i + 3].bytes().all(|c| !c.is_ascii_lowercase()));
            assert!(
                !is_unreserved(v) && !matches!(v, b'/' | b'\\' | 0),
                "{raw:?}"
            );
        }
        let d = n.decoded();
        assert_eq!(d.split('/').count(), s.split('/').count(), "{raw:?}");
        assert!(
            d[1..].split('/').all(|g| !matches!(g, "." | "..")),
            "{raw:?}"
        );
        assert!(!d.contains(['\\', '\0']), "{raw:?}");
    }

    /// Every path of up to four pieces over an alphabet of the tricky ones.
    #[test]
    fn normal_forms_hold_their_invariants() {
        let alphabet = [
            "/", ".", "%2e", "%2E", "%2f", "%5C", "%", "%2", "2", "e", "a", "%61", "%3b", ";",
            "\\", "%00", "%C3", "%a9", "é",
        ];
        let mut paths = vec![String::from("/")];
        for _ in 0..4 {
            let mut next = Vec::new();
            for p in &paths {
                for a in alphabet {
                    next.push(format!("{p}{a}"));
                }
            }
            paths.extend(next);
        }
        for p in &paths {
            check(p);
        }
    }
}
