-- Rollup tiers compressed by column, for the read store with TimescaleDB (issue 24).
--
-- The packed arrays of 0050 hardly compress on TimescaleDB: an array is one value to its
-- compression, and a float8 holding a decimal reading keeps most of its 64 bits through
-- Gorilla's XOR. Measured (docs/benchmarks.md, "Rows compressed by column"): 7.7-27 bytes a
-- bucket with float8 values, 3.3-6.6 with the same values as scaled integers, which
-- delta-delta and simple8b take in a few bits.
--
-- So with TimescaleDB the retention job packs buckets past a tier's grace into
-- rollup_<tier>_columnar instead: one row per bucket, in a hypertable compressed by
-- series (0080), values kept as integers with their decimal places (`scale`) wherever
-- that is exact, as float8 (scale NULL) where it is not. On plain PostgreSQL the table
-- exists and stays empty: the packed arrays are the smaller layout there.
--
-- A bucket's min and max are readings: they are kept as m = round(v * 10^scale) only where
-- m / 10^scale gives the same double back. Its sum, of n readings, is kept so where
-- |v * 10^scale - m| <= (n - 1) * 2^-52 * |v * 10^scale| too: within the float sum's own
-- error bound, as the exact decimal sum that the float sum approximates. Below 2^53 only.
-- A bucket whose sum, min or max does not pass keeps all three as float8.

CREATE TABLE read_models.rollup_minute_columnar (
    device_id  text NOT NULL,
    metric     text NOT NULL,
    bucket     timestamptz NOT NULL,
    count      bigint NOT NULL,
    scale      smallint,  -- decimal places of the *_scaled values; NULL: sum, min, max hold them
    sum_scaled bigint,
    min_scaled bigint,
    max_scaled bigint,
    sum        double precision,
    min        double precision,
    max        double precision,
    PRIMARY KEY (device_id, metric, bucket)
);
-- No index on bucket alone: with TimescaleDB chunks are found and dropped by their range.
CREATE TABLE read_models.rollup_hour_columnar (LIKE read_models.rollup_minute_columnar
    INCLUDING ALL);
CREATE TABLE read_models.rollup_day_columnar (LIKE read_models.rollup_minute_columnar
    INCLUDING ALL);

-- 10^p, exact, for p from 0 to 9.
CREATE FUNCTION read_models.power_of_ten(p int2) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ('{1e0,1e1,1e2,1e3,1e4,1e5,1e6,1e7,1e8,1e9}'::float8[])[p + 1]
$$;

-- v, a value of a bucket of n readings, as an integer of ``places`` decimal places; NULL
-- where that is not exact (see above). Plain expressions, so that the planner inlines them.
CREATE FUNCTION read_models.scaled(v float8, places int2, n int8) RETURNS int8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN abs(v * read_models.power_of_ten(places)) < 9007199254740992
                 AND (round(v * read_models.power_of_ten(places))
                          / read_models.power_of_ten(places) = v
                      OR abs(v * read_models.power_of_ten(places)
                             - round(v * read_models.power_of_ten(places)))
                         <= (n - 1) * 2.220446049250313e-16
                            * abs(v * read_models.power_of_ten(places)))
                THEN round(v * read_models.power_of_ten(places))::int8
           END
$$;

-- The decimal places of v's shortest text that reads back as v (PostgreSQL's float8 output):
-- 21.37 has 2; NULL for exponent notation, NaN and infinities, or more than 9 places.
CREATE FUNCTION read_models.decimal_places(v float8) RETURNS int2
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN v::text !~ '^-?[0-9]+(\.[0-9]{1,9})?$' THEN NULL
                WHEN strpos(v::text, '.') = 0 THEN 0
                ELSE length(v::text) - strpos(v::text, '.')
           END::int2
$$;

