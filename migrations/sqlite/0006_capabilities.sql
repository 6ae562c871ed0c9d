-- Capabilities added with `seks capability add` (those in the config file are not stored).
-- `spec` is the JSON of a capability definition; it holds the name of a secret, never a
-- secret.

CREATE TABLE capabilities (
    tenant_id  TEXT NOT NULL REFERENCES tenants (id),
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- Running brokers reload capabilities when the revision moves.
CREATE TRIGGER capabilities_insert_bumps_revision AFTER INSERT ON capabilities
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER capabilities_update_bumps_revision AFTER UPDATE ON capabilities
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER capabilities_delete_bumps_revision AFTER DELETE ON capabilities
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
