-- The device registry (write side) and the transactional outbox its events leave through.
CREATE TABLE devices (
    device_id         text PRIMARY KEY,
    name              text NOT NULL,
    kind              text NOT NULL,
    lat               double precision,
    lon               double precision,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb,
    metrics           jsonb NOT NULL DEFAULT '[]'::jsonb,
    status            text NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'decommissioned')),
    credential_hash   text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    decommissioned_at timestamptz,
    CHECK ((lat IS NULL) = (lon IS NULL))
);

CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid NOT NULL UNIQUE,
    stream      text NOT NULL,
    event_type  text NOT NULL,
    fields      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    stream_id   text
);
-- The relay only ever looks for what is unsent, oldest first.
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;

-- Wake the relay as soon as an event commits instead of waiting for its next poll.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('iotp_outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Answers to POST requests that carried an Idempotency-Key. The MQTT password is never
-- stored: only the seed it is derived from with the API token.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    device_id    text NOT NULL,
    secret_seed  bytea NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
