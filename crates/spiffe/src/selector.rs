//! Workload selectors (`unix:uid:1000`, `unix:sha256:<hex>`, ...) and entry matching.
//!
//! A registration entry lists selectors; the agent derives a workload's selectors from the
//! calling process. The entry matches when every one of its selectors is among the workload's.
//! Values are checked to be in their canonical form, so that equality is the right comparison
//! (an entry for `/usr/bin/../bin/app` would otherwise never match the path the kernel reports).

use std::fmt;
use std::str::FromStr;

/// Longest selector text accepted.
const MAX_LEN: usize = 4096;

/// The forms an error message lists.
const ACCEPTED: &str = "unix:uid:<number>, unix:gid:<number>, unix:user:<name>, \
                        unix:path:<absolute path>, unix:sha256:<64 lowercase hex digits>";

/// One fact about a workload process, or one requirement of a registration entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Selector {
    /// `unix:uid:<n>`: the process's user id.
    Uid(u32),
    /// `unix:gid:<n>`: the process's primary group id.
    Gid(u32),
    /// `unix:user:<name>`: the user name of the process's uid.
    User(String),
    /// `unix:path:<path>`: the canonical absolute path of the process's executable.
    Path(String),
    /// `unix:sha256:<hex>`: SHA-256 of the executable, lowercase hex.
    Sha256(String),
}

/// Why a selector does not parse. The message names the part that is wrong and lists the
/// accepted forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SelectorError {
    /// Not `<type>:<kind>:<value>`, or a type other than `unix`.
    #[error("selector `{0}`: expected `unix:<kind>:<value>`; accepted: {ACCEPTED}")]
    Shape(String),
    /// A `unix` kind this version does not know.
    #[error("selector `{text}`: unknown kind `{kind}`; accepted: {ACCEPTED}")]
    UnknownKind {
        /// The selector as given (shortened).
        text: String,
        /// The unknown kind.
        kind: String,
    },
    /// The value does not fit its kind.
    #[error("selector `{text}`: the value {reason}; accepted: {ACCEPTED}")]
    Value {
        /// The selector as given (shortened).
        text: String,
        /// What the value should look like.
        reason: &'static str,
    },
}

/// Selector text in error messages, bounded so hostile input cannot flood logs.
fn shown(s: &str) -> String {
    const SHOW: usize = 80;
    if s.chars().count() <= SHOW {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(SHOW).collect::<String>())
    }
}

impl Selector {
    /// The kind, as written after `unix:` (`uid`, `gid`, `user`, `path`, `sha256`).
    pub fn kind(&self) -> &'static str {
        match self {
            Selector::Uid(_) => "uid",
            Selector::Gid(_) => "gid",
            Selector::User(_) => "user",
            Selector::Path(_) => "path",
            Selector::Sha256(_) => "sha256",
        }
    }

    /// Parse every selector of a list (a registration entry's), stopping at the first error.
    pub fn parse_all<S: AsRef<str>>(texts: &[S]) -> Result<Vec<Selector>, SelectorError> {
        texts.iter().map(|t| t.as_ref().parse()).collect()
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.len() > MAX_LEN {
            return Err(SelectorError::Shape(shown(text)));
        }
        // The value may itself contain `:` (paths), so split twice only.
        let mut parts = text.splitn(3, ':');
        let (Some("unix"), Some(kind), Some(value)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SelectorError::Shape(shown(text)));
        };
        let bad = |reason| SelectorError::Value {
            text: shown(text),
            reason,
        };
        match kind {
            "uid" => parse_id(value)
                .map(Selector::Uid)
                .ok_or_else(|| bad("must be a decimal number 0-4294967295 without leading zeros")),
            "gid" => parse_id(value)
                .map(Selector::Gid)
                .ok_or_else(|| bad("must be a decimal number 0-4294967295 without leading zeros")),
            "user" => valid_user(value)
                .then(|| Selector::User(value.to_string()))
                .ok_or_else(|| {
                    bad("must be a user name: 1-256 letters, digits, `.`, `_`, `-` (not first), optional final `$`")
                }),
            "path" => valid_path(value)
                .then(|| Selector::Path(value.to_string()))
                .ok_or_else(|| {
                    bad("must be a canonical absolute path: starts with `/`, no `//`, `.` or `..` segments, no trailing `/`, no control characters")
                }),
            "sha256" => (value.len() == 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
            .then(|| Selector::Sha256(value.to_string()))
            .ok_or_else(|| bad("must be exactly 64 lowercase hex digits")),
            other => Err(SelectorError::UnknownKind {
                text: shown(text),
                kind: shown(other),
            }),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Uid(n) | Selector::Gid(n) => write!(f, "unix:{}:{n}", self.kind()),
            Selector::User(v) | Selector::Path(v) | Selector::Sha256(v) => {
                write!(f, "unix:{}:{v}", self.kind())
            }
        }
    }
}

