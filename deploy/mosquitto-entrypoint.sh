#!/bin/sh
# Mosquitto in docker-compose, as iotp needs it:
# - it waits for `iotp broker-sync` to write the password and ACL files (the broker will
#   not start without them, and must not start open);
# - it leaves the TLS listener out when no certificate is mounted in /mosquitto/certs;
# - it reloads the broker (SIGHUP) whenever broker-sync rewrites the password file, which it
#   knows by the file's second line: the stream position, which every rewrite advances.
set -eu
CONF=/mosquitto/config/mosquitto.conf
RUN=/tmp/mosquitto.conf
AUTH=/mosquitto/auth

until [ -s "$AUTH/passwd" ] && [ -s "$AUTH/acl" ]; do
    echo "waiting for iotp broker-sync to write $AUTH/passwd and $AUTH/acl"
    sleep 1
done
if [ -f /mosquitto/certs/server.crt ] && [ -f /mosquitto/certs/server.key ]; then
    cp "$CONF" "$RUN"
else
    sed '/^# tls-begin/,/^# tls-end/d' "$CONF" > "$RUN"
    echo "no certificate in /mosquitto/certs: the TLS listener (8883) is off"
fi

mosquitto -c "$RUN" &
broker=$!
trap 'kill -TERM "$broker"; wait "$broker"; exit 0' TERM INT

seen=$(sed -n 2p "$AUTH/passwd")
while kill -0 "$broker" 2>/dev/null; do
    sleep 1
    now=$(sed -n 2p "$AUTH/passwd" 2>/dev/null || echo "$seen")
    if [ "$now" != "$seen" ]; then
        seen=$now
        kill -HUP "$broker"
    fi
done
wait "$broker"
