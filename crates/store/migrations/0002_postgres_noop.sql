-- PostgreSQL keeps the 0001 layout: its primary key is already the table's only unique index.
-- (SQLite runs 0002_sqlite_audit_rowid.sql under the same version number.)
SELECT 1;