impl serde::Serialize for Selector {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Selector {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

fn parse_id(v: &str) -> Option<u32> {
    let canonical =
        !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && (v == "0" || !v.starts_with('0'));
    canonical.then(|| v.parse().ok()).flatten()
}

fn valid_user(v: &str) -> bool {
    let body = v.strip_suffix('$').unwrap_or(v);
    !body.is_empty()
        && v.len() <= 256
        && !body.starts_with('-')
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_path(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('/') else {
        return false;
    };
    !rest.is_empty()
        && !v.chars().any(char::is_control)
        && rest
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
}

/// Whether a registration entry with `entry` selectors applies to a workload with `workload`
/// selectors: every entry selector must be among the workload's. An entry with no selectors
/// matches nothing (it would otherwise match every process).
pub fn matches(entry: &[Selector], workload: &[Selector]) -> bool {
    !entry.is_empty() && entry.iter().all(|s| workload.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn sel(s: &str) -> Selector {
        s.parse().unwrap()
    }

    #[test]
    fn round_trip() {
        for s in [
            "unix:uid:0",
            "unix:uid:1000",
            "unix:uid:4294967295",
            "unix:gid:100",
            "unix:user:www-data",
            "unix:user:machine$",
            "unix:path:/usr/bin/app",
            "unix:path:/opt/a:b/c d",
            &format!("unix:sha256:{HASH}"),
        ] {
            assert_eq!(sel(s).to_string(), s);
        }
        assert_eq!(sel("unix:uid:7"), Selector::Uid(7));
        let json = serde_json::to_string(&vec![sel("unix:gid:5")]).unwrap();
        assert_eq!(json, r#"["unix:gid:5"]"#);
        let back: Vec<Selector> = serde_json::from_str(&json).unwrap();
        assert_eq!(back, vec![Selector::Gid(5)]);
        assert!(serde_json::from_str::<Selector>(r#""unix:uid:x""#).is_err());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("uid:1000", "expected `unix:<kind>:<value>`"),
            ("k8s:ns:default", "expected `unix:<kind>:<value>`"),
            ("unix:uid", "expected `unix:<kind>:<value>`"),
            ("unix:pid:1", "unknown kind `pid`"),
            ("unix:uid:", "decimal number"),
            ("unix:uid:-1", "decimal number"),
            ("unix:uid:007", "decimal number"),
            ("unix:uid:4294967296", "decimal number"),
            ("unix:gid:+1", "decimal number"),
            ("unix:user:", "user name"),
            ("unix:user:-x", "user name"),
            ("unix:user:a b", "user name"),
            ("unix:path:bin/app", "canonical absolute path"),
            ("unix:path:/", "canonical absolute path"),
            ("unix:path:/usr//bin", "canonical absolute path"),
            ("unix:path:/usr/bin/", "canonical absolute path"),
            ("unix:path:/usr/../bin", "canonical absolute path"),
            ("unix:path:/a\nb", "canonical absolute path"),
            ("unix:sha256:abc", "64 lowercase hex"),
            (
                "unix:sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
                "64 lowercase hex",
            ),
        ];
        for (text, want) in cases {
            let err = text.parse::<Selector>().unwrap_err().to_string();
            assert!(err.contains(want), "{text}: {err}");
            assert!(
                err.contains("unix:sha256:<64 lowercase hex digits>"),
                "{err}"
            );
        }
        let long = format!("unix:path:/{}", "a".repeat(10_000));
        assert!(long.parse::<Selector>().unwrap_err().to_string().len() < 500);
    }

    #[test]
    fn matching_needs_every_entry_selector() {
        let workload = vec![
            sel("unix:uid:1000"),
            sel("unix:gid:1000"),
            sel("unix:user:app"),
            sel("unix:path:/usr/bin/app"),
            sel(&format!("unix:sha256:{HASH}")),
        ];
        assert!(matches(&[sel("unix:uid:1000")], &workload));
        assert!(matches(
            &[sel("unix:uid:1000"), sel("unix:path:/usr/bin/app")],
            &workload
        ));
        assert!(!matches(
            &[sel("unix:uid:1000"), sel("unix:gid:0")],
            &workload
        ));
        assert!(!matches(&[sel("unix:uid:1001")], &workload));
        // uid and gid with the same number are different selectors.
        assert!(!matches(&[sel("unix:gid:1000")], &[sel("unix:uid:1000")]));
        assert!(!matches(&[], &workload), "an empty entry matches nothing");
        assert!(!matches(&[sel("unix:uid:1000")], &[]));
        assert_eq!(
            Selector::parse_all(&["unix:uid:1", "unix:gid:2"]).unwrap(),
            vec![Selector::Uid(1), Selector::Gid(2)]
        );
        assert!(Selector::parse_all(&["unix:uid:1", "nope"]).is_err());
    }
}
