-- Applied only when the read store has TimescaleDB: the packed halves of the rollup tiers
-- become hypertables on their period, compressed by series once their periods are full
-- (compression after: iotp migrate sets the policies, and the retention of the minute and
-- hour tiers, from IOTP_ROLLUP_*_RETENTION_DAYS: whole chunks are dropped instead of rows
-- deleted). Measured in `iotp bench growth --timescale-url`: a full hour of minutes packed
-- takes about 30 bytes a bucket uncompressed and 13 compressed (docs/benchmarks.md).
SELECT create_hypertable('read_models.rollup_minute_packed', by_range('period', INTERVAL '1 day'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
SELECT create_hypertable('read_models.rollup_hour_packed', by_range('period', INTERVAL '28 days'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
SELECT create_hypertable('read_models.rollup_day_packed', by_range('period', INTERVAL '384 days'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
ALTER TABLE read_models.rollup_minute_packed SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'period'
);
ALTER TABLE read_models.rollup_hour_packed SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'period'
);
ALTER TABLE read_models.rollup_day_packed SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'period'
);
