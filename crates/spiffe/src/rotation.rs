//! When to renew an SVID: at half its lifetime, so a failed renewal leaves the other half to
//! retry in, and a fleet's renewals spread out with their issue times. `now` is always passed in.

/// The instant (unix seconds) at which an SVID valid from `not_before` to `not_after` should be
/// renewed: the middle of its lifetime. An empty or inverted window renews at `not_before`.
pub fn renew_at(not_before: i64, not_after: i64) -> i64 {
    let lifetime = not_after.saturating_sub(not_before).max(0);
    not_before.saturating_add(lifetime / 2)
}

/// Whether a cached SVID valid from `not_before` to `not_after` must be renewed at `now`: its
/// renewal time has come (which includes being expired).
pub fn needs_renewal(not_before: i64, not_after: i64, now: i64) -> bool {
    now >= renew_at(not_before, not_after)
}

/// Seconds from `now` until the SVID should be renewed; zero when it is due already.
pub fn renew_in(not_before: i64, not_after: i64, now: i64) -> u64 {
    u64::try_from(renew_at(not_before, not_after).saturating_sub(now)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_the_lifetime() {
        assert_eq!(renew_at(1000, 4600), 2800);
        assert_eq!(renew_at(1000, 1001), 1000);
        assert_eq!(renew_at(1000, 900), 1000, "inverted window: renew now");
        assert_eq!(renew_at(i64::MIN, i64::MAX), i64::MIN + i64::MAX / 2);

        assert!(!needs_renewal(1000, 4600, 2799));
        assert!(needs_renewal(1000, 4600, 2800));
        assert!(needs_renewal(1000, 4600, 9999), "expired");
        assert_eq!(renew_in(1000, 4600, 1000), 1800);
        assert_eq!(renew_in(1000, 4600, 5000), 0);
    }
}
