//! Checks on candidate secrets: entropy, checksums, structure, placeholders.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// Shannon entropy of `s`, in bits per byte.
pub fn entropy(s: &[u8]) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in s {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

/// Words that mark documentation, placeholders and redactions rather than live secrets.
const PLACEHOLDER_WORDS: &[&[u8]] = &[
    b"example",
    b"xxxxx",
    b"placeholder",
    b"your_",
    b"your-",
    b"yourkey",
    b"yourtoken",
    b"yoursecret",
    b"dummy",
    b"sample",
    b"changeme",
    b"change_me",
    b"redacted",
    b"insert_",
    b"insert-",
    b"replace_",
    b"replace-",
    b"<",
    b">",
    b"${",
    b"{{",
    b"...",
    b"*****",
    b"#####",
];

/// True when `s` carries a placeholder word (case-insensitive).
pub fn is_placeholder(s: &[u8]) -> bool {
    PLACEHOLDER_WORDS
        .iter()
        .any(|w| s.windows(w.len()).any(|win| win.eq_ignore_ascii_case(w)))
}

/// True when `s` has a run of `n` or more identical bytes (`ghp_0000000000...`).
pub fn has_run(s: &[u8], n: usize) -> bool {
    let mut run = 0;
    let mut prev = None;
    for &b in s {
        if Some(b) == prev {
            run += 1;
        } else {
            run = 1;
            prev = Some(b);
        }
        if run >= n {
            return true;
        }
    }
    false
}

const B62_UPPER_FIRST: &[u8; 62] =
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const B62_LOWER_FIRST: &[u8; 62] =
    b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn base62(mut n: u32, alphabet: &[u8; 62]) -> [u8; 6] {
    let mut out = [b'0'; 6];
    for slot in out.iter_mut().rev() {
        *slot = alphabet[(n % 62) as usize];
        n /= 62;
    }
    out
}

/// GitHub-style token (`ghp_` + 30 random + 6 checksum characters): the checksum is the CRC32
/// of the 30 random characters, base62, zero-padded. Published encoders disagree on the order
/// of the base62 alphabet (GitHub's vs. Go's `big.Int`), so either is accepted. Tokens longer
/// than 36 characters after the prefix (newer installation and refresh tokens) carry no such
/// checksum and pass on entropy alone.
pub fn github_crc32(token: &[u8]) -> bool {
    let Some(us) = token.iter().position(|&b| b == b'_') else {
        return false;
    };
    let body = &token[us + 1..];
    if body.len() != 36 {
        return body.len() > 36 && entropy(body) >= 4.0;
    }
    let (random, check) = body.split_at(30);
    let crc = crc32fast::hash(random);
    check == base62(crc, B62_UPPER_FIRST) || check == base62(crc, B62_LOWER_FIRST)
}

/// A JWT: header and payload are base64url JSON objects, the header names an algorithm.
pub fn jwt(token: &[u8]) -> bool {
    let mut parts = token.split(|&b| b == b'.');
    let (Some(h), Some(p)) = (parts.next(), parts.next()) else {
        return false;
    };
    let json = |part: &[u8]| -> Option<serde_json::Map<String, serde_json::Value>> {
        let raw = URL_SAFE_NO_PAD.decode(part).ok()?;
        match serde_json::from_slice(&raw).ok()? {
            serde_json::Value::Object(m) => Some(m),
            _ => None,
        }
    };
    let Some(header) = json(h) else {
        return false;
    };
    if !header.get("alg").is_some_and(|a| a.is_string()) {
        return false;
    }
    let Some(payload) = json(p) else {
        return false;
    };
    // jwt.io's documented example, reproduced in countless tutorials.
    let example = payload.get("sub").and_then(|s| s.as_str()) == Some("1234567890")
        && payload.get("name").and_then(|s| s.as_str()) == Some("John Doe");
    !example
}

/// A Discord bot token: its first part is the unpadded base64 of a numeric user id.
pub fn discord(token: &[u8]) -> bool {
    let Some(first) = token.split(|&b| b == b'.').next() else {
        return false;
    };
    let trimmed: Vec<u8> = first.iter().copied().filter(|&b| b != b'=').collect();
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(&trimmed)
        .or_else(|_| URL_SAFE_NO_PAD.decode(&trimmed))
        .is_ok_and(|id| (15..=21).contains(&id.len()) && id.iter().all(u8::is_ascii_digit))
}

/// Standard base64 that decodes to exactly `n` bytes.
pub fn base64_len(s: &[u8], n: usize) -> bool {
    STANDARD.decode(s).is_ok_and(|d| d.len() == n)
}

/// A PEM-like private key block: enough base64 in the body to be a key.
pub fn pem(block: &[u8]) -> bool {
    let body: usize = block
        .split(|&b| b == b'\n' || b == b'\\')
        .filter(|l| !l.starts_with(b"-----") && !l.contains(&b':'))
        .map(|l| {
            l.iter()
                .filter(|b| b.is_ascii_alphanumeric() || **b == b'+' || **b == b'/')
                .count()
        })
        .sum();
    body >= 64
}

const PLACEHOLDER_PASSWORDS: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"pass",
    b"pwd",
    b"secret",
    b"changeme",
    b"admin",
    b"root",
    b"guest",
    b"test",
    b"user",
    b"username",
    b"foo",
    b"bar",
    b"foobar",
    b"pw",
    b"mypassword",
    b"yourpassword",
    b"db_password",
    b"token",
    b"opensesame",
    b"open%20sesame",
];

