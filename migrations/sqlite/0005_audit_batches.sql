-- The audit log, one row per written batch rather than per record: SQLite then does one
-- insert per batch, which keeps the log's cost on the request path small.
--
-- `records` holds one line per record, `seq \t prev_hash \t hash \t record JSON`, in
-- sequence order (record JSON never contains a raw tab or newline). The other columns are
-- an index for queries; `seks audit verify` checks them against the lines.

CREATE TABLE audit_batches (
    tenant_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    last_seq  INTEGER NOT NULL,
    min_at_ms INTEGER NOT NULL,
    max_at_ms INTEGER NOT NULL,
    last_hash TEXT NOT NULL,
    records   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, first_seq)
);
CREATE INDEX audit_batches_by_time ON audit_batches (tenant_id, max_at_ms);

CREATE TRIGGER audit_batches_are_append_only BEFORE UPDATE ON audit_batches
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;

INSERT INTO audit_batches (tenant_id, first_seq, last_seq, min_at_ms, max_at_ms, last_hash, records)
SELECT tenant_id, seq, seq, at_ms, at_ms, hash,
       seq || char(9) || prev_hash || char(9) || hash || char(9) || record
FROM audit_log;

DROP TABLE audit_log;
