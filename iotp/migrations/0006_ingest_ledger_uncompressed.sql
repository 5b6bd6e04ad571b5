-- A ledger row lives for one batch (it is deleted once the batch's events are on the
-- stream): compressing it (pglz, the TOAST default) cost PostgreSQL more CPU than anything
-- else it does for the row. Out of line, uncompressed.
ALTER TABLE ingest_ledger ALTER COLUMN entries SET STORAGE EXTERNAL;
