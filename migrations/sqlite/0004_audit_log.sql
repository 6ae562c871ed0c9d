-- The audit log: one row per agent request, hash-chained per tenant (src/audit/chain.rs).
-- `record` is the hashed JSON; the other columns are indexed copies for queries.

CREATE TABLE audit_log (
    tenant_id TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at_ms     INTEGER NOT NULL,
    agent     TEXT,
    provider  TEXT,
    status    INTEGER NOT NULL,
    record    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_by_time ON audit_log (tenant_id, at_ms);

CREATE TRIGGER audit_log_is_append_only BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
