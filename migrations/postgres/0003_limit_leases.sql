-- Limits shared by broker replicas (src/policy/leases.rs). Replicas lease from these rows in
-- chunks and count locally, so a request rarely waits on the database. Times are the
-- database's clock (Unix microseconds for rates, milliseconds for slots), so the replicas'
-- clocks need not agree.

-- A generic cell rate (GCRA) per key: `tat_us` is the theoretical arrival time of the next
-- request.
CREATE TABLE rate_leases (
    key    TEXT PRIMARY KEY,
    tat_us BIGINT NOT NULL
);

-- Take up to `want` requests of a rate of one per `interval_us`, of which up to `burst_us`
-- worth may come early; returns how many were granted.
CREATE FUNCTION lease_rate(lease_key TEXT, want BIGINT, interval_us BIGINT, burst_us BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    now_us  BIGINT := (extract(epoch FROM now()) * 1000000)::BIGINT;
    base    BIGINT;
    granted BIGINT;
BEGIN
    INSERT INTO rate_leases (key, tat_us) VALUES (lease_key, now_us) ON CONFLICT (key) DO NOTHING;
    SELECT GREATEST(tat_us, now_us) INTO base FROM rate_leases WHERE key = lease_key FOR UPDATE;
    granted := CASE WHEN now_us + burst_us < base THEN 0
                    ELSE LEAST(want, (now_us + burst_us - base) / interval_us + 1) END;
    UPDATE rate_leases SET tat_us = base + granted * interval_us WHERE key = lease_key;
    RETURN granted;
END;
$$;

-- Concurrency slots each replica holds per key, until `expires_ms` unless renewed.
CREATE TABLE slot_leases (
    key        TEXT NOT NULL,
    replica    TEXT NOT NULL,
    slots      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (key, replica)
);

-- Set what `holder` holds of `key`'s `max_slots` to `want`, or to what the other replicas
-- leave free, for `ttl_ms`; returns what it holds now.
CREATE FUNCTION lease_slots(lease_key TEXT, holder TEXT, want BIGINT, max_slots BIGINT,
                            ttl_ms BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM now()) * 1000)::BIGINT;
    others BIGINT;
    held   BIGINT;
BEGIN
    -- One replica at a time per key, so two can't both count the same free slots.
    PERFORM pg_advisory_xact_lock(hashtextextended('seks slots ' || lease_key, 0));
    DELETE FROM slot_leases WHERE key = lease_key AND expires_ms <= now_ms;
    SELECT COALESCE(SUM(slots), 0) INTO others FROM slot_leases
    WHERE key = lease_key AND replica <> holder;
    held := GREATEST(0, LEAST(want, max_slots - others));
    INSERT INTO slot_leases (key, replica, slots, expires_ms)
    VALUES (lease_key, holder, held, now_ms + ttl_ms)
    ON CONFLICT (key, replica) DO UPDATE SET slots = excluded.slots, expires_ms = excluded.expires_ms;
    RETURN held;
END;
$$;
