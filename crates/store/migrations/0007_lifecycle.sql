-- Portable SQL. The lifecycle of issued credentials: every access token and JWT-SVID we issue
-- (its status-list slot, its lease), leases, status-list index allocation, and webhook
-- deliveries already acted on.

-- One row per issued access token or JWT-SVID, kept until it expires: what operator
-- revocation selects on, what a lease's end revokes, and where each revoked token's status
-- bit lies.
-- Keyed by (expires_at, jti), not jti alone: tokens are issued in order of expiry (mostly), so
-- each insert lands at the right edge of the key instead of on a random page (a random jti key
-- dirtied one page per token and cost a quarter of the token path in WAL writes). Every
-- revocation row carries its token's exp, so lookups from revocations use the whole key;
-- JWT-SVIDs, whose revocations do not, have their own index by jti.
CREATE TABLE issued_tokens (
    jti TEXT NOT NULL,
    kind TEXT NOT NULL,             -- 'token' | 'svid'
    client_id TEXT NOT NULL,        -- the token's client ('-' when none authenticated)
    identity TEXT NOT NULL,         -- the token's subject (client id or SPIFFE ID)
    issuer TEXT,                    -- the trusted issuer a subject token came from, if any
    lease_id TEXT,
    list_id BIGINT,
    idx BIGINT,
    issued_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (expires_at, jti)
);
CREATE INDEX issued_tokens_svid ON issued_tokens (jti) WHERE kind = 'svid';
CREATE INDEX issued_tokens_lease ON issued_tokens (lease_id) WHERE lease_id IS NOT NULL;
CREATE INDEX issued_tokens_client ON issued_tokens (client_id);
CREATE INDEX issued_tokens_identity ON issued_tokens (identity);
-- No index on (list_id, idx): a list's revoked bits are found from the revocations, which
-- are few, joined on the key.

-- A lease: tokens issued under it live only as long as it does.
CREATE TABLE leases (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,             -- 'grant' | 'ci'
    owner TEXT NOT NULL,            -- the principal that opened it (token `sub`)
    client_id TEXT NOT NULL,
    grace BIGINT,                   -- heartbeat grace in seconds; NULL: no heartbeat
    heartbeat_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,     -- hard end, whatever the heartbeat
    ended_at BIGINT,
    end_reason TEXT,
    ci_provider TEXT,
    ci_project TEXT,
    ci_run TEXT,
    ci_attempt TEXT,
    ci_job TEXT
);
CREATE INDEX leases_open ON leases (ended_at, expires_at);
CREATE INDEX leases_ci ON leases (ci_provider, ci_project, ci_run);

-- Status lists: indexes are handed out in blocks by bumping next_idx in one statement, so
-- replicas never collide.
CREATE TABLE status_lists (
    id BIGINT PRIMARY KEY,
    size BIGINT NOT NULL,
    next_idx BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    last_exp BIGINT NOT NULL        -- the latest exp of a token in the list (publish until then)
);

-- Webhook deliveries already acted on (a replayed delivery is ignored).
CREATE TABLE webhook_deliveries (
    source TEXT NOT NULL,
    delivery TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, delivery)
);
CREATE INDEX webhook_deliveries_expires ON webhook_deliveries (expires_at);
