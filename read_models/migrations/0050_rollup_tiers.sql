-- Rollup tiers in a compact layout (issue 24).
--
-- Each tier (minute, hour, day) has two tables:
--   rollup_<tier>_recent: one row per device, metric and bucket, upserted by the aggregators
--       (cheap narrow updates while a bucket is still filling, late data included);
--   rollup_<tier>_packed: one row per device, metric and period holding that period's
--       buckets as arrays (60 minutes an hour, 168 hours a week, 32 days a block), NULL where
--       a bucket has no data. A bucket takes about 30 bytes packed, against 155 to 179 as a
--       row with its index (docs/benchmarks.md, `iotp bench growth`).
-- The retention job (read_models/retention.py) moves buckets from recent to packed once
-- they are past the tier's grace, merging with what is packed already (counts and sums
-- add, min and max compare), and deletes packed periods older than the tier's retention.
-- The view rollup_<tier> shows both as one row per bucket, in the shape the tables had, so
-- that readers (Grafana, psql, scripts) keep working: a bucket can be in both halves for a
-- while (a late reading), and the view merges them.

ALTER TABLE read_models.rollup_minute RENAME TO rollup_minute_recent;
ALTER TABLE read_models.rollup_hour RENAME TO rollup_hour_recent;
ALTER INDEX read_models.rollup_minute_pkey RENAME TO rollup_minute_recent_pkey;
ALTER INDEX read_models.rollup_hour_pkey RENAME TO rollup_hour_recent_pkey;

CREATE TABLE read_models.rollup_day_recent (
    device_id text NOT NULL,
    metric    text NOT NULL,
    bucket    timestamptz NOT NULL,
    count     bigint NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);
INSERT INTO read_models.rollup_day_recent
SELECT device_id, metric, date_bin('1 day', bucket, 'epoch'), sum(count), sum(sum), min(min),
       max(max)
FROM read_models.rollup_hour_recent GROUP BY 1, 2, 3;

-- The job finds what to pack and what to delete by time.
CREATE INDEX rollup_minute_recent_bucket ON read_models.rollup_minute_recent (bucket);
CREATE INDEX rollup_hour_recent_bucket ON read_models.rollup_hour_recent (bucket);
CREATE INDEX rollup_day_recent_bucket ON read_models.rollup_day_recent (bucket);

CREATE TABLE read_models.rollup_minute_packed (
    device_id text NOT NULL,
    metric    text NOT NULL,
    period    timestamptz NOT NULL,
    counts    int8[] NOT NULL,
    sums      float8[] NOT NULL,
    mins      float8[] NOT NULL,
    maxs      float8[] NOT NULL,
    PRIMARY KEY (device_id, metric, period)
);
CREATE INDEX rollup_minute_packed_period ON read_models.rollup_minute_packed (period);
CREATE TABLE read_models.rollup_hour_packed (LIKE read_models.rollup_minute_packed
    INCLUDING ALL);
CREATE TABLE read_models.rollup_day_packed (LIKE read_models.rollup_minute_packed
    INCLUDING ALL);

-- Packing: ``vals`` at 1-based positions ``slots`` of an array of ``n`` (NULL elsewhere).
CREATE FUNCTION read_models.rollup_spread(slots int4[], vals anyarray, n int4)
RETURNS anyarray LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT array_agg(u.v ORDER BY g)
    FROM generate_series(1, n) AS g
    LEFT JOIN unnest(slots, vals) AS u(s, v) ON u.s = g
$$;

-- One row per bucket, recent and packed merged: the tables' former shape.
CREATE VIEW read_models.rollup_minute AS
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
) AS b
GROUP BY device_id, metric, bucket;

CREATE VIEW read_models.rollup_hour AS
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
) AS b
GROUP BY device_id, metric, bucket;

CREATE VIEW read_models.rollup_day AS
SELECT device_id, metric, bucket, sum(count)::bigint AS count, sum(sum) AS sum,
       min(min) AS min, max(max) AS max
FROM (
    SELECT device_id, metric, bucket, count, sum, min, max FROM read_models.rollup_day_recent
    UNION ALL
    SELECT p.device_id, p.metric, p.period + (u.i - 1) * INTERVAL '1 day', u.c, u.s, u.lo, u.hi
    FROM read_models.rollup_day_packed p,
         unnest(p.counts, p.sums, p.mins, p.maxs) WITH ORDINALITY AS u(c, s, lo, hi, i)
    WHERE u.c IS NOT NULL
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
