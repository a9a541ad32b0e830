//! The signing-key schedule. A key is *published* (in JWKS) from its creation, *signs* from
//! `not_before` to `not_after`, and stays published until `expires_at`, when every token it can
//! have signed has expired. The next key is created one rotation period before it signs, so
//! verifiers see it well before the first token it signs.

pub use mayfly_proto::keys::{KeyAction, KeyTimes};

/// The rules the schedule follows (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// Rotation period.
    pub rotation: i64,
    /// Longest token lifetime.
    pub max_ttl: i64,
    /// Clock skew tolerated by verifiers.
    pub skew: i64,
}

impl Schedule {
    fn expiry(&self, not_after: i64) -> i64 {
        not_after + self.max_ttl + self.skew
    }

    /// `Cache-Control: max-age` for the JWKS: a quarter of the rotation period, between 1 minute
    /// and 1 hour, so every verifier refetches long before the next key starts signing.
    pub fn jwks_max_age(&self) -> i64 {
        (self.rotation / 4).clamp(60, 3600)
    }
}

/// The key that signs at `now`: the most recently activated one in its signing window.
pub fn current(keys: &[KeyTimes], now: i64) -> Option<&KeyTimes> {
    keys.iter()
        .filter(|k| k.not_before <= now && now < k.not_after)
        .max_by_key(|k| k.not_before)
}

/// Keys in the JWKS at `now`: created, not yet expired.
pub fn published(keys: &[KeyTimes], now: i64) -> impl Iterator<Item = &KeyTimes> {
    keys.iter()
        .filter(move |k| k.created_at <= now && now < k.expires_at)
}

/// What to do at `now` so that there is a current key and a published next key, and no key
/// outlives the tokens it signed.
pub fn plan(keys: &[KeyTimes], now: i64, s: &Schedule) -> Vec<KeyAction> {
    let mut actions: Vec<KeyAction> = keys
        .iter()
        .filter(|k| k.expires_at <= now)
        .map(|k| KeyAction::Remove { kid: k.kid.clone() })
        .collect();
    let cur_end = match current(keys, now) {
        Some(k) => k.not_after,
        None => {
            let na = now + s.rotation;
            actions.push(KeyAction::Create {
                not_before: now,
                not_after: na,
                expires_at: s.expiry(na),
            });
            na
        }
    };
    if !keys
        .iter()
        .any(|k| k.not_before >= cur_end && k.expires_at > now)
    {
        let na = cur_end + s.rotation;
        actions.push(KeyAction::Create {
            not_before: cur_end,
            not_after: na,
            expires_at: s.expiry(na),
        });
    }
    actions
}

/// Rotate now: the next key starts signing at `now`, the current one retires (staying published
/// until its tokens expire). Returns `None` when there is no next key to promote yet.
pub fn rotate_now(keys: &[KeyTimes], now: i64, s: &Schedule) -> Option<Vec<KeyAction>> {
    let cur = current(keys, now)?;
    let next = keys
        .iter()
        .filter(|k| k.not_before >= cur.not_after)
        .min_by_key(|k| k.not_before)?;
    let mut retired = cur.clone();
    retired.not_after = now;
    retired.expires_at = s.expiry(now);
    let mut promoted = next.clone();
    promoted.not_before = now;
    promoted.not_after = now + s.rotation;
    promoted.expires_at = s.expiry(promoted.not_after);
    Some(vec![
        KeyAction::Reschedule(retired),
        KeyAction::Reschedule(promoted),
    ])
}

/// Apply actions to an in-memory list (used by tests and by stores that cache the list).
pub fn apply(
    keys: &mut Vec<KeyTimes>,
    actions: &[KeyAction],
    now: i64,
    mut new_kid: impl FnMut() -> String,
) {
    for a in actions {
        match a {
            KeyAction::Create {
                not_before,
                not_after,
                expires_at,
            } => keys.push(KeyTimes {
                kid: new_kid(),
                created_at: now,
                not_before: *not_before,
                not_after: *not_after,
                expires_at: *expires_at,
            }),
            KeyAction::Reschedule(t) => {
                if let Some(k) = keys.iter_mut().find(|k| k.kid == t.kid) {
                    *k = t.clone();
                }
            }
            KeyAction::Remove { kid } => keys.retain(|k| &k.kid != kid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Schedule = Schedule {
        rotation: 86_400,
        max_ttl: 3_600,
        skew: 30,
    };

    fn run(keys: &mut Vec<KeyTimes>, now: i64, n: &mut u32) {
        let actions = plan(keys, now, &S);
        apply(keys, &actions, now, || {
            *n += 1;
            format!("k{n}")
        });
    }

    #[test]
    fn first_start_creates_current_and_next() {
        let mut keys = vec![];
        let mut n = 0;
        run(&mut keys, 1000, &mut n);
        assert_eq!(keys.len(), 2);
        assert_eq!(current(&keys, 1000).unwrap().kid, "k1");
        assert_eq!(
            published(&keys, 1000).count(),
            2,
            "next key is published before it signs"
        );
        assert!(plan(&keys, 1000, &S).is_empty(), "stable once planned");
    }

    #[test]
    fn a_key_stays_published_while_any_token_it_signed_is_live() {
        let mut keys = vec![];
        let mut n = 0;
        let start = 1_000_000;
        run(&mut keys, start, &mut n);
        // Simulate a week, in ten-minute ticks; at every tick, tokens signed with max_ttl by
        // the current key must find their key in the JWKS until they expire.
        let mut live: Vec<(String, i64)> = vec![];
        let mut t = start;
        while t < start + 7 * 86_400 {
            run(&mut keys, t, &mut n);
            let cur = current(&keys, t).unwrap().kid.clone();
            live.push((cur, t + S.max_ttl));
            live.retain(|(_, exp)| *exp > t);
            for (kid, _) in &live {
                assert!(
                    published(&keys, t).any(|k| &k.kid == kid),
                    "{kid} dropped at {t} while a token is live"
                );
            }
            assert!(keys.len() <= 3, "old keys are removed: {keys:?}");
            t += 600;
        }
        assert!(n >= 7, "rotated daily: {n}");
    }

    #[test]
    fn manual_rotation_promotes_next_and_keeps_old_published() {
        let mut keys = vec![];
        let mut n = 0;
        run(&mut keys, 0, &mut n);
        let actions = rotate_now(&keys, 500, &S).unwrap();
        apply(&mut keys, &actions, 500, || unreachable!());
        run(&mut keys, 500, &mut n);
        assert_eq!(current(&keys, 500).unwrap().kid, "k2");
        assert!(published(&keys, 500 + S.max_ttl).any(|k| k.kid == "k1"));
        assert!(!published(&keys, 500 + S.max_ttl + S.skew).any(|k| k.kid == "k1"));
        assert_eq!(published(&keys, 500).count(), 3);
    }

    #[test]
    fn restart_after_long_downtime_creates_a_fresh_current_key() {
        let mut keys = vec![];
        let mut n = 0;
        run(&mut keys, 0, &mut n);
        run(&mut keys, 30 * 86_400, &mut n);
        assert!(current(&keys, 30 * 86_400).is_some());
        assert!(keys.iter().all(|k| k.expires_at > 30 * 86_400));
    }
}
