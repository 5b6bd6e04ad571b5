-- Issue 21: what the read side and the consumers need to recover from the write store alone.
--
-- The alarms table holds everything the alarm read model shows, so that `iotp rebuild` and a
-- heal take alarms from here rather than from a stream Redis may have lost. updated_at is
-- the newest occurred_at of the alarm's events (the read model's updated_at).
ALTER TABLE alarms
    ADD COLUMN threshold_low   double precision,
    ADD COLUMN threshold_high  double precision,
    ADD COLUMN cleared_value   double precision,
    ADD COLUMN updated_at      timestamptz;
UPDATE alarms SET updated_at = greatest(raised_at, acknowledged_at, cleared_at);
ALTER TABLE alarms ALTER COLUMN updated_at SET NOT NULL;

-- The notifier's progress on the alarm stream, committed with the deliveries it recorded:
-- a group Redis lost is told from a new one by a position here.
CREATE TABLE notifier_positions (
    stream      text PRIMARY KEY,
    last_id     text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
