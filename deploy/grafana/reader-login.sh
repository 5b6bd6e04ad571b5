#!/bin/sh
# docker-compose's one-shot grafana-reader: refuses to go on (and so keeps Grafana down)
# unless both Grafana passwords are set, then gives the read-only role its login.
set -eu
: "${GRAFANA_READER_PASSWORD:?set GRAFANA_READER_PASSWORD in .env to run the grafana profile}"
: "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env to run the grafana profile}"
exec psql --no-psqlrc -f /iotp/grafana/reader-login.sql
