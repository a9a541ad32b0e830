//! The scanning engine: a keyword pre-filter (Aho-Corasick) decides where each rule's regex
//! runs; readers are scanned in bounded chunks so file size and line length never matter.

use std::collections::HashSet;
use std::io::{self, Read};

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use zeroize::Zeroizing;

use crate::ScanError;
use crate::rules::{Rule, RuleSet, Validate};
use crate::validate;

/// Bytes read per step.
const CHUNK: usize = 1 << 20;
/// The longest secret (a private key block) the engine promises to see whole: a match that
/// starts in the last `OVERLAP` bytes of a chunk is left for the next one.
const OVERLAP: usize = 16 << 10;
/// Text kept before the next chunk so a name or keyword that precedes a secret is seen.
const LOOKBACK: usize = 1 << 10;
/// How far a single-line rule looks around a keyword, before and after.
const BEFORE: usize = 512;
const AFTER: usize = 1024;
/// How far a multi-line rule (private keys) looks after its keyword.
const MULTILINE_AFTER: usize = 12 << 10;
/// Binary detection looks at this many leading bytes for a NUL, as git does.
const SNIFF: usize = 8000;
/// A secret with this many identical characters in a row is a placeholder (`ghp_0000...`).
const MAX_RUN: usize = 6;
/// Keywords are cut to this many bytes for the pre-filter.
const MAX_KEYWORD: usize = 8;
/// Suppresses a finding on its line.
const ALLOW_MARK: &[u8] = b"mayfly:allow";

/// A secret the engine found in one item.
pub struct RawMatch {
    /// Index of the rule in the scanner's rule set.
    pub rule: usize,
    /// Byte offset of the secret in the item.
    pub offset: u64,
    /// 1-based line of the secret's first byte.
    pub line: u64,
    /// 1-based byte column of the secret's first byte.
    pub column: u64,
    /// The secret itself; wiped when dropped.
    pub secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for RawMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret, even in debug output.
        f.debug_struct("RawMatch")
            .field("rule", &self.rule)
            .field("line", &self.line)
            .field("column", &self.column)
            .field("secret_len", &self.secret.len())
            .finish()
    }
}

/// What scanning one item came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Text, this many bytes scanned.
    Text(u64),
    /// Binary content (a NUL in the first bytes): skipped.
    Binary,
}

/// A compiled scanner, shared by all threads.
#[derive(Debug)]
pub struct Scanner {
    rules: RuleSet,
    keywords: AhoCorasick,
    /// For each keyword pattern, the rules it triggers (with the exact spelling a rule needs).
    triggers: Vec<Vec<(usize, Option<Vec<u8>>)>>,
}

/// A span of a chunk some rule must run over.
#[derive(Clone, Copy)]
struct Region {
    start: usize,
    end: usize,
}

impl Scanner {
    /// Compile a scanner for these rules.
    pub fn new(rules: RuleSet) -> Result<Self, ScanError> {
        // One case-insensitive automaton over every keyword; a trigger remembers which rules
        // need the hit to match byte for byte.
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        let mut triggers: Vec<Vec<(usize, Option<Vec<u8>>)>> = Vec::new();
        for (i, rule) in rules.rules.iter().enumerate() {
            for (k, exact) in &rule.keywords {
                // Keywords longer than this add automaton states (a bigger, slower table) and
                // buy nothing: the rule's regex checks the rest.
                let k = &k[..k.len().min(MAX_KEYWORD)];
                let lower = k.to_ascii_lowercase();
                let t = (i, exact.then(|| k.to_vec()));
                match patterns.iter().position(|p| *p == lower) {
                    Some(j) => {
                        if !triggers[j].contains(&t) {
                            triggers[j].push(t);
                        }
                    }
                    None => {
                        patterns.push(lower);
                        triggers.push(vec![t]);
                    }
                }
            }
        }
        let keywords = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .ascii_case_insensitive(true)
            .kind(Some(AhoCorasickKind::DFA))
            .build(&patterns)
            .map_err(|e| ScanError::Rules {
                file: "keywords".into(),
                msg: e.to_string(),
            })?;
        Ok(Self {
            rules,
            keywords,
            triggers,
        })
    }

    /// The rule at `index` (as in [`RawMatch::rule`]).
    pub fn rule(&self, index: usize) -> Option<&Rule> {
        self.rules.rules.get(index)
    }

    /// All rules.
    pub fn rules(&self) -> &[Rule] {
        &self.rules.rules
    }

    /// Scan a whole item held in memory (tests, fuzzing, small inputs).
    pub fn scan_slice(&self, data: &[u8]) -> (Outcome, Vec<RawMatch>) {
        let mut out = Vec::new();
        let mut reader = data;
        match self.scan_reader(&mut reader, &mut |m| out.push(m)) {
            Ok(o) => (o, out),
            // Reading a slice cannot fail.
            Err(_) => (Outcome::Text(0), out),
        }
    }

