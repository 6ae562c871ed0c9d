-- Brokers load every secret into their scrubber, so a new secret must reach them too.
CREATE TRIGGER secrets_insert_bumps_revision AFTER INSERT ON secrets
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
