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
-- Alarms raised before this migration: what their events said, where the outbox still holds
-- them (IOTP_OUTBOX_KEEP_HOURS); otherwise the thresholds and cleared value stay unknown and
-- updated_at is the newest of the alarm's own times.
WITH events AS (
    SELECT event_type, (fields ->> 'data')::jsonb AS data FROM outbox
    WHERE stream = 'iotp:events:alarms'
)
UPDATE alarms a SET threshold_low = (e.data ->> 'threshold_low')::double precision,
                    threshold_high = (e.data ->> 'threshold_high')::double precision
FROM events e
WHERE e.event_type = 'AlarmRaised' AND a.alarm_id = (e.data ->> 'alarm_id')::uuid;
WITH events AS (
    SELECT event_type, (fields ->> 'data')::jsonb AS data FROM outbox
    WHERE stream = 'iotp:events:alarms'
)
UPDATE alarms a SET cleared_value = (e.data ->> 'value')::double precision
FROM events e
WHERE e.event_type = 'AlarmCleared' AND a.alarm_id = (e.data ->> 'alarm_id')::uuid;
WITH newest AS (
    SELECT ((fields ->> 'data')::jsonb ->> 'alarm_id')::uuid AS alarm_id,
           max(((fields ->> 'data')::jsonb ->> 'occurred_at')::timestamptz) AS at
    FROM outbox WHERE stream = 'iotp:events:alarms' GROUP BY 1
)
UPDATE alarms a SET updated_at = n.at FROM newest n WHERE a.alarm_id = n.alarm_id;
UPDATE alarms SET updated_at = greatest(raised_at, acknowledged_at, cleared_at)
WHERE updated_at IS NULL;
ALTER TABLE alarms ALTER COLUMN updated_at SET NOT NULL;

-- The notifier's progress on the alarm stream, committed with the deliveries it recorded:
-- a group Redis lost is told from a new one by a position here.
CREATE TABLE notifier_positions (
    stream      text PRIMARY KEY,
    last_id     text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
