-- Portable SQL. Tokens derived from other tokens of ours (narrowed, exchanged with one of ours
-- as subject or as actor): one row per (parent, child), so that revoking a token revokes every
-- token derived from it, at any depth. A row lives as long as the child.
CREATE TABLE token_parents (
    parent_jti TEXT NOT NULL,
    child_jti TEXT NOT NULL,
    client_id TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (parent_jti, child_jti)
);
CREATE INDEX token_parents_expires ON token_parents (expires_at);
