-- The columnar rollups' compressed batches hold a device's buckets, all its metrics, instead
-- of one series' (0080). A batch costs about 250 bytes whatever it holds (its row, each
-- column's header, its index entry) and a chunk is short, so that few rows wait in it
-- uncompressed; with three metrics to a device, one batch instead of three measured 26 to
-- 37 % fewer bytes a bucket in `iotp bench growth --timescale-url` (docs/benchmarks.md).
-- Ordered by metric, then bucket, a series' values still follow each other in a batch, as
-- delta coding wants, and a query of one metric skips the batches of other metrics by their
-- metric bounds where a device has more than a batch of them.
--
-- Chunks compressed before keep their own settings (TimescaleDB keeps them per chunk), and
-- are read the same way.
ALTER TABLE read_models.rollup_minute_columnar SET (
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'metric, bucket'
);
ALTER TABLE read_models.rollup_hour_columnar SET (
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'metric, bucket'
);
ALTER TABLE read_models.rollup_day_columnar SET (
    timescaledb.compress_segmentby = 'device_id',
    timescaledb.compress_orderby = 'metric, bucket'
);
