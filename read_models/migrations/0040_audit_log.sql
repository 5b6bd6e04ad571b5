-- The audit trail (issue 22): one row per command's event that names who issued it, folded
-- by `iotp audit` (consumer group iotp-audit) from the device, alarm, alarm-rule, webhook
-- and access streams. The event id is the dedupe: a redelivered or healed event inserts
-- nothing. Rows older than IOTP_AUDIT_RETENTION_DAYS are deleted by the consumer; its
-- progress is kept in read_models.tracking under its group, beside the aggregators'.
CREATE TABLE read_models.audit_log (
    event_id    uuid PRIMARY KEY,
    at          timestamptz NOT NULL,  -- when the event happened (its occurred_at)
    actor_kind  text NOT NULL,         -- api-key, bootstrap-token, dashboard-user, command-line
    actor_id    text,                  -- a key's id, an account's user name
    actor_name  text NOT NULL,
    actor_via   text,                  -- the key a dashboard user acted through
    action      text NOT NULL,         -- "device.register", ..., or "POST /devices" when denied
    target      text,                  -- "device:<id>", "alarm-rule:<id>", ...
    outcome     text NOT NULL,         -- succeeded or denied
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb
);
-- Every read is newest first, filtered by at most a few of these; retention deletes by `at`.
CREATE INDEX audit_log_at ON read_models.audit_log (at DESC, event_id);
CREATE INDEX audit_log_actor_name ON read_models.audit_log (actor_name, at DESC);
CREATE INDEX audit_log_actor_id ON read_models.audit_log (actor_id, at DESC)
    WHERE actor_id IS NOT NULL;
CREATE INDEX audit_log_action ON read_models.audit_log (action, at DESC);
CREATE INDEX audit_log_target ON read_models.audit_log (target, at DESC)
    WHERE target IS NOT NULL;
