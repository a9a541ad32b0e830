//! Rules: data (TOML) compiled into regexes and a keyword pre-filter.

use std::collections::HashSet;

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;

use crate::ScanError;

/// The built-in rules, compiled into the binary.
pub const BUILTIN_RULES: &str = include_str!("rules.toml");

/// Largest regex program a rule may compile to (user rules included): bounds memory and time.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Lazy-DFA cache per rule and thread. Too small a cache is cleared over and over on the
/// generic rules (many states) and the search falls back to slow NFA simulation.
const DFA_CACHE_LIMIT: usize = 8 << 20;

/// A check run on a candidate secret after its regex matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Validate {
    /// GitHub-style tokens (`ghp_`, `npm_`...): the last 6 characters are the base62 CRC32 of
    /// the 30 before them.
    GithubCrc32,
    /// A JWT whose header and payload decode to JSON objects and whose header names an `alg`.
    Jwt,
    /// A Discord bot token: the first part is the base64 of a numeric user id.
    Discord,
    /// Base64 that decodes to exactly 64 bytes (Azure storage keys).
    #[serde(rename = "base64-64")]
    Base64Of64,
    /// A PEM-like block with a body long enough to be a key and no placeholder text.
    Pem,
    /// A password inside a URL: not a placeholder, not the user name, not a template variable.
    Password,
    /// A value assigned to a secret-looking name: not an identifier, path, hash name or UUID.
    Generic,
}

/// One rule as written in TOML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable identifier (`github-pat`): part of every fingerprint, so never renamed.
    pub id: String,
    /// What the rule finds, for reports.
    pub description: String,
    /// Keywords matched in any case.
    #[serde(default)]
    pub keywords: Vec<String>,
    /// Keywords matched exactly as written.
    #[serde(default)]
    pub keywords_exact: Vec<String>,
    /// The pattern; group `s` (or `s2`, `s3`... in alternatives) is the secret, else the whole
    /// match; `name`... the variable it is assigned to, `user` a URL's user name.
    pub regex: String,
    /// Minimum Shannon entropy of the secret, in bits per character.
    #[serde(default)]
    pub entropy: Option<f64>,
    /// A format check.
    #[serde(default)]
    pub validate: Option<Validate>,
    /// The secret may span lines (private keys).
    #[serde(default)]
    pub multiline: bool,
    /// Regexes on the secret that mark documented examples of this rule: such matches are
    /// dropped.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    rule: Vec<RuleSpec>,
    /// Built-in rule ids to turn off.
    #[serde(default)]
    disable: Vec<String>,
}

/// A compiled rule.
#[derive(Debug)]
pub struct Rule {
    /// Stable identifier.
    pub id: String,
    /// What it finds.
    pub description: String,
    pub(crate) regex: Regex,
    pub(crate) secret_groups: Vec<usize>,
    pub(crate) user_group: Option<usize>,
    pub(crate) host_group: Option<usize>,
    pub(crate) name_groups: Vec<usize>,
    pub(crate) entropy: Option<f64>,
    pub(crate) validate: Option<Validate>,
    pub(crate) multiline: bool,
    pub(crate) allow: Vec<Regex>,
    /// (keyword, must match exactly as written).
    pub(crate) keywords: Vec<(Vec<u8>, bool)>,
}

/// A set of compiled rules.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
}

impl RuleSet {
    /// The built-in rules.
    pub fn builtin() -> Result<Self, ScanError> {
        Self::from_toml(BUILTIN_RULES, "built-in rules", None)
    }

    /// The built-in rules plus (or overridden by, same id) the rules of a user's TOML file;
    /// the file's `disable = ["id", ...]` turns built-in rules off.
    pub fn with_user_rules(user_toml: &str, name: &str) -> Result<Self, ScanError> {
        let builtin = Self::parse(BUILTIN_RULES, "built-in rules")?;
        Self::from_toml(user_toml, name, Some(builtin))
    }

    fn parse(text: &str, name: &str) -> Result<RuleFile, ScanError> {
        toml::from_str(text).map_err(|e| ScanError::Rules {
            file: name.to_string(),
            msg: e.to_string(),
        })
    }

