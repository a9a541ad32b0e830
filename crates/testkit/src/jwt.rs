//! Reading JWTs without verification, form bodies, and the RFC 6749 error assertion.

use base64::Engine;
use serde_json::Value;

/// Seconds since the Unix epoch, from the system clock.
pub fn now() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("seconds fit in i64")
}

/// Base64url without padding, as JWS uses.
pub fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn part(token: &str, i: usize) -> Value {
    let p = token.split('.').nth(i).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("a JSON object")
}

/// The claims of a JWT, read without verification (test inspection only).
pub fn peek(token: &str) -> Value {
    part(token, 1)
}

/// The protected header of a JWT, read without verification.
pub fn peek_header(token: &str) -> Value {
    part(token, 0)
}

/// `application/x-www-form-urlencoded` body of `form`, in order, duplicates kept.
pub fn form_urlencode(form: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (k, v) in form {
        if !out.is_empty() {
            out.push('&');
        }
        pct(k, &mut out);
        out.push('=');
        pct(v, &mut out);
    }
    out
}

fn pct(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
}

/// Assert an RFC 6749 error response: the exact code, the status, and a non-empty
/// `error_description`.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    assert_eq!(got.1["error"], code, "body: {}", got.1);
    assert_eq!(got.0, status, "body: {}", got.1);
    let desc = got.1["error_description"].as_str().unwrap_or("");
    assert!(!desc.is_empty(), "error_description is useful: {}", got.1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_escape_everything_but_unreserved() {
        assert_eq!(
            form_urlencode(&[("a b", "x/y=z"), ("a b", "~.-_")]),
            "a%20b=x%2Fy%3Dz&a%20b=~.-_"
        );
    }

    #[test]
    fn peek_reads_header_and_claims() {
        let t = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(br#"{"sub":"s"}"#));
        assert_eq!(peek_header(&t)["alg"], "none");
        assert_eq!(peek(&t)["sub"], "s");
    }

    #[test]
    fn error_assertion_accepts_a_described_error() {
        let body = serde_json::json!({"error": "invalid_client", "error_description": "no"});
        assert_error(&(401, body), 401, "invalid_client");
    }

    #[test]
    #[should_panic(expected = "error_description is useful")]
    fn error_assertion_wants_a_description() {
        assert_error(
            &(401, serde_json::json!({"error": "invalid_client"})),
            401,
            "invalid_client",
        );
    }
}
