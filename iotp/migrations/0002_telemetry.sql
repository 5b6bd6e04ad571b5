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
-- Scans by time alone (rebuilds, retention on plain PostgreSQL) use a BRIN index: readings
-- arrive roughly in time order, and a B-tree here cost ingest a tenth of its insert rate.
CREATE INDEX telemetry_ts ON telemetry USING brin (ts);
