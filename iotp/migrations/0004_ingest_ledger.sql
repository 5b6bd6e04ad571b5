-- Events of telemetry batches that committed but may not be on the stream yet. Written in
-- the batch's transaction, deleted once the events are published; what is left after a
-- crash is published again on restart (same event ids), so no committed reading goes
-- without its event.
CREATE TABLE ingest_ledger (
    batch_id    uuid PRIMARY KEY,
    consumer    text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    entries     bytea NOT NULL
);
CREATE INDEX ingest_ledger_consumer ON ingest_ledger (consumer, created_at);
