-- Key debt (portable SQL): every static key that still exists, with an owner and an expiry date.
-- A key the proxy wraps is stored sealed under the master key (bound to the entry's name); a key
-- the scanner found but nobody has wrapped yet is known by its SHA-256 fingerprint only.
CREATE TABLE debt_keys (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    -- First second the key may no longer be used (the day after the expiry date, 00:00 UTC).
    expires_at BIGINT NOT NULL,
    routes TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    sealed_key TEXT,
    key_version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    extended_reason TEXT,
    found_at TEXT,
    last_used_at BIGINT
);
CREATE INDEX debt_keys_fingerprint ON debt_keys (fingerprint);

-- Which workload identities still use each key, and when they last did.
CREATE TABLE debt_usage (
    name TEXT NOT NULL,
    identity TEXT NOT NULL,
    first_used_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    calls BIGINT NOT NULL,
    PRIMARY KEY (name, identity)
);
