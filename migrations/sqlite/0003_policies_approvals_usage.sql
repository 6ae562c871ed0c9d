-- Policies (per token and named), child tokens, held requests awaiting approval, and
-- daily usage counters.

CREATE TABLE policies (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

ALTER TABLE tokens ADD COLUMN parent_id TEXT REFERENCES tokens (id) ON DELETE CASCADE;
ALTER TABLE tokens ADD COLUMN policy TEXT;
ALTER TABLE tokens ADD COLUMN policy_name TEXT;
CREATE INDEX tokens_by_parent ON tokens (parent_id);

DROP TRIGGER tokens_update_bumps_revision;
CREATE TRIGGER tokens_update_bumps_revision
AFTER UPDATE OF agent, secret_id, token_hash, expires_at, revoked_at, parent_id, policy, policy_name ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

CREATE TRIGGER policies_insert_bumps_revision AFTER INSERT ON policies
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER policies_update_bumps_revision AFTER UPDATE ON policies
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER policies_delete_bumps_revision AFTER DELETE ON policies
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

CREATE TABLE approvals (
    id         TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    token_id   TEXT NOT NULL,
    summary    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    reason     TEXT,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    decided_at INTEGER,
    decided_by TEXT
);

CREATE INDEX approvals_by_state ON approvals (tenant_id, state, created_at);

CREATE TABLE usage (
    token_id TEXT NOT NULL,
    day      INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens   INTEGER NOT NULL,
    PRIMARY KEY (token_id, day)
);
