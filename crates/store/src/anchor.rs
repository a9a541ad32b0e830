//! Anchors for the audit chain outside the database.
//!
//! The chain's head lives in the same database as the events, so someone who can write the
//! database can delete the newest events and move the head back: every remaining link still
//! verifies. An anchor is the head (sequence number and hash) as the committer wrote it, with a
//! MAC under the master key, written to the audit JSON-lines output every
//! [`ANCHOR_EVERY_EVENTS`] events or [`ANCHOR_INTERVAL`], whichever comes first.
//! `mayfly audit verify --anchor FILE` then checks that every anchor in FILE names an event
//! still in the chain with the same hash: a cut tail older than the newest anchor is found.
//! Without the master key an anchor cannot be forged; without an output kept outside the
//! database (a file on another volume, a SIEM) there is nothing to check against.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::time::Duration;

use mayfly_crypto::{Kek, ct_eq, hex};
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// An anchor is written at the latest after this many events...
pub const ANCHOR_EVERY_EVENTS: i64 = 1000;
/// ...or this long after the first event it does not yet cover.
pub const ANCHOR_INTERVAL: Duration = Duration::from_secs(10);
/// Longest line read from an anchor file; longer lines are not anchors and are skipped.
const MAX_LINE: u64 = 64 * 1024;

/// The chain's head at one moment, authenticated with the master key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Anchor {
    /// Sequence number of the newest event then.
    pub seq: i64,
    /// That event's hash.
    pub hash: String,
    /// When the anchor was written (seconds since the epoch).
    pub ts: i64,
    /// HMAC-SHA-256 under the audit key over the three fields above.
    pub mac: String,
}

/// How a JSON line carries an anchor: one key, so a SIEM tells it from an event.
#[derive(Serialize, Deserialize)]
struct Line {
    audit_anchor: Anchor,
}

fn mac(kek: &Kek, seq: i64, hash: &str, ts: i64) -> String {
    // The prefix keeps an anchor's MAC input apart from a chain link's (which starts with a
    // hex hash), so neither can stand for the other.
    hex(&kek.audit_mac(format!("mayfly-audit-anchor\n{seq}\n{hash}\n{ts}").as_bytes()))
}

impl Anchor {
    /// The anchor for head `(seq, hash)` at `ts`.
    pub fn new(kek: &Kek, seq: i64, hash: &str, ts: i64) -> Self {
        Self {
            seq,
            hash: hash.to_string(),
            ts,
            mac: mac(kek, seq, hash, ts),
        }
    }

    /// Whether the MAC is this master key's (constant-time).
    pub fn authentic(&self, kek: &Kek) -> bool {
        ct_eq(
            mac(kek, self.seq, &self.hash, self.ts).as_bytes(),
            self.mac.as_bytes(),
        )
    }

    /// The JSON line written to the audit output.
    pub fn line(&self) -> String {
        serde_json::to_string(&Line {
            audit_anchor: self.clone(),
        })
        .unwrap_or_default()
    }

    /// The anchor a line carries, if it is an anchor line.
    pub fn parse_line(line: &str) -> Option<Self> {
        let line = line.trim();
        if !line.starts_with("{\"audit_anchor\"") {
            return None;
        }
        serde_json::from_str::<Line>(line)
            .ok()
            .map(|l| l.audit_anchor)
    }

    /// Every anchor line of the file at `path` (an audit JSON-lines copy, or a file of anchors
    /// alone); other lines are skipped.
    pub fn read_file(path: &Path) -> Result<Vec<Self>, StoreError> {
        let f = std::fs::File::open(path)?;
        let mut reader = BufReader::new(f);
        let mut out = Vec::new();
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = (&mut reader).take(MAX_LINE).read_line(&mut buf)?;
            if n == 0 {
                break;
            }
            if !buf.ends_with('\n') && n as u64 == MAX_LINE {
                // Skip the rest of an over-long line.
                let mut sink = Vec::new();
                reader.read_until(b'\n', &mut sink)?;
                continue;
            }
            if let Some(a) = Self::parse_line(&buf) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// When the committer owes the output an anchor.
#[derive(Debug)]
pub(crate) struct Anchoring {
    /// The newest head written, and the head last anchored.
    head: Option<(i64, String)>,
    anchored: i64,
    /// When the first event not yet anchored was committed.
    owed_since: Option<tokio::time::Instant>,
}

impl Anchoring {
    pub(crate) fn new() -> Self {
        Self {
            head: None,
            anchored: 0,
            owed_since: None,
        }
    }

    /// A batch committed up to `(seq, hash)`: the anchor line to write now, if one is due.
    pub(crate) fn committed(
        &mut self,
        kek: &Kek,
        seq: i64,
        hash: &str,
        now: i64,
    ) -> Option<String> {
        self.head = Some((seq, hash.to_string()));
        if self.anchored == 0 && self.owed_since.is_none() {
            // Count from the first head seen: a restart does not owe an anchor for old events.
            self.anchored = seq.saturating_sub(1);
        }
        self.owed_since
            .get_or_insert_with(tokio::time::Instant::now);
        if seq - self.anchored >= ANCHOR_EVERY_EVENTS {
            return self.take(kek, now);
        }
        None
    }

    /// When the next anchor falls due if no more events come (`None`: nothing is owed).
    pub(crate) fn deadline(&self) -> Option<tokio::time::Instant> {
        self.owed_since.map(|t| t + ANCHOR_INTERVAL)
    }

    /// The anchor for the newest head, if it is not anchored yet.
    pub(crate) fn take(&mut self, kek: &Kek, now: i64) -> Option<String> {
        let (seq, hash) = self.head.as_ref()?;
        if *seq <= self.anchored {
            return None;
        }
        self.anchored = *seq;
        self.owed_since = None;
        Some(Anchor::new(kek, *seq, hash, now).line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kek(byte: u8) -> Kek {
        Kek::from_bytes(&[byte; 32]).unwrap()
    }

    #[test]
    fn a_line_round_trips_and_only_its_key_verifies_it() {
        let k = kek(7);
        let a = Anchor::new(&k, 42, "ab".repeat(32).as_str(), 1_700_000_000);
        let back = Anchor::parse_line(&a.line()).unwrap();
        assert_eq!(back, a);
        assert!(back.authentic(&k));
        assert!(!back.authentic(&kek(8)));
        let moved = Anchor {
            seq: 41,
            ..a.clone()
        };
        assert!(!moved.authentic(&k));
        assert_eq!(Anchor::parse_line("{\"kind\":\"token_issue\"}"), None);
    }

    #[test]
    fn an_anchor_falls_due_by_count_and_is_owed_once() {
        let k = kek(7);
        let mut a = Anchoring::new();
        assert!(a.deadline().is_none());
        assert!(a.committed(&k, 1, "h1", 0).is_none());
        assert!(a.deadline().is_some(), "owed within the interval");
        let line = a.committed(&k, ANCHOR_EVERY_EVENTS, "hN", 0).unwrap();
        assert_eq!(Anchor::parse_line(&line).unwrap().seq, ANCHOR_EVERY_EVENTS);
        assert!(a.deadline().is_none());
        assert!(a.take(&k, 0).is_none(), "nothing new to anchor");
        assert!(a.committed(&k, ANCHOR_EVERY_EVENTS + 1, "h", 0).is_none());
        assert!(a.take(&k, 0).is_some());
    }
}
