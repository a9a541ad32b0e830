//! Key debt: the static keys that still exist. Keys the proxy wraps are sealed under the master
//! key; keys the scanner found are known by fingerprint only. Each has an owner and an expiry
//! date, and the proxy records which workload identities still use it.

use base64::Engine;
use mayfly_crypto::Kek;
use sqlx::Row;
use zeroize::Zeroizing;

use crate::{Store, StoreError, db};

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Seconds in a day: expiry dates are whole UTC days.
pub const DAY: i64 = 86_400;

/// Input about a key-debt entry that cannot be entered. Messages say what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DebtInputError {
    /// Not a `YYYY-MM-DD` calendar date from 1970 on.
    #[error("`{0}` is not a date: write YYYY-MM-DD, e.g. 2027-03-31")]
    NotADate(String),
    /// Not an entry name.
    #[error("`{0}` is not an entry name: use up to 64 letters, digits, `-`, `_` or `.`")]
    BadName(String),
    /// Not a SHA-256 in hex.
    #[error("not a SHA-256 in hex (64 characters), as `mayfly scan` prints it")]
    BadFingerprint,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC).
pub fn utc_date(t: i64) -> String {
    // Days since the epoch to a civil date (the inverse of `days_from_civil`).
    let z = t.div_euclid(DAY) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

/// `YYYY-MM-DD` (UTC), the last day a key may be used → the first second it may not
/// (the entry's `expires_at`): a key is usable through the whole of its last day.
pub fn end_of_day(date: &str) -> Result<i64, DebtInputError> {
    let bad = || DebtInputError::NotADate(date.to_string());
    let b = date.as_bytes();
    let shape = b.len() == 10
        && b.iter().enumerate().all(|(i, c)| {
            if i == 4 || i == 7 {
                *c == b'-'
            } else {
                c.is_ascii_digit()
            }
        });
    if !shape {
        return Err(bad());
    }
    let num = |r: std::ops::Range<usize>| date.get(r).and_then(|s| s.parse::<i64>().ok());
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return Err(bad());
    };
    if y < 1970 || !(1..=12).contains(&m) || d < 1 || d > days_in_month(y, m) {
        return Err(bad());
    }
    Ok((days_from_civil(y, m, d) + 1) * DAY)
}

/// The last day (`YYYY-MM-DD`, UTC) a key may be used, from its `expires_at`.
pub fn last_day(expires_at: i64) -> String {
    utc_date(expires_at - 1)
}

/// Whole days left before the key stops working (negative once expired).
pub fn days_left(expires_at: i64, now: i64) -> i64 {
    (expires_at - now).div_euclid(DAY)
}

/// A key's fingerprint: its SHA-256 in lower-case hex, as the scanner reports it. Entries are
/// matched to findings by it; the key itself is never needed for that.
pub fn key_fingerprint(key: &[u8]) -> String {
    mayfly_crypto::hex(&mayfly_crypto::sha256(key))
}

/// A fingerprint given by hand (from `mayfly scan`), checked and lower-cased.
pub fn parse_fingerprint(hex: &str) -> Result<String, DebtInputError> {
    let fp = hex.to_ascii_lowercase();
    if fp.len() != 64 || !fp.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(DebtInputError::BadFingerprint);
    }
    Ok(fp)
}

/// The first 12 hex digits of a fingerprint: enough to tell keys apart in messages and audit
/// reasons without writing the whole hash everywhere.
pub fn short_fingerprint(fp: &str) -> &str {
    fp.get(..12).unwrap_or(fp)
}

/// An entry name: up to 64 letters, digits, `-`, `_` or `.` (it is also a route's `key`).
pub fn check_entry_name(name: &str) -> Result<(), DebtInputError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(DebtInputError::BadName(name.to_string()))
    }
}

/// What a sealed key is bound to: its entry's name, so a sealed key cannot be moved to another
/// entry. Also checked by import.
pub(crate) fn sealed_aad(name: &str) -> String {
    format!("debt:{name}")
}

/// One key-debt entry, without its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebtEntry {
    /// Entry name (also the default route name).
    pub name: String,
    /// Who owns the migration off this key.
    pub owner: String,
    /// When the entry was added (seconds since the epoch).
    pub created_at: i64,
    /// The first second the key may no longer be used.
    pub expires_at: i64,
    /// Proxy routes that use the key.
    pub routes: Vec<String>,
    /// SHA-256 (hex) of the key: how the scanner's findings are matched to entries.
    pub fingerprint: String,
    /// Whether the proxy holds the key (`false`: known by fingerprint only).
    pub wrapped: bool,
    /// Bumped on every rotation, so proxies reload.
    pub key_version: i64,
    /// Last change (rotation, extension).
    pub updated_at: i64,
    /// Why the expiry date was last moved, if it was.
    pub extended_reason: Option<String>,
    /// Where the scanner found the key (for entries made from findings).
    pub found_at: Option<String>,
    /// When the proxy last used the key.
    pub last_used_at: Option<i64>,
}

