-- SigV4 signatures the replicas admitted (src/sigv4/replay.rs), so that a signed request
-- captured on its way to one replica is a replay at every other. Times are the database's
-- clock (Unix milliseconds).
CREATE TABLE signature_claims (
    signature BYTEA PRIMARY KEY,
    first_ms  BIGINT NOT NULL,
    lapses_ms BIGINT NOT NULL
);
CREATE INDEX signature_claims_by_lapse ON signature_claims (lapses_ms);

-- Claim `sig` for `lapse_ms`; how many milliseconds ago it was first claimed (0: now). Each
-- call also forgets a few lapsed claims, so the table holds about what the skew window admits.
CREATE FUNCTION claim_signature(sig BYTEA, lapse_ms BIGINT)
RETURNS BIGINT LANGUAGE plpgsql AS $$
DECLARE
    now_ms BIGINT := (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT;
    first  BIGINT;
BEGIN
    DELETE FROM signature_claims WHERE signature IN (
        SELECT signature FROM signature_claims WHERE lapses_ms < now_ms
        LIMIT 4 FOR UPDATE SKIP LOCKED);
    INSERT INTO signature_claims (signature, first_ms, lapses_ms)
    VALUES (sig, now_ms, now_ms + lapse_ms) ON CONFLICT (signature) DO NOTHING;
    SELECT first_ms INTO first FROM signature_claims WHERE signature = sig;
    RETURN now_ms - first;
END;
$$;
