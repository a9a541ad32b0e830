//! The engine on realistic inputs: chunk boundaries, long lines, binary content, suppression.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;

use mayfly_scan::{Outcome, RuleSet, Scanner};

fn scanner() -> Scanner {
    Scanner::new(RuleSet::builtin().unwrap()).unwrap()
}

const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A GitHub-format token with a valid checksum, from a seed (no RNG crate needed).
fn github_token(prefix: &str, seed: u32) -> String {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(12345);
    let random: String = (0..30)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            char::from(B62[(x % 62) as usize])
        })
        .collect();
    let mut crc = crc32fast_hash(random.as_bytes());
    let mut check = [b'0'; 6];
    for slot in check.iter_mut().rev() {
        *slot = B62[(crc % 62) as usize];
        crc /= 62;
    }
    format!("{prefix}_{random}{}", std::str::from_utf8(&check).unwrap())
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE), independent of the crate the engine uses.
    let mut crc = 0xFFFF_FFFFu32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn ids(s: &Scanner, data: &[u8]) -> Vec<(String, u64, u64)> {
    let (_, found) = s.scan_slice(data);
    found
        .into_iter()
        .map(|m| (s.rule(m.rule).unwrap().id.clone(), m.line, m.column))
        .collect()
}

#[test]
fn a_checksummed_token_is_found_with_line_and_column_and_a_bad_checksum_is_not() {
    let s = scanner();
    let t = github_token("ghp", 7);
    let text = format!("a = 1\n  token: \"{t}\"\n");
    assert_eq!(ids(&s, text.as_bytes()), vec![("github-pat".into(), 2, 11)]);
    let mut bad = t.clone().into_bytes();
    bad[5] = if bad[5] == b'Q' { b'R' } else { b'Q' };
    let text = format!("GH={}\n", String::from_utf8(bad).unwrap());
    assert!(ids(&s, text.as_bytes()).is_empty());
}

/// A reader that hands out a few bytes at a time, as pipes do.
struct Trickle<'a>(&'a [u8], usize);
impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.1.min(buf.len()).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn secrets_across_chunk_boundaries_are_found_once_with_the_right_line() {
    let s = scanner();
    let t = github_token("ghp", 99);
    // Place the token at every offset around the first and second chunk boundaries.
    let chunk = 1usize << 20;
    let overlap = 16usize << 10;
    for boundary in [chunk + overlap, 2 * chunk + overlap - 1024 + overlap] {
        for delta in [-(overlap as i64) - 41, -41, -1, 0, 1, 1000] {
            let at = (boundary as i64 + delta) as usize;
            let mut data = Vec::with_capacity(3 * chunk);
            let _ = chunk;
            let line_len = 64;
            while data.len() + line_len < at {
                data.extend_from_slice(&[b'x'; 63]);
                data.push(b'\n');
            }
            let lines_before = data.iter().filter(|&&b| b == b'\n').count() as u64;
            data.extend_from_slice(b"k=");
            data.extend_from_slice(t.as_bytes());
            data.push(b'\n');
            while data.len() < boundary + (64 << 10) {
                data.extend_from_slice(&[b'y'; 63]);
                data.push(b'\n');
            }
            for step in [usize::MAX, 4093] {
                let mut found = Vec::new();
                let out = s
                    .scan_reader(&mut Trickle(&data, step), &mut |m| found.push(m))
                    .unwrap();
                assert_eq!(out, Outcome::Text(data.len() as u64));
                assert_eq!(found.len(), 1, "token near offset {at} (step {step})");
                assert_eq!(found[0].line, lines_before + 1, "offset {at}");
                assert_eq!(found[0].secret.as_slice(), t.as_bytes());
            }
        }
    }
}

#[test]
fn a_private_key_spanning_a_chunk_boundary_is_found() {
    let s = scanner();
    let body: String = (0..25)
        .map(|i| {
            let mut l: String = (0..64)
                .map(|j| char::from(B62[(i * 7 + j * 13) % 62]))
                .collect();
            l.push('\n');
            l
        })
        .collect();
    let key = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}-----END RSA PRIVATE KEY-----\n");
    let mut data = vec![b'a'; (1 << 20) + (16 << 10) - 800];
    data.push(b'\n');
    data.extend_from_slice(key.as_bytes());
    data.extend_from_slice(&vec![b'b'; 2 << 20]);
    let (_, found) = s.scan_slice(&data);
    let ids: Vec<_> = found
        .iter()
        .map(|m| s.rule(m.rule).unwrap().id.as_str())
        .collect();
    assert_eq!(ids, vec!["private-key"]);
    assert_eq!(found[0].line, 2);
}

#[test]
fn a_secret_in_the_middle_of_a_very_long_line_is_found() {
    let s = scanner();
    let t = github_token("gho", 3);
    let mut data = Vec::new();
    for i in 0..400_000 {
        data.extend_from_slice(if i % 2 == 0 {
            b"var token=a;"
        } else {
            b"f(key,v);  "
        });
    }
    data.extend_from_slice(format!("x=\"{t}\";").as_bytes());
    for _ in 0..400_000 {
        data.extend_from_slice(b"function(){return 1};");
    }
    let found = ids(&s, &data);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "github-oauth-token");
    assert_eq!(found[0].1, 1);
}

#[test]
fn binary_content_is_skipped_and_allow_comments_suppress_one_line() {
    let s = scanner();
    let t = github_token("ghp", 5);
    let mut bin = b"\x7fELF\x02\x01\x01\x00".to_vec();
    bin.extend_from_slice(t.as_bytes());
    assert_eq!(s.scan_slice(&bin).0, Outcome::Binary);
    let t2 = github_token("ghp", 6);
    let text = format!("a = \"{t}\"  # mayfly:allow test fixture\nb = \"{t2}\"\n");
    assert_eq!(ids(&s, text.as_bytes()), vec![("github-pat".into(), 2, 6)]);
}

#[test]
fn placeholders_examples_and_template_variables_are_not_findings() {
    let s = scanner();
    let text = "\
aws_access_key_id = AKIAIOSFODNN7EXAMPLE
aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY
GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx
STRIPE_KEY=sk_live_xxxxxxxxxxxxxxxxxxxxxxxx
api_key = \"${API_KEY}\"
password: {{ .Values.db.password }}
DATABASE_URL=postgres://user:password@localhost:5432/app
DATABASE_URL=postgres://app:${DB_PASSWORD}@db:5432/app
integrity sha512-v2kDEe57lecTulaDIuNTPy3Ry4gLGJ6Z1O3vE1krgXZNrsQ+LFTGHVxVjcXGOzBeeeIiOb7cv7dDK7yX5+MQ==
id = 123e4567-e89b-12d3-a456-426614174000
commit 3f786850e387550fdab836ed7e6dc881de23001b
ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 user@host
jwt = eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c
token = get_token_for(user)
";
    assert_eq!(ids(&s, text.as_bytes()), vec![]);
}

#[test]
fn a_generic_match_on_a_specific_secret_is_reported_once_by_the_specific_rule() {
    let s = scanner();
    let t = github_token("ghp", 11);
    let text = format!("api_token = \"{t}\"\nclient_secret = \"q8Zr2LmX7vP0aT5wKc3N\"\n");
    let found = ids(&s, text.as_bytes());
    assert_eq!(
        found,
        vec![
            ("github-pat".into(), 1, 14),
            ("generic-secret".into(), 2, 18)
        ]
    );
}