/// A workload identity that used a key through the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebtUsage {
    /// The entry.
    pub name: String,
    /// The token's subject.
    pub identity: String,
    /// First use.
    pub first_used_at: i64,
    /// Last use.
    pub last_used_at: i64,
    /// Calls made.
    pub calls: i64,
}

const COLUMNS: &str = "name, owner, created_at, expires_at, routes, fingerprint, sealed_key IS NOT NULL AS wrapped, key_version, updated_at, extended_reason, found_at, last_used_at";

fn read(r: &sqlx::any::AnyRow) -> Result<DebtEntry, StoreError> {
    let routes: String = r.try_get("routes").map_err(db("read debt entry"))?;
    let wrapped: bool = match r.try_get::<bool, _>("wrapped") {
        Ok(b) => b,
        // SQLite answers the IS NOT NULL with an integer.
        Err(_) => {
            r.try_get::<i64, _>("wrapped")
                .map_err(db("read debt entry"))?
                != 0
        }
    };
    Ok(DebtEntry {
        name: r.try_get("name").map_err(db("read debt entry"))?,
        owner: r.try_get("owner").map_err(db("read debt entry"))?,
        created_at: r.try_get("created_at").map_err(db("read debt entry"))?,
        expires_at: r.try_get("expires_at").map_err(db("read debt entry"))?,
        routes: serde_json::from_str(&routes)
            .map_err(|_| StoreError::Corrupt("debt routes are not a JSON list".into()))?,
        fingerprint: r.try_get("fingerprint").map_err(db("read debt entry"))?,
        wrapped,
        key_version: r.try_get("key_version").map_err(db("read debt entry"))?,
        updated_at: r.try_get("updated_at").map_err(db("read debt entry"))?,
        extended_reason: r
            .try_get("extended_reason")
            .map_err(db("read debt entry"))?,
        found_at: r.try_get("found_at").map_err(db("read debt entry"))?,
        last_used_at: r.try_get("last_used_at").map_err(db("read debt entry"))?,
    })
}