/// Hosts reserved for documentation (RFC 2606, RFC 6761).
fn documentation_host(host: &[u8]) -> bool {
    let h = host.to_ascii_lowercase();
    [&b"example.com"[..], b"example.org", b"example.net"]
        .iter()
        .any(|d| h == *d || h.ends_with(&[b".", *d].concat()))
        || [&b".example"[..], b".invalid"]
            .iter()
            .any(|d| h.ends_with(d))
        || h == b"example"
}

/// A password from a URL: not a placeholder, template variable, mask or the user name; at a
/// documentation host (`https://abc:xyz@example.com`), only a strong one counts.
pub fn password(pw: &[u8], user: Option<&[u8]>, host: Option<&[u8]>) -> bool {
    if host.is_some_and(documentation_host) && (pw.len() < 12 || entropy(pw) < 3.5) {
        return false;
    }
    // Bounds the rule's regex leaves open (counted repetitions make its automaton large).
    if pw.len() > 128 || user.is_some_and(|u| u.len() > 64) {
        return false;
    }
    if PLACEHOLDER_PASSWORDS
        .iter()
        .any(|p| p.eq_ignore_ascii_case(pw))
    {
        return false;
    }
    if user.is_some_and(|u| u.eq_ignore_ascii_case(pw)) {
        return false;
    }
    if matches!(pw.first(), Some(b'$' | b'{' | b'<' | b'%' | b'[' | b'('))
        || pw.iter().all(|&b| b == pw[0])
    {
        return false;
    }
    // A port after `user:` is not a password (`https://host:8080@...` does not happen, but
    // `ssh://git:22@` style oddities do).
    !pw.iter().all(u8::is_ascii_digit) || pw.len() > 6
}

/// Parts of a variable name that say its value is not a secret.
const NOT_SECRET_NAMES: &[&str] = &[
    "public",
    "hash",
    "sha1",
    "sha256",
    "sha512",
    "md5",
    "checksum",
    "integrity",
    "digest",
    "fingerprint",
    "file",
    "path",
    "url",
    "uri",
    "name",
    "type",
    "header",
    "field",
    "length",
    "size",
    "count",
    "_len",
    "format",
    "endpoint",
    "_env",
    "-env",
    "env_var",
    "_var",
    "tokenizer",
    "_id",
    "-id",
    ".id",
    "keyid",
    "expir",
    "ttl",
    "prefix",
    "mode",
    "method",
    "policy",
    "version",
    "label",
];

/// A value assigned to a secret-looking name: letters and digits mixed, not an identifier,
/// path, UUID or a name that says it holds something public.
pub fn generic(name: Option<&[u8]>, value: &[u8]) -> bool {
    if value.len() > 200 || name.is_some_and(|n| n.len() > 64) {
        return false;
    }
    if let Some(name) = name {
        if random_looking(name) {
            return false;
        }
        let lower = name.to_ascii_lowercase();
        let lower = String::from_utf8_lossy(&lower);
        if NOT_SECRET_NAMES.iter().any(|n| lower.contains(n)) {
            return false;
        }
    }
    let letters = value.iter().filter(|b| b.is_ascii_alphabetic()).count();
    let digits = value.iter().filter(|b| b.is_ascii_digit()).count();
    if letters == 0 || digits == 0 {
        return false;
    }
    if is_uuid(value) {
        return false;
    }
    // The name repeated (`{"setAttr-Token-B0", "setAttr-Token-B0"}`), a JWT or JWT part (the
    // jwt rule decides those), or an UPPER_SNAKE constant (`"CLIENT_TRAFFIC_SECRET_0"`).
    if let Some(n) = name
        && !n.is_empty()
        && value.len() >= n.len()
        && value.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
    {
        return false;
    }
    if memchr::memmem::find(value, b"eyJ").is_some() {
        return false;
    }
    if value
        .iter()
        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        && value.iter().filter(|&&b| b == b'_').count() >= 2
    {
        return false;
    }
    // Publishable keys (Stripe `pk_live_`, Mapbox `pk.`) are public by design; `$VAR` is a
    // template variable.
    if value.starts_with(b"pk_") || value.starts_with(b"pk.") || value.starts_with(b"$") {
        return false;
    }
    // Dotted identifiers (`settings.auth.secret_v2`) and paths are code, not values.
    if value.starts_with(b"/") || value.starts_with(b"./") || value.contains(&b'\\') {
        return false;
    }
    let words = value
        .split(|b| matches!(b, b'.' | b'_' | b'-'))
        .filter(|w| !w.is_empty())
        .count();
    let lower_word_like = value
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
    if words >= 3 && lower_word_like && value.contains(&b'.') {
        return false;
    }
    true
}

