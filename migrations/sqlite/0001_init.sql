-- SEKS schema v1 (SQLite). Times are Unix seconds. Every row carries its tenant.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

INSERT INTO tenants (id, name, created_at) VALUES ('default', 'default', unixepoch());

CREATE TABLE secrets (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT NOT NULL,
    provider    TEXT NOT NULL,
    ciphertext  BLOB NOT NULL,
    nonce       BLOB NOT NULL,
    wrapped_key BLOB NOT NULL,
    wrap_nonce  BLOB NOT NULL,
    key_version INTEGER NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    rotated_at  INTEGER,
    UNIQUE (tenant_id, name)
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    agent        TEXT NOT NULL,
    secret_id    TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    token_hash   BLOB NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    expires_at   INTEGER,
    revoked_at   INTEGER,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);

CREATE INDEX tokens_by_secret ON tokens (secret_id);

-- A counter bumped by every change that running brokers must see (revocation, rotation,
-- removal). Brokers poll it to drop their caches. Inserts don't count (nothing cached
-- can be stale because of a new row), nor do last_used_at updates.
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);

INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TRIGGER secrets_update_bumps_revision AFTER UPDATE ON secrets
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER secrets_delete_bumps_revision AFTER DELETE ON secrets
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER tokens_update_bumps_revision
AFTER UPDATE OF agent, secret_id, token_hash, expires_at, revoked_at ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER tokens_delete_bumps_revision AFTER DELETE ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
