-- Alarms (issue 16): the rules the command side owns, the alarms the alarm process raises,
-- and the process's state. Everything lives in the write store so that the alarm process
-- commits its evaluation state, its alarms, their events (outbox) and its stream positions
-- in one transaction: a crash at any point redoes a whole batch or none of it.

CREATE TABLE alarm_rules (
    rule_id         uuid PRIMARY KEY,
    scope           text NOT NULL CHECK (scope IN ('device', 'kind')),
    device_id       text,
    kind            text,
    metric          text,
    condition       text NOT NULL CHECK (condition IN ('above', 'below', 'outside_range', 'offline')),
    -- NULL: the bound the metric declares (the device's declared range)
    threshold_low   double precision,
    threshold_high  double precision,
    for_readings    integer CHECK (for_readings BETWEEN 1 AND 10000),
    for_seconds     integer CHECK (for_seconds BETWEEN 1 AND 604800),
    clear_readings  integer NOT NULL DEFAULT 3 CHECK (clear_readings BETWEEN 1 AND 10000),
    severity        text NOT NULL CHECK (severity IN ('critical', 'major', 'minor', 'warning')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK ((scope = 'device') = (device_id IS NOT NULL)),
    CHECK ((scope = 'kind') = (kind IS NOT NULL)),
    CHECK ((condition = 'offline') = (metric IS NULL)),
    CHECK (threshold_low IS NULL OR threshold_high IS NULL OR threshold_low < threshold_high)
);
CREATE INDEX alarm_rules_device ON alarm_rules (device_id) WHERE device_id IS NOT NULL;
CREATE INDEX alarm_rules_kind ON alarm_rules (kind) WHERE kind IS NOT NULL;

-- One row per alarm: raised once, acknowledged at most once, cleared once. rule_id is text
-- because the default rule of a declared range is "range:<metric>", not a row of alarm_rules.
CREATE TABLE alarms (
    alarm_id         uuid PRIMARY KEY,
    rule_id          text NOT NULL,
    device_id        text NOT NULL,
    metric           text,
    condition        text NOT NULL,
    severity         text NOT NULL,
    state            text NOT NULL CHECK (state IN ('active', 'acknowledged', 'cleared')),
    raised_at        timestamptz NOT NULL,
    value            double precision,
    acknowledged_by  text,
    acknowledged_at  timestamptz,
    note             text,
    cleared_at       timestamptz,
    clear_reason     text
);
CREATE INDEX alarms_open ON alarms (rule_id, device_id) WHERE state <> 'cleared';

-- Per (rule, device): where the evaluation stands. newest_reading_at is the time of the newest
-- reading applied: a reading is "late" when its own timestamp is at or before it (it arrived
-- after a newer one), and a late reading changes nothing here, so that out-of-order and
-- replayed readings cannot flap an alarm. open_alarm_id is the alarm raised and not cleared.
CREATE TABLE alarm_evaluation (
    rule_id            text NOT NULL,
    device_id          text NOT NULL,
    breach_count       integer NOT NULL DEFAULT 0,
    clear_count        integer NOT NULL DEFAULT 0,
    breach_started_at  timestamptz,
    newest_reading_at  timestamptz,
    open_alarm_id      uuid,
    PRIMARY KEY (rule_id, device_id)
);

-- When each device was last heard of (the broker's receive time of its newest event), for
-- the offline timer.
CREATE TABLE alarm_device_seen (
    device_id  text PRIMARY KEY,
    last_seen  timestamptz NOT NULL
);

-- The newest telemetry stream entry whose batch committed, per stream: on restart, entries at
-- or below it were applied already (committed, not yet acknowledged) and are skipped.
CREATE TABLE alarm_positions (
    stream      text PRIMARY KEY,
    last_id     text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