    /// Scan an item from a reader, in chunks of at most about 1 MiB whatever its size or line
    /// lengths; each match is handed to `on` in order of offset.
    pub fn scan_reader(
        &self,
        reader: &mut dyn Read,
        on: &mut dyn FnMut(RawMatch),
    ) -> io::Result<Outcome> {
        // One buffer per thread, zeroed once: a tree of small files must not pay for clearing
        // a megabyte per file.
        thread_local! {
            static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        BUF.with(|cell| match cell.try_borrow_mut() {
            Ok(mut buf) => {
                if buf.len() < CHUNK + OVERLAP {
                    buf.resize(CHUNK + OVERLAP, 0);
                }
                self.scan_with(reader, &mut buf, on)
            }
            // Re-entered from `on` (nothing does this): use a fresh buffer.
            Err(_) => self.scan_with(reader, &mut vec![0; CHUNK + OVERLAP], on),
        })
    }

    fn scan_with(
        &self,
        reader: &mut dyn Read,
        buf: &mut [u8],
        on: &mut dyn FnMut(RawMatch),
    ) -> io::Result<Outcome> {
        let mut len = 0usize;
        let mut base: u64 = 0;
        let mut line_at_base: u64 = 1;
        let mut handled_until: u64 = 0;
        let mut first = true;
        loop {
            let (filled, eof) = fill(reader, buf, len)?;
            len = filled;
            let data = &buf[..len];
            if first {
                first = false;
                let sniff = &data[..len.min(SNIFF)];
                if memchr::memchr(0, sniff).is_some() {
                    return Ok(Outcome::Binary);
                }
            }
            let limit = if eof {
                len
            } else {
                len.saturating_sub(OVERLAP)
            };
            let from = usize::try_from(handled_until.saturating_sub(base)).unwrap_or(0);
            let mut found = self.scan_chunk(data, from, limit);
            found.sort_by_key(|m| m.0);
            let mut line = line_at_base;
            let mut pos = 0usize;
            for (off, rule, secret) in found {
                line += memchr::memchr_iter(b'\n', &data[pos..off]).count() as u64;
                pos = off;
                let line_start = memchr::memrchr(b'\n', &data[..off]).map_or(0, |i| i + 1);
                let column = if line_start == 0 && base > 0 {
                    // The line began in an earlier chunk: column unknown past the lookback.
                    0
                } else {
                    (off - line_start + 1) as u64
                };
                on(RawMatch {
                    rule,
                    offset: base + off as u64,
                    line,
                    column,
                    secret,
                });
            }
            if eof {
                return Ok(Outcome::Text(base + len as u64));
            }
            let keep_from = limit.saturating_sub(LOOKBACK);
            line_at_base += memchr::memchr_iter(b'\n', &data[..keep_from]).count() as u64;
            buf.copy_within(keep_from..len, 0);
            len -= keep_from;
            base += keep_from as u64;
            handled_until = base + (limit - keep_from) as u64;
        }
    }

    /// Matches whose secret starts in `[from, limit)` of `buf`: (offset, rule, secret).
    fn scan_chunk(
        &self,
        buf: &[u8],
        from: usize,
        limit: usize,
    ) -> Vec<(usize, usize, Zeroizing<Vec<u8>>)> {
        let n = self.rules.rules.len();
        let mut open: Vec<Option<Region>> = vec![None; n];
        let mut found: Vec<(usize, usize, Zeroizing<Vec<u8>>)> = Vec::new();
        let mut vetoes: Vec<(usize, usize)> = Vec::new();
        for hit in self.keywords.find_overlapping_iter(buf) {
            let (p, end) = (hit.start(), hit.end());
            for (r, exact) in &self.triggers[hit.pattern().as_usize()] {
                if exact.as_ref().is_some_and(|e| buf[p..end] != e[..]) {
                    continue;
                }
                let r = *r;
                let rule = &self.rules.rules[r];
                let w = window(buf, p, end, rule.multiline);
                match &mut open[r] {
                    Some(cur) if w.start <= cur.end && w.end >= cur.start => {
                        cur.start = cur.start.min(w.start);
                        cur.end = cur.end.max(w.end);
                    }
                    slot => {
                        if let Some(done) = slot.take() {
                            self.run_rule(r, buf, done, (from, limit), &mut found, &mut vetoes);
                        }
                        *slot = Some(w);
                    }
                }
            }
        }
        for (r, slot) in open.into_iter().enumerate() {
            if let Some(done) = slot {
                self.run_rule(r, buf, done, (from, limit), &mut found, &mut vetoes);
            }
        }
        dedupe(&self.rules.rules, &mut found, &vetoes);
        found
    }

    fn run_rule(
        &self,
        r: usize,
        buf: &[u8],
        region: Region,
        (from, limit): (usize, usize),
        found: &mut Vec<(usize, usize, Zeroizing<Vec<u8>>)>,
        vetoes: &mut Vec<(usize, usize)>,
    ) {
        let rule = &self.rules.rules[r];
        let hay = &buf[region.start..region.end];
        for caps in rule.regex.captures_iter(hay) {
            let Some(m) = rule
                .secret_groups
                .iter()
                .find_map(|&g| caps.get(g))
                .or_else(|| caps.get(0))
            else {
                continue;
            };
            let off = region.start + m.start();
            if off < from || off >= limit {
                continue;
            }
            let secret = m.as_bytes();
            let user = rule
                .user_group
                .and_then(|g| caps.get(g))
                .map(|u| u.as_bytes());
            let name = rule
                .name_groups
                .iter()
                .find_map(|&g| caps.get(g))
                .map(|u| u.as_bytes());
            let host = rule
                .host_group
                .and_then(|g| caps.get(g))
                .map(|u| u.as_bytes());
            if !accept(rule, secret, (user, host), name) {
                // A value shaped like a specific token that failed its checks (a wrong
                // checksum, a documented example) is not a generic secret either.
                if !is_generic(rule) {
                    vetoes.push((off, off + secret.len()));
                }
                continue;
            }
            if allowed_on_line(buf, off) {
                continue;
            }
            found.push((off, r, Zeroizing::new(secret.to_vec())));
        }
    }
}

/// Read into `buf[len..]` until it is full or the reader ends: (bytes held, at the end).
fn fill(reader: &mut dyn Read, buf: &mut [u8], mut len: usize) -> io::Result<(usize, bool)> {
    while len < buf.len() {
        match reader.read(&mut buf[len..]) {
            Ok(0) => return Ok((len, true)),
            Ok(k) => len += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((len, false))
}

/// The span a rule looks at around a keyword hit at `[p, e)`: its line, bounded both ways so
/// that a megabyte-long minified line costs no more than a short one.
fn window(buf: &[u8], p: usize, e: usize, multiline: bool) -> Region {
    let lo = p.saturating_sub(BEFORE);
    let start = memchr::memrchr(b'\n', &buf[lo..p]).map_or(lo, |i| lo + i + 1);
    if multiline {
        return Region {
            start,
            end: (e + MULTILINE_AFTER).min(buf.len()),
        };
    }
    let hi = (e + AFTER).min(buf.len());
    let end = memchr::memchr(b'\n', &buf[e.min(hi)..hi]).map_or(hi, |i| e + i);
    Region { start, end }
}

/// The checks a match passes before it is a finding.
fn accept(
    rule: &Rule,
    secret: &[u8],
    (user, host): (Option<&[u8]>, Option<&[u8]>),
    name: Option<&[u8]>,
) -> bool {
    if rule.allow.iter().any(|a| a.is_match(secret)) || validate::is_placeholder(secret) {
        return false;
    }
    if !rule.multiline && validate::has_run(secret, MAX_RUN) {
        return false;
    }
    if rule
        .entropy
        .is_some_and(|min| validate::entropy(secret) < min)
    {
        return false;
    }
    match rule.validate {
        None => true,
        Some(Validate::GithubCrc32) => validate::github_crc32(secret),
        Some(Validate::Jwt) => validate::jwt(secret),
        Some(Validate::Discord) => validate::discord(secret),
        Some(Validate::Base64Of64) => validate::base64_len(secret, 64),
        Some(Validate::Pem) => validate::pem(secret),
        Some(Validate::Password) => validate::password(secret, user, host),
        Some(Validate::Generic) => validate::generic(name, secret),
    }
}

/// `mayfly:allow` anywhere on the secret's line (as far as the chunk holds it).
fn allowed_on_line(buf: &[u8], off: usize) -> bool {
    let lo = off.saturating_sub(4096);
    let start = memchr::memrchr(b'\n', &buf[lo..off]).map_or(lo, |i| lo + i + 1);
    let hi = (off + 4096).min(buf.len());
    let end = memchr::memchr(b'\n', &buf[off..hi]).map_or(hi, |i| off + i);
    memchr::memmem::find(&buf[start..end], ALLOW_MARK).is_some()
}

/// Rules that find values by context (a name, a URL) rather than by their own format.
fn is_generic(rule: &Rule) -> bool {
    matches!(
        rule.validate,
        Some(Validate::Generic) | Some(Validate::Password)
    )
}

/// One finding per secret: the same span found twice (merged regions), or a generic rule that
/// found what a specific rule also found, is reported once, by the specific rule.
fn dedupe(
    rules: &[Rule],
    found: &mut Vec<(usize, usize, Zeroizing<Vec<u8>>)>,
    vetoes: &[(usize, usize)],
) {
    if found.is_empty() {
        return;
    }
    let mut seen = HashSet::new();
    found.retain(|(off, r, _)| seen.insert((*off, *r)));
    let generic = |r: usize| is_generic(&rules[r]);
    let mut specific: Vec<(usize, usize)> = found
        .iter()
        .filter(|(_, r, _)| !generic(*r))
        .map(|(off, _, s)| (*off, off + s.len()))
        .collect();
    specific.extend_from_slice(vetoes);
    if specific.is_empty() {
        return;
    }
    found.retain(|(off, r, s)| {
        !generic(*r) || !specific.iter().any(|&(a, b)| *off < b && a < off + s.len())
    });
}
