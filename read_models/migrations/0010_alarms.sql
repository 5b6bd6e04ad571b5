-- Alarms (issue 16), folded from the alarm event stream. One row per alarm_id; each group of
-- columns belongs to the event that sets it (raise, acknowledgement, clear), so events may
-- arrive in any order and any number of times and still give the same row. The state is
-- derived from which of them arrived: cleared > acknowledged > active.
CREATE TABLE read_models.alarms (
    alarm_id        uuid PRIMARY KEY,
    device_id       text NOT NULL,
    -- set by AlarmRaised (NULL while only a later event of the alarm has arrived)
    rule_id         text,
    metric          text,
    condition       text,
    severity        text,
    raised_at       timestamptz,
    value           double precision,
    threshold_low   double precision,
    threshold_high  double precision,
    -- set by AlarmAcknowledged
    acknowledged_by text,
    acknowledged_at timestamptz,
    note            text,
    -- set by AlarmCleared
    cleared_at      timestamptz,
    cleared_value   double precision,
    clear_reason    text,
    state           text NOT NULL GENERATED ALWAYS AS (
        CASE WHEN cleared_at IS NOT NULL THEN 'cleared'
             WHEN acknowledged_at IS NOT NULL THEN 'acknowledged'
             ELSE 'active' END) STORED,
    updated_at      timestamptz NOT NULL  -- time of the alarm's newest event of any kind
);
CREATE INDEX alarms_raised ON read_models.alarms (raised_at DESC, alarm_id);
CREATE INDEX alarms_device ON read_models.alarms (device_id, raised_at DESC);
CREATE INDEX alarms_state ON read_models.alarms (state, raised_at DESC);
CREATE INDEX alarms_severity ON read_models.alarms (severity, raised_at DESC);
-- /fleet counts the alarms not cleared, by severity and state.
CREATE INDEX alarms_open ON read_models.alarms (severity, state) WHERE cleared_at IS NULL;
