-- The read store: denormalised models built from events, never written by the command side
-- or ingest. Everything lives in its own schema so that it can share a server or not.
CREATE SCHEMA IF NOT EXISTS read_models;

CREATE TABLE read_models.devices (
    device_id         text PRIMARY KEY,
    name              text,
    kind              text,
    lat               double precision,
    lon               double precision,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics           jsonb NOT NULL DEFAULT '[]'::jsonb,
    status            text NOT NULL DEFAULT 'active',
    registered_at     timestamptz,
    updated_at        timestamptz,  -- time of the device's latest event of any kind
    attrs_at          timestamptz,  -- time of the event its attributes come from
    decommissioned_at timestamptz
);
CREATE INDEX devices_kind ON read_models.devices (kind, device_id);
CREATE INDEX devices_status ON read_models.devices (status, device_id);
CREATE INDEX devices_name ON read_models.devices (lower(name) text_pattern_ops);

-- When each device last reported (its messages' receive time): liveness is computed from
-- this and the clock, so it changes with no event arriving.
CREATE TABLE read_models.device_activity (
    device_id  text PRIMARY KEY,
    last_seen  timestamptz NOT NULL,
    readings   bigint NOT NULL DEFAULT 0
);
CREATE INDEX device_activity_last_seen ON read_models.device_activity (last_seen);

CREATE TABLE read_models.metric_stats (
    device_id         text NOT NULL,
    metric            text NOT NULL,
    count             bigint NOT NULL,
    sum               double precision NOT NULL,
    min               double precision NOT NULL,
    min_ts            timestamptz NOT NULL,
    max               double precision NOT NULL,
    max_ts            timestamptz NOT NULL,
    first_ts          timestamptz NOT NULL,
    last_ts           timestamptz NOT NULL,
    last_value        double precision NOT NULL,
    last_out_of_range boolean NOT NULL DEFAULT false,
    breaches          bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (device_id, metric)
);
CREATE INDEX metric_stats_breaching ON read_models.metric_stats (device_id)
    WHERE last_out_of_range;

CREATE TABLE read_models.rollup_minute (
    device_id text NOT NULL,
    metric    text NOT NULL,
    bucket    timestamptz NOT NULL,
    count     bigint NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);

CREATE TABLE read_models.rollup_hour (
    device_id text NOT NULL,
    metric    text NOT NULL,
    bucket    timestamptz NOT NULL,
    count     bigint NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);

-- Data points (one metric value at one timestamp) per minute of reading time, fleet-wide.
CREATE TABLE read_models.fleet_minute (
    bucket   timestamptz PRIMARY KEY,
    readings bigint NOT NULL
);

-- Where each consumer group's applied events reach on each stream, and when.
CREATE TABLE read_models.tracking (
    stream        text NOT NULL,
    group_name    text NOT NULL,
    last_id_ms    bigint NOT NULL,
    last_id_seq   bigint NOT NULL,
    last_event_at timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, group_name)
);

-- Events already applied: a redelivered entry, or an event republished under a new stream
-- id (same event_id, same readings), changes nothing.
CREATE TABLE read_models.applied_events (
    event_id   uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX applied_events_applied_at ON read_models.applied_events USING brin (applied_at);
