-- Applied only when the read store has TimescaleDB: the columnar halves of the rollup tiers
-- (0070) become hypertables on their bucket, compressed by series, which the retention job
-- fills from the _recent tables instead of the packed arrays.
--
-- Chunks are small, because a chunk is rows until it is compressed, and a row costs about
-- 150 bytes against a few compressed: the job compresses each chunk as soon as every bucket
-- in it is past the tier's grace (an hour of minutes, a day of hours, two days of days),
-- and iotp migrate sets a compression policy that also recompresses chunks a late reading
-- has reopened. With TimescaleDB's compression a series' buckets of one chunk go into one
-- batch, so a chunk is also as long as a batch of a series should be: measured in
-- `iotp bench growth --timescale-url` (docs/benchmarks.md). The scale is not a segment
-- column: a series' decimal places can change from one round of the job to the next (a
-- battery at 99.9, then 99.89), and each change would start a new batch.
SELECT create_hypertable('read_models.rollup_minute_columnar',
                         by_range('bucket', INTERVAL '2 hours'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
SELECT create_hypertable('read_models.rollup_hour_columnar',
                         by_range('bucket', INTERVAL '4 days'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
SELECT create_hypertable('read_models.rollup_day_columnar',
                         by_range('bucket', INTERVAL '32 days'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
ALTER TABLE read_models.rollup_minute_columnar SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'bucket'
);
ALTER TABLE read_models.rollup_hour_columnar SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'bucket'
);
ALTER TABLE read_models.rollup_day_columnar SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'bucket'
);
