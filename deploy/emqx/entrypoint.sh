#!/bin/sh
# An EMQX node of docker-compose.emqx.yml, as iotp needs it: on first start it gives the
# built-in database ingest's service account (user iotp-ingest, INGEST_MQTT_PASSWORD), which
# emqx.conf imports from this file; devices come from PostgreSQL and need nothing here.
# EMQX imports the file only into an empty built-in database: to change the password later,
# use EMQX's dashboard or REST API (docs/clustered-broker.md).
set -eu
: "${INGEST_MQTT_PASSWORD:?set INGEST_MQTT_PASSWORD in .env}"
ACCOUNTS=/opt/emqx/data/iotp-service-accounts.csv
umask 077
printf 'user_id,password,is_superuser\n%s,%s,false\n' iotp-ingest "$INGEST_MQTT_PASSWORD" > "$ACCOUNTS"
exec /usr/bin/docker-entrypoint.sh /opt/emqx/bin/emqx foreground