impl Store {
    /// Add an entry: with `key`, sealed under the master key (a wrapped key); without, known by
    /// `e.fingerprint` only. `false` if the name is taken. `e.wrapped` and `e.key_version` are
    /// ignored (set from `key`, and 1).
    pub async fn add_debt(
        &self,
        e: &DebtEntry,
        key: Option<&[u8]>,
        kek: &Kek,
    ) -> Result<bool, StoreError> {
        let sealed = key
            .map(|k| kek.seal(sealed_aad(&e.name).as_bytes(), k))
            .transpose()?
            .map(|s| b64().encode(s));
        let routes =
            serde_json::to_string(&e.routes).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let r = sqlx::query("INSERT INTO debt_keys (name, owner, created_at, expires_at, routes, fingerprint, sealed_key, key_version, updated_at, extended_reason, found_at, last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 1, $8, NULL, $9, NULL) ON CONFLICT DO NOTHING")
            .bind(&e.name).bind(&e.owner).bind(e.created_at).bind(e.expires_at).bind(routes)
            .bind(&e.fingerprint).bind(sealed).bind(e.created_at).bind(e.found_at.clone())
            .execute(self.pool()).await.map_err(db("add debt entry"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Every entry, soonest expiry first.
    pub async fn list_debt(&self) -> Result<Vec<DebtEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys ORDER BY expires_at, name"
        )))
        .fetch_all(self.pool())
        .await
        .map_err(db("list debt"))?;
        rows.iter().map(read).collect()
    }

    /// One entry.
    pub async fn get_debt(&self, name: &str) -> Result<Option<DebtEntry>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up debt entry"))?;
        row.as_ref().map(read).transpose()
    }

    /// Entries whose key has this fingerprint (a scanner finding already on the list).
    pub async fn debt_by_fingerprint(&self, fp: &str) -> Result<Vec<DebtEntry>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM debt_keys WHERE fingerprint = $1 ORDER BY name"
        )))
        .bind(fp)
        .fetch_all(self.pool())
        .await
        .map_err(db("look up debt by fingerprint"))?;
        rows.iter().map(read).collect()
    }

    /// A wrapped key, opened: for the proxy. `None` if there is no such entry or it holds no
    /// key.
    pub async fn open_debt_key(
        &self,
        name: &str,
        kek: &Kek,
    ) -> Result<Option<(DebtEntry, Zeroizing<Vec<u8>>)>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS}, sealed_key FROM debt_keys WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(db("look up debt key"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let e = read(&row)?;
        let sealed: Option<String> = row.try_get("sealed_key").map_err(db("read debt key"))?;
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        let sealed = b64()
            .decode(sealed)
            .map_err(|_| StoreError::Corrupt(format!("debt {name}: sealed key is not base64")))?;
        let key = kek.open(sealed_aad(name).as_bytes(), &sealed)?;
        Ok(Some((e, key)))
    }

    /// Replace a wrapped key (also wraps a fingerprint-only entry); bumps its version so that
    /// running proxies load the new one. `false` if there is no such entry.
    pub async fn rotate_debt_key(
        &self,
        name: &str,
        key: &[u8],
        fingerprint: &str,
        now: i64,
        kek: &Kek,
    ) -> Result<bool, StoreError> {
        let sealed = b64().encode(kek.seal(sealed_aad(name).as_bytes(), key)?);
        let r = sqlx::query("UPDATE debt_keys SET sealed_key = $1, fingerprint = $2, key_version = key_version + 1, updated_at = $3 WHERE name = $4")
            .bind(sealed).bind(fingerprint).bind(now).bind(name)
            .execute(self.pool()).await.map_err(db("rotate debt key"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Move an entry's expiry (the reason is kept and audited by the caller). `false` if there
    /// is no such entry.
    pub async fn extend_debt(
        &self,
        name: &str,
        expires_at: i64,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let r = sqlx::query("UPDATE debt_keys SET expires_at = $1, extended_reason = $2, updated_at = $3, key_version = key_version + 1 WHERE name = $4")
            .bind(expires_at).bind(reason).bind(now).bind(name)
            .execute(self.pool()).await.map_err(db("extend debt entry"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Set the routes that use an entry's key.
    pub async fn set_debt_routes(&self, name: &str, routes: &[String]) -> Result<bool, StoreError> {
        let routes =
            serde_json::to_string(routes).map_err(|err| StoreError::Corrupt(err.to_string()))?;
        let r = sqlx::query("UPDATE debt_keys SET routes = $1 WHERE name = $2")
            .bind(routes)
            .bind(name)
            .execute(self.pool())
            .await
            .map_err(db("set debt routes"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Remove an entry (the key is paid off) and its usage records.
    pub async fn remove_debt(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await.map_err(db("begin"))?;
        sqlx::query("DELETE FROM debt_usage WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("remove debt usage"))?;
        let r = sqlx::query("DELETE FROM debt_keys WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db("remove debt entry"))?;
        tx.commit().await.map_err(db("commit"))?;
        Ok(r.rows_affected() == 1)
    }

    /// Record uses aggregated by the proxy since its last flush: per (entry, identity), the
    /// first and last time and the number of calls.
    pub async fn record_debt_usage(&self, uses: &[DebtUsage]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool().begin().await.map_err(db("begin"))?;
        for u in uses {
            let r = sqlx::query("UPDATE debt_usage SET last_used_at = CASE WHEN last_used_at > $1 THEN last_used_at ELSE $1 END, calls = calls + $2 WHERE name = $3 AND identity = $4")
                .bind(u.last_used_at).bind(u.calls).bind(&u.name).bind(&u.identity)
                .execute(&mut *tx).await.map_err(db("record debt usage"))?;
            if r.rows_affected() == 0 {
                sqlx::query("INSERT INTO debt_usage (name, identity, first_used_at, last_used_at, calls) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
                    .bind(&u.name).bind(&u.identity).bind(u.first_used_at).bind(u.last_used_at).bind(u.calls)
                    .execute(&mut *tx).await.map_err(db("record debt usage"))?;
            }
            sqlx::query("UPDATE debt_keys SET last_used_at = $1 WHERE name = $2 AND (last_used_at IS NULL OR last_used_at < $1)")
                .bind(u.last_used_at).bind(&u.name)
                .execute(&mut *tx).await.map_err(db("record debt usage"))?;
        }
        tx.commit().await.map_err(db("commit debt usage"))?;
        Ok(())
    }

    /// The identities that used an entry's key, most recent first.
    pub async fn debt_usage(&self, name: &str) -> Result<Vec<DebtUsage>, StoreError> {
        let rows = sqlx::query("SELECT name, identity, first_used_at, last_used_at, calls FROM debt_usage WHERE name = $1 ORDER BY last_used_at DESC, identity")
            .bind(name)
            .fetch_all(self.pool())
            .await
            .map_err(db("read debt usage"))?;
        rows.iter().map(usage_row).collect()
    }

    /// Every entry's usage in one query (for the inventory), by entry name; each list most
    /// recent first.
    pub async fn all_debt_usage(
        &self,
    ) -> Result<std::collections::HashMap<String, Vec<DebtUsage>>, StoreError> {
        let rows = sqlx::query("SELECT name, identity, first_used_at, last_used_at, calls FROM debt_usage ORDER BY name, last_used_at DESC, identity")
            .fetch_all(self.pool())
            .await
            .map_err(db("read debt usage"))?;
        let mut by_name: std::collections::HashMap<String, Vec<DebtUsage>> =
            std::collections::HashMap::new();
        for r in &rows {
            let u = usage_row(r)?;
            by_name.entry(u.name.clone()).or_default().push(u);
        }
        Ok(by_name)
    }
}

fn usage_row(r: &sqlx::any::AnyRow) -> Result<DebtUsage, StoreError> {
    Ok(DebtUsage {
        name: r.try_get("name").map_err(db("read debt usage"))?,
        identity: r.try_get("identity").map_err(db("read debt usage"))?,
        first_used_at: r.try_get("first_used_at").map_err(db("read debt usage"))?,
        last_used_at: r.try_get("last_used_at").map_err(db("read debt usage"))?,
        calls: r.try_get("calls").map_err(db("read debt usage"))?,
    })
}

#[cfg(test)]
mod date_tests {
    use super::*;

    #[test]
    fn a_key_is_usable_through_its_last_day() {
        // 2027-03-31 is usable through its last second: it stops at 2027-04-01T00:00:00Z.
        assert_eq!(end_of_day("2027-03-31"), Ok(1_806_451_200 + DAY));
        assert_eq!(last_day(1_806_451_200 + DAY), "2027-03-31");
        assert_eq!(end_of_day("1970-01-01"), Ok(DAY));
        assert_eq!(end_of_day("2000-02-29"), Ok(951_782_400 + DAY));
        assert_eq!(end_of_day("2400-02-29"), Ok(13_574_563_200 + DAY));
    }

    #[test]
    fn what_is_not_a_date_is_refused() {
        for bad in [
            "2027-3-31",
            "31.03.2027",
            "2027-02-30",
            "2027-02-29",
            "2100-02-29",
            "2027-13-01",
            "2027-00-10",
            "2027-04-31",
            "2027-04-00",
            "1969-12-31",
            "",
            "2027-03-31T00",
            "+027-03-31",
            "２027-03-3",
        ] {
            assert_eq!(
                end_of_day(bad),
                Err(DebtInputError::NotADate(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn dates_round_trip_every_day_for_four_centuries() {
        let mut t = 0;
        while t < 13_000_000_000 {
            let day = utc_date(t);
            assert_eq!(end_of_day(&day), Ok(t + DAY), "{day}");
            assert_eq!(last_day(t + DAY), day);
            t += DAY;
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
        assert_eq!(utc_date(1_767_225_600), "2026-01-01");
        assert_eq!(utc_date(-1), "1969-12-31");
    }

    #[test]
    fn days_left_counts_whole_days() {
        assert_eq!(days_left(DAY * 10, DAY * 3), 7);
        assert_eq!(days_left(DAY * 10, DAY * 10 - 1), 0);
        assert_eq!(days_left(DAY * 10, DAY * 10 + 1), -1);
    }

    #[test]
    fn fingerprints() {
        let fp = key_fingerprint(b"abc");
        assert_eq!(
            fp,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_fingerprint(&fp.to_ascii_uppercase()), Ok(fp.clone()));
        assert_eq!(short_fingerprint(&fp), "ba7816bf8f01");
        assert_eq!(short_fingerprint("abc"), "abc");
        for bad in [
            "",
            "abc",
            &fp[..63],
            &format!("{fp}0"),
            &fp.replace('b', "g"),
        ] {
            assert_eq!(parse_fingerprint(bad), Err(DebtInputError::BadFingerprint));
        }
    }

    #[test]
    fn entry_names() {
        for ok in ["stripe", "scan-aws-0123456789", "a.b_c-d", &"x".repeat(64)] {
            assert_eq!(check_entry_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "x y", "a/b", "ä", &"x".repeat(65)] {
            assert_eq!(
                check_entry_name(bad),
                Err(DebtInputError::BadName(bad.to_string()))
            );
        }
    }
}
