//! Findings: where a secret is, its stable fingerprint, and how it is shown.

use serde::Serialize;
use zeroize::Zeroizing;

/// Where an item came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Path as walked, inside the repository tree or image layer; `-` for stdin.
    pub path: String,
    /// The commit that added the blob (git history scans).
    pub commit: Option<String>,
    /// The image layer holding the file (image scans).
    pub layer: Option<String>,
}

/// One secret found.
#[derive(Serialize)]
pub struct Finding {
    /// Rule id.
    pub rule: String,
    /// What the rule finds.
    pub description: String,
    /// Path (see [`Location::path`]).
    pub path: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based byte column; 0 when the line began too far back to know.
    pub column: u64,
    /// The commit that added it, for history scans.
    pub commit: Option<String>,
    /// The image layer, for image scans.
    pub layer: Option<String>,
    /// A short prefix and the length: never enough to use.
    pub masked: String,
    /// SHA-256 (hex) of the secret: what `mayfly debt add --fingerprint` takes.
    pub secret_sha256: String,
    /// Stable identity of the finding: SHA-256 over rule, path and the secret's SHA-256. A
    /// baseline lists these; line moves do not change it.
    pub fingerprint: String,
    /// The secret, only with `--reveal` on a terminal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(skip)]
    raw: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Finding")
            .field("rule", &self.rule)
            .field("path", &self.path)
            .field("line", &self.line)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl Drop for Finding {
    fn drop(&mut self) {
        if let Some(s) = self.secret.take() {
            drop(Zeroizing::new(s));
        }
    }
}

/// The fingerprint of a secret found by `rule` at `path`.
pub fn fingerprint(rule: &str, path: &str, secret_sha256: &str) -> String {
    let mut h = mayfly_crypto::Sha256::new();
    h.update(b"mayfly-scan-v1\0");
    h.update(rule.as_bytes());
    h.update(b"\0");
    h.update(path.as_bytes());
    h.update(b"\0");
    h.update(secret_sha256.as_bytes());
    mayfly_crypto::hex(&h.finish())
}

/// A prefix short enough to be useless to an attacker (at most 4 characters and a fifth of
/// the secret), an ellipsis and the length.
pub fn mask(secret: &[u8]) -> String {
    let n = (secret.len() / 5).min(4);
    let prefix: String = secret[..n]
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect();
    format!("{prefix}…({} chars)", secret.len())
}

impl Finding {
    /// Build a finding from a match.
    pub fn new(
        rule: &crate::Rule,
        loc: &Location,
        line: u64,
        column: u64,
        secret: Zeroizing<Vec<u8>>,
    ) -> Self {
        let secret_sha256 = mayfly_crypto::hex(&mayfly_crypto::sha256(&secret));
        Self {
            rule: rule.id.clone(),
            description: rule.description.clone(),
            path: loc.path.clone(),
            line,
            column,
            commit: loc.commit.clone(),
            layer: loc.layer.clone(),
            masked: mask(&secret),
            fingerprint: fingerprint(&rule.id, &loc.path, &secret_sha256),
            secret_sha256,
            secret: None,
            raw: secret,
        }
    }

    /// Put the secret itself into the output (`--reveal` on a terminal only).
    pub fn reveal(&mut self) {
        self.secret = Some(String::from_utf8_lossy(&self.raw).into_owned());
    }
}
