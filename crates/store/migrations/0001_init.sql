-- Portable SQL: runs unchanged on SQLite and PostgreSQL.
CREATE TABLE signing_keys (
    kid TEXT PRIMARY KEY,
    alg TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    public_jwk TEXT NOT NULL,
    sealed_private TEXT NOT NULL
);

CREATE TABLE used_jti (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
CREATE INDEX used_jti_expires ON used_jti (expires_at);

CREATE TABLE revoked_tokens (
    jti TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_tokens_expires ON revoked_tokens (expires_at);

CREATE TABLE clients (
    id TEXT PRIMARY KEY,
    jwks TEXT NOT NULL,
    audiences TEXT NOT NULL,
    scopes TEXT NOT NULL,
    max_ttl BIGINT,
    created_at BIGINT NOT NULL
);

CREATE TABLE audit_events (
    seq BIGINT PRIMARY KEY,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    jti TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
-- By time, for rebuilding the replay window at start; lookups by jti scan (operator tools only).
CREATE INDEX audit_events_ts ON audit_events (ts);

-- One row: the chain head. Every append updates it first, which takes the write lock (SQLite)
-- or the row lock (PostgreSQL), so writers in several processes append one at a time.
CREATE TABLE audit_head (
    id INTEGER PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, updated_at)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);
