-- Applied only when TimescaleDB is in use: time-partition telemetry and compress old chunks
-- segmented by series, which is how the read side and rebuild scan it.
SELECT create_hypertable('telemetry', by_range('ts', INTERVAL '1 day'),
                         if_not_exists => true, migrate_data => true,
                         create_default_indexes => false);
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device_id, metric',
    timescaledb.compress_orderby = 'ts DESC'
);
