-- SQLite only (PostgreSQL runs 0002_postgres_noop.sql). The audit table is append-only by
-- sequence number: make `seq` the rowid itself, so an append writes one B-tree instead of the
-- table, a separate unique index on `seq` and an index on `ts`. Group commit then writes about
-- half the WAL pages per batch. The replay window is rebuilt by walking back from the newest
-- event, which needs no `ts` index.
CREATE TABLE audit_events_v2 (
    seq INTEGER PRIMARY KEY,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    jti TEXT,
    body TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO audit_events_v2 (seq, ts, kind, jti, body, prev_hash, hash)
    SELECT seq, ts, kind, jti, body, prev_hash, hash FROM audit_events ORDER BY seq;
DROP TABLE audit_events;
ALTER TABLE audit_events_v2 RENAME TO audit_events;
