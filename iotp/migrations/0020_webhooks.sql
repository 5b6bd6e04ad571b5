-- Webhooks (issue 16): where the notifier posts alarm events, and one delivery row per
-- (webhook, event). The UNIQUE pair makes a re-read event create no second delivery; the
-- delivery id is the Idempotency-Key every attempt of that delivery carries.
CREATE TABLE webhooks (
    webhook_id  uuid PRIMARY KEY,
    name        text,
    url         text NOT NULL,
    -- The notifier signs with it, so it is kept as given; the API never answers it.
    secret      text,
    severities  text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX webhooks_active ON webhooks (created_at) WHERE deleted_at IS NULL;

CREATE TABLE webhook_deliveries (
    delivery_id      uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    webhook_id       uuid NOT NULL REFERENCES webhooks,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    alarm_id         uuid,
    device_id        text,
    severity         text,
    -- The exact bytes posted and signed: every attempt sends the same body.
    body             text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    last_status      integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    -- Bumped at every change; the delivery log in the read store has caught up with a row
    -- when logged_revision = revision.
    revision         bigint NOT NULL DEFAULT 1,
    logged_revision  bigint NOT NULL DEFAULT 0,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_unlogged ON webhook_deliveries (created_at)
    WHERE logged_revision < revision;

-- The severity of each alarm the notifier saw raised: acknowledgements and clears carry
-- none, and are filtered by the severity of the alarm they end.
CREATE TABLE notifier_alarm_severities (
    alarm_id  uuid PRIMARY KEY,
    severity  text NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
