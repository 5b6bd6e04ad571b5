-- The webhook delivery log (issue 16), kept by the notifier from its delivery rows in the
-- write store: the dashboard reads it here. A row only moves forward (a higher revision).
CREATE TABLE read_models.webhook_deliveries (
    delivery_id      uuid PRIMARY KEY,
    webhook_id       uuid NOT NULL,
    webhook_name     text,
    webhook_origin   text NOT NULL,  -- scheme://host[:port]: the path may hold a token
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    alarm_id         uuid,
    device_id        text,
    severity         text,
    state            text NOT NULL,
    attempts         integer NOT NULL,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL,
    last_attempt_at  timestamptz,
    next_attempt_at  timestamptz,
    finished_at      timestamptz,
    revision         bigint NOT NULL
);
CREATE INDEX webhook_deliveries_recent ON read_models.webhook_deliveries (created_at DESC);
CREATE INDEX webhook_deliveries_state ON read_models.webhook_deliveries (state, created_at DESC);
