-- Gives the read-only role of read_models/migrations/0030_grafana_reader.sql a login, with
-- the password from the environment (GRAFANA_READER_PASSWORD), never from a file of the
-- repository. Run by docker-compose's grafana-reader after `iotp migrate`; safe to repeat.
\set ON_ERROR_STOP on
\getenv reader_password GRAFANA_READER_PASSWORD
ALTER ROLE iotp_grafana_reader WITH LOGIN PASSWORD :'reader_password';