/// A "name" that is really the inside of a random string (`...XHtPwD1fT...`): several digits
/// or frequent lower-to-upper case switches, which identifiers do not have.
fn random_looking(name: &[u8]) -> bool {
    let digits = name.iter().filter(|b| b.is_ascii_digit()).count();
    let switches = name
        .windows(2)
        .filter(|w| w[0].is_ascii_lowercase() && w[1].is_ascii_uppercase())
        .count();
    digits >= 3 || switches * 5 > name.len()
}

/// `8-4-4-4-12` hex.
pub fn is_uuid(v: &[u8]) -> bool {
    v.len() == 36
        && v.iter().enumerate().all(|(i, b)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *b == b'-'
            } else {
                b.is_ascii_hexdigit()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn github_token(prefix: &str, random: &str) -> String {
        let c = base62(crc32fast::hash(random.as_bytes()), B62_UPPER_FIRST);
        format!(
            "{prefix}_{random}{}",
            String::from_utf8(c.to_vec()).unwrap()
        )
    }

    #[test]
    fn github_checksums_are_checked() {
        let t = github_token("ghp", "zQWBuTSOoRi4A9spHcVY5ncnsDkxkJ");
        assert!(github_crc32(t.as_bytes()), "{t}");
        let mut bad = t.into_bytes();
        bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
        assert!(!github_crc32(&bad));
    }

    #[test]
    fn entropy_and_runs() {
        assert!(entropy(b"aaaaaaaa") < 0.01);
        assert!(entropy(b"0123456789abcdef") > 3.9);
        assert!(has_run(b"ghp_000000", 6));
        assert!(!has_run(b"ghp_0a0a0a", 3));
    }

    #[test]
    fn placeholders_and_passwords() {
        assert!(is_placeholder(b"AKIAIOSFODNN7EXAMPLE"));
        assert!(is_placeholder(b"<your-token>"));
        assert!(!is_placeholder(b"Zx8fQ2mP0vLr7TqW"));
        assert!(!password(b"password", Some(b"u"), None));
        assert!(!password(b"app", Some(b"app"), None));
        assert!(!password(b"${DB_PASSWORD}", Some(b"u"), None));
        assert!(password(b"S3cr3t-Pa55", Some(b"u"), None));
        assert!(!password(b"xyz", Some(b"abc"), Some(b"example.com")));
        assert!(password(
            b"S3cr3t-Pa55x-9QzL",
            Some(b"u"),
            Some(b"db.example.net")
        ));
    }

    #[test]
    fn generic_values() {
        assert!(generic(Some(b"api_key"), b"9f8Kq2LmZx7Pq4Wd"));
        assert!(!generic(Some(b"public_key"), b"9f8Kq2LmZx7Pq4Wd"));
        assert!(!generic(Some(b"token"), b"get_token_for_user"));
        assert!(!generic(
            Some(b"secret"),
            b"123e4567-e89b-12d3-a456-426614174000"
        ));
        assert!(!generic(Some(b"secret"), b"settings.auth.secret2"));
        assert!(!generic(Some(b"HtPwD1fTgpQGhVUN"), b"FsOrHsxY1eBUynwMwDL7"));
        assert!(!generic(Some(b"secret"), b"CLIENT_TRAFFIC_SECRET_0"));
        assert!(!generic(Some(b"setAttr-Token-B0"), b"setAttr-Token-B0"));
        assert!(!generic(
            Some(b"token"),
            b"eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
        ));
        assert!(generic(
            Some(b"awsSecretAccessKey"),
            b"FsOrHsxY1eBUynwMwDL7"
        ));
    }

    #[test]
    fn jwts_must_decode() {
        let h = URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(br#"{"sub":"svc","exp":1}"#);
        assert!(jwt(format!("{h}.{p}.c2lnbmF0dXJlc2lnbmF0dXJl").as_bytes()));
        assert!(!jwt(format!("{h}.eyJub3Rqc29u.c2ln").as_bytes()));
        let ex =
            URL_SAFE_NO_PAD.encode(br#"{"sub":"1234567890","name":"John Doe","iat":1516239022}"#);
        assert!(!jwt(format!("{h}.{ex}.c2lnbmF0dXJl").as_bytes()));
    }
}