    fn from_toml(text: &str, name: &str, base: Option<RuleFile>) -> Result<Self, ScanError> {
        let file = Self::parse(text, name)?;
        let mut specs: Vec<RuleSpec> = match base {
            Some(b) => b.rule,
            None => Vec::new(),
        };
        for id in &file.disable {
            let before = specs.len();
            specs.retain(|r| &r.id != id);
            if specs.len() == before {
                return Err(ScanError::Rules {
                    file: name.to_string(),
                    msg: format!("`disable` names `{id}`, which is not a built-in rule"),
                });
            }
        }
        for r in file.rule {
            specs.retain(|s| s.id != r.id);
            specs.push(r);
        }
        let mut seen = HashSet::new();
        let mut rules = Vec::with_capacity(specs.len());
        for spec in specs {
            if !seen.insert(spec.id.clone()) {
                return Err(ScanError::Rules {
                    file: name.to_string(),
                    msg: format!("rule `{}` appears twice", spec.id),
                });
            }
            rules.push(compile(spec, name)?);
        }
        Ok(Self { rules })
    }

    /// The compiled rules, in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

fn compile(spec: RuleSpec, file: &str) -> Result<Rule, ScanError> {
    let err = |msg: String| ScanError::Rules {
        file: file.to_string(),
        msg: format!("rule `{}`: {msg}", spec.id),
    };
    if spec.id.is_empty()
        || !spec
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("ids are lowercase letters, digits and `-`".into()));
    }
    let build = |pattern: &str| {
        RegexBuilder::new(pattern)
            .unicode(false)
            .multi_line(true)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(DFA_CACHE_LIMIT)
            .build()
    };
    let regex = build(&spec.regex).map_err(|e| err(format!("regex does not compile: {e}")))?;
    let mut secret_groups = Vec::new();
    let mut user_group = None;
    let mut host_group = None;
    let mut name_groups = Vec::new();
    for (i, n) in regex.capture_names().enumerate() {
        // `s`, `s2`, `s3`...: the secret of each alternative; `name`, `name2`...: its name.
        let numbered = |n: &str, base: &str| {
            n.strip_prefix(base)
                .is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit()))
        };
        match n {
            Some("user") => user_group = Some(i),
            Some("host") => host_group = Some(i),
            Some(n) if numbered(n, "s") => secret_groups.push(i),
            Some(n) if numbered(n, "name") => name_groups.push(i),
            _ => {}
        }
    }
    // Case-insensitive keywords are matched lowercased; exact ones are checked byte for byte
    // after the (case-insensitive) pre-filter hits.
    let mut keywords: Vec<(Vec<u8>, bool)> = Vec::new();
    for k in &spec.keywords {
        keywords.push((k.to_ascii_lowercase().into_bytes(), false));
    }
    for k in &spec.keywords_exact {
        keywords.push((k.as_bytes().to_vec(), true));
    }
    if keywords.is_empty() || keywords.iter().any(|(k, _)| k.len() < 2) {
        return Err(err(
            "give at least one keyword of 2 or more characters (`keywords` or `keywords_exact`): \
             rules run only near their keywords"
                .into(),
        ));
    }
    let allow = spec
        .allow
        .iter()
        .map(|a| build(a).map_err(|e| err(format!("allow regex does not compile: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rule {
        id: spec.id,
        description: spec.description,
        regex,
        secret_groups,
        user_group,
        host_group,
        name_groups,
        entropy: spec.entropy,
        validate: spec.validate,
        multiline: spec.multiline,
        allow,
        keywords,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_rules_compile_and_number_at_least_sixty() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.rules().len() >= 60, "{}", set.rules().len());
    }

    #[test]
    fn user_rules_add_override_and_disable() {
        let set = RuleSet::with_user_rules(
            r#"
            disable = ["twilio-api-key"]
            [[rule]]
            id = "acme-key"
            description = "ACME internal key"
            keywords_exact = ["acme_"]
            regex = '\b(?P<s>acme_[a-z0-9]{20})\b'
            "#,
            "mine.toml",
        )
        .unwrap();
        let ids: Vec<_> = set.rules().iter().map(|r| r.id.as_str()).collect();
        assert!(ids.contains(&"acme-key"));
        assert!(!ids.contains(&"twilio-api-key"));
        let e = RuleSet::with_user_rules("disable = [\"nope\"]", "mine.toml").unwrap_err();
        assert!(e.to_string().contains("not a built-in rule"), "{e}");
        let e = RuleSet::with_user_rules(
            "[[rule]]\nid = \"x\"\ndescription = \"d\"\nregex = \"(\"\nkeywords = [\"ab\"]",
            "mine.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not compile"), "{e}");
        let e = RuleSet::with_user_rules(
            "[[rule]]\nid = \"x\"\ndescription = \"d\"\nregex = \"a\"",
            "mine.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("keyword"), "{e}");
    }
}
