-- Running brokers LISTEN on `seks_changes`, so a change reaches every replica at once rather
-- than at its next poll of the revision. The notification is queued by the changing
-- transaction and delivered when it commits (never for one that rolls back); identical
-- ones in one transaction are delivered once.
CREATE OR REPLACE FUNCTION bump_revision() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE revision SET value = value + 1 WHERE id = 1;
    PERFORM pg_notify('seks_changes', '');
    RETURN NULL;
END;
$$;