-- A stored value: the scaled integer over 10^scale, or the float8 where scale is NULL. An
-- integer below 2^53 and a power of ten are exact doubles, and IEEE division rounds
-- correctly: the decimal comes back as the double nearest to it.
CREATE FUNCTION read_models.unscaled(scaled int8, scale int2, raw float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN scale IS NULL THEN raw
                ELSE scaled / read_models.power_of_ten(scale)
           END
$$;

-- A bucket of n readings' sum, min and max as stored: all three scaled to ``places``, or,
-- where one of them is not exact at it (or places is NULL), all three as float8. PL/pgSQL,
-- planned once a session: inlined as SQL, its nested expressions took longer to plan than
-- a round of the retention job takes to run.
CREATE FUNCTION read_models.rollup_encode(s float8, lo float8, hi float8, places int2, n int8)
RETURNS TABLE (scale int2, sum_scaled int8, min_scaled int8, max_scaled int8, sum float8,
               min float8, max float8)
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    ss int8 := read_models.scaled(s, places, n);
    sl int8 := read_models.scaled(lo, places, 1);
    sh int8 := read_models.scaled(hi, places, 1);
BEGIN
    IF ss IS NOT NULL AND sl IS NOT NULL AND sh IS NOT NULL THEN
        RETURN QUERY SELECT places, ss, sl, sh, NULL::float8, NULL::float8, NULL::float8;
    ELSE
        RETURN QUERY SELECT NULL::int2, NULL::int8, NULL::int8, NULL::int8, s, lo, hi;
    END IF;
END
$$;

-- One row per bucket, all three halves merged: the tables' former shape.
CREATE OR REPLACE VIEW read_models.rollup_minute AS
SELECT device_id, metric, bucket, sum(count)::bigint AS count, sum(sum) AS sum,
       min(min) AS min, max(max) AS max
FROM (
    SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_minute_recent
    UNION ALL
    SELECT p.device_id, p.metric, p.period + (u.i - 1) * INTERVAL '1 minute', u.c, u.s, u.lo,
           u.hi
    FROM read_models.rollup_minute_packed p,
         unnest(p.counts, p.sums, p.mins, p.maxs) WITH ORDINALITY AS u(c, s, lo, hi, i)
    WHERE u.c IS NOT NULL
    UNION ALL
    SELECT device_id, metric, bucket, count,
           read_models.unscaled(sum_scaled, scale, sum),
           read_models.unscaled(min_scaled, scale, min),
           read_models.unscaled(max_scaled, scale, max)
    FROM read_models.rollup_minute_columnar
) AS b
GROUP BY device_id, metric, bucket;

CREATE OR REPLACE VIEW read_models.rollup_hour AS
SELECT device_id, metric, bucket, sum(count)::bigint AS count, sum(sum) AS sum,
       min(min) AS min, max(max) AS max
FROM (
    SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_hour_recent
    UNION ALL
    SELECT p.device_id, p.metric, p.period + (u.i - 1) * INTERVAL '1 hour', u.c, u.s, u.lo,
           u.hi
    FROM read_models.rollup_hour_packed p,
         unnest(p.counts, p.sums, p.mins, p.maxs) WITH ORDINALITY AS u(c, s, lo, hi, i)
    WHERE u.c IS NOT NULL
    UNION ALL
    SELECT device_id, metric, bucket, count,
           read_models.unscaled(sum_scaled, scale, sum),
           read_models.unscaled(min_scaled, scale, min),
           read_models.unscaled(max_scaled, scale, max)
    FROM read_models.rollup_hour_columnar
) AS b
GROUP BY device_id, metric, bucket;

CREATE OR REPLACE VIEW read_models.rollup_day AS
SELECT device_id, metric, bucket, sum(count)::bigint AS count, sum(sum) AS sum,
       min(min) AS min, max(max) AS max
FROM (
    SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_day_recent
    UNION ALL
    SELECT p.device_id, p.metric, p.period + (u.i - 1) * INTERVAL '1 day', u.c, u.s, u.lo,
           u.hi
    FROM read_models.rollup_day_packed p,
         unnest(p.counts, p.sums, p.mins, p.maxs) WITH ORDINALITY AS u(c, s, lo, hi, i)
    WHERE u.c IS NOT NULL
    UNION ALL
    SELECT device_id, metric, bucket, count,
           read_models.unscaled(sum_scaled, scale, sum),
           read_models.unscaled(min_scaled, scale, min),
           read_models.unscaled(max_scaled, scale, max)
    FROM read_models.rollup_day_columnar
) AS b
GROUP BY device_id, metric, bucket;

-- Grafana's reader sees the new relations (views are not covered by default privileges).
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'iotp_grafana_reader') THEN
        GRANT SELECT ON ALL TABLES IN SCHEMA read_models TO iotp_grafana_reader;
    END IF;
END
$$;
