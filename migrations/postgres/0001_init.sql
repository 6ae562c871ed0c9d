-- SEKS schema (PostgreSQL): the same tables as the SQLite store's migrations 0001–0006 end
-- with. Times are Unix seconds (audit: Unix ms). Every row carries its tenant. Names and
-- ids that lists are ordered by use the "C" collation: byte order, as in SQLite.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

INSERT INTO tenants (id, name, created_at)
VALUES ('default', 'default', extract(epoch FROM now())::BIGINT);

CREATE TABLE secrets (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants (id),
    name        TEXT COLLATE "C" NOT NULL,
    provider    TEXT NOT NULL,
    ciphertext  BYTEA NOT NULL,
    nonce       BYTEA NOT NULL,
    wrapped_key BYTEA NOT NULL,
    wrap_nonce  BYTEA NOT NULL,
    key_version BIGINT NOT NULL,
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    rotated_at  BIGINT,
    UNIQUE (tenant_id, name)
);

CREATE TABLE tokens (
    id           TEXT COLLATE "C" PRIMARY KEY,
    tenant_id    TEXT NOT NULL REFERENCES tenants (id),
    agent        TEXT NOT NULL,
    secret_id    TEXT NOT NULL REFERENCES secrets (id) ON DELETE CASCADE,
    token_hash   BYTEA NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    expires_at   BIGINT,
    revoked_at   BIGINT,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT,
    parent_id    TEXT REFERENCES tokens (id) ON DELETE CASCADE,
    policy       TEXT,
    policy_name  TEXT
);

CREATE INDEX tokens_by_secret ON tokens (secret_id);
CREATE INDEX tokens_by_parent ON tokens (parent_id);

CREATE TABLE policies (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT COLLATE "C" NOT NULL,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

CREATE TABLE approvals (
    id         TEXT PRIMARY KEY,
    -- Insertion order: ids are random, so this breaks ties within a second.
    ord        BIGSERIAL NOT NULL,
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    token_id   TEXT NOT NULL,
    summary    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
    reason     TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    decided_at BIGINT,
    decided_by TEXT
);

CREATE INDEX approvals_by_state ON approvals (tenant_id, state, created_at);

CREATE TABLE usage (
    token_id TEXT COLLATE "C" NOT NULL,
    day      BIGINT NOT NULL,
    requests BIGINT NOT NULL,
    tokens   BIGINT NOT NULL,
    PRIMARY KEY (token_id, day)
);

-- The audit log, one row per written batch (src/store/audit_batch.rs): `records` holds one
-- line per record, `seq \t prev_hash \t hash \t record JSON`; the other columns are an index
-- for queries that `seks audit verify` checks against the lines.
CREATE TABLE audit_batches (
    tenant_id TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq  BIGINT NOT NULL,
    min_at_ms BIGINT NOT NULL,
    max_at_ms BIGINT NOT NULL,
    last_hash TEXT NOT NULL,
    records   TEXT NOT NULL,
    PRIMARY KEY (tenant_id, first_seq)
);
CREATE INDEX audit_batches_by_time ON audit_batches (tenant_id, max_at_ms);

CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;
CREATE TRIGGER audit_batches_are_append_only BEFORE UPDATE ON audit_batches
FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();

-- Capabilities added with `seks capability add`; `spec` names a secret, never holds one.
CREATE TABLE capabilities (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT COLLATE "C" NOT NULL,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- A counter bumped, in the changing transaction, by every change running brokers must see
-- (secrets, token state and policy, named policies, capabilities). Brokers poll it to drop
-- their caches. New tokens and last_used_at updates don't count.
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);

INSERT INTO revision (id, value) VALUES (1, 0);

CREATE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    RETURN NULL;
END;
$$;

CREATE TRIGGER secrets_change_bumps_revision AFTER INSERT OR UPDATE OR DELETE ON secrets
FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE TRIGGER tokens_update_bumps_revision
AFTER UPDATE OF agent, secret_id, token_hash, expires_at, revoked_at, parent_id, policy, policy_name
ON tokens FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE TRIGGER tokens_delete_bumps_revision AFTER DELETE ON tokens
FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE TRIGGER policies_change_bumps_revision AFTER INSERT OR UPDATE OR DELETE ON policies
FOR EACH ROW EXECUTE FUNCTION bump_revision();
CREATE TRIGGER capabilities_change_bumps_revision AFTER INSERT OR UPDATE OR DELETE ON capabilities
FOR EACH ROW EXECUTE FUNCTION bump_revision();
