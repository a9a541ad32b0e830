-- SPIFFE (portable SQL). X.509 CAs and JWT-SVID signing keys share one table and the signing
-- keys' lifecycle (published before they sign, kept until what they signed has expired).
CREATE TABLE spiffe_authorities (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    not_before BIGINT NOT NULL,
    not_after BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    public TEXT NOT NULL,
    sealed_private TEXT NOT NULL
);

-- Registration entries: a workload whose selectors include all of `selectors` (JSON array,
-- sorted) under the agent `parent_id` gets `spiffe_id`.
CREATE TABLE spiffe_entries (
    id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    parent_id TEXT NOT NULL,
    selectors TEXT NOT NULL,
    x509_ttl BIGINT NOT NULL,
    jwt_ttl BIGINT NOT NULL,
    dns_names TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (parent_id, spiffe_id, selectors)
);
CREATE INDEX spiffe_entries_parent ON spiffe_entries (parent_id);

-- Join tokens: only a SHA-256 of the secret part is kept. Single use: used_at is set once.
CREATE TABLE join_tokens (
    id TEXT PRIMARY KEY,
    secret_sha256 TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    agent_id TEXT
);

-- Attested agents and the serial of the X.509-SVID they last received.
CREATE TABLE spiffe_agents (
    spiffe_id TEXT PRIMARY KEY,
    attestation TEXT NOT NULL,
    serial TEXT NOT NULL,
    attested_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);

-- JWT-SVIDs revoked because the workload they were handed to has exited, and the access
-- tokens minted from each JWT-SVID (so those can be revoked with it).
CREATE TABLE revoked_svids (
    jti TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX revoked_svids_expires ON revoked_svids (expires_at);
CREATE TABLE svid_tokens (
    svid_jti TEXT NOT NULL,
    token_jti TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (svid_jti, token_jti)
);
CREATE INDEX svid_tokens_expires ON svid_tokens (expires_at);
