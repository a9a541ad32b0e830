//! The one `Cache-Control` question mayfly asks of a response it fetched: how long may it be kept?

/// What a `Cache-Control` value says about keeping the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// `no-store` or `no-cache`: refetch as soon as allowed.
    DoNotKeep,
    /// `max-age=N`.
    MaxAge(u64),
    /// Nothing usable.
    Unspecified,
}

/// Read a `Cache-Control` header value (directives are case-insensitive; `no-store` and
/// `no-cache` win over `max-age`; an unparsable `max-age` counts as unspecified).
pub fn freshness(value: &str) -> Freshness {
    let mut max_age = None;
    for d in value.split(',').map(str::trim) {
        let (name, arg) = match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (d, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Freshness::DoNotKeep;
        }
        if name.eq_ignore_ascii_case("max-age") {
            max_age = arg.and_then(|a| a.parse::<u64>().ok());
        }
    }
    max_age.map_or(Freshness::Unspecified, Freshness::MaxAge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert_eq!(freshness("public, max-age=3600"), Freshness::MaxAge(3600));
        assert_eq!(freshness("Max-Age = \"60\""), Freshness::MaxAge(60));
        assert_eq!(freshness("max-age=60, no-cache"), Freshness::DoNotKeep);
        assert_eq!(freshness("NO-STORE"), Freshness::DoNotKeep);
        assert_eq!(freshness("max-age=-1"), Freshness::Unspecified);
        assert_eq!(freshness("private"), Freshness::Unspecified);
        assert_eq!(freshness(""), Freshness::Unspecified);
    }
}
