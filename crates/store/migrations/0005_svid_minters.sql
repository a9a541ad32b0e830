-- Which agent minted each JWT-SVID (portable SQL), so that a workload-exit report revokes only
-- JWT-SVIDs the reporting agent minted. Kept until the JWT-SVID expires.
CREATE TABLE svid_minters (
    jti TEXT PRIMARY KEY,
    agent_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX svid_minters_expires ON svid_minters (expires_at);
