-- Raw readings, one row per (device, metric, timestamp). The unique key makes a
-- redelivered message store nothing twice (ingest inserts with ON CONFLICT DO NOTHING).
CREATE TABLE telemetry (
    device_id   text NOT NULL,
    ts          timestamptz NOT NULL,
    metric      text NOT NULL,
    value       double precision NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT telemetry_reading_key UNIQUE (device_id, metric, ts)
);
CREATE INDEX telemetry_ts ON telemetry (ts DESC);
