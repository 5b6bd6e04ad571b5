-- EMQX's PostgreSQL authentication and authorization read the device registry through these
-- two views (deploy/emqx/emqx.conf), so a clustered broker needs no copy of the accounts and
-- no sync process: a registration, rotation or decommission is in force at the next CONNECT.
--
-- The stored hash is Mosquitto's `$7$<iterations>$<base64 salt>$<base64 PBKDF2-SHA512>`.
-- EMQX's pbkdf2 check (emqx_passwd) derives PBKDF2(mac_fun, password, salt, iterations,
-- dk_length) from the salt column's raw bytes and compares its lowercase hex to
-- password_hash byte for byte. So the salt goes out as bytea (PostgreSQL's driver hands EMQX
-- the raw bytes) and the digest as lowercase hex; the iteration count is fixed in EMQX's
-- configuration, and `iterations` is here for the operator and the test that checks it.
CREATE VIEW emqx_auth AS
SELECT device_id                                                  AS username,
       encode(decode(split_part(credential_hash, '$', 5), 'base64'), 'hex') AS password_hash,
       decode(split_part(credential_hash, '$', 4), 'base64')      AS salt,
       split_part(credential_hash, '$', 3)::integer               AS iterations,
       false                                                      AS is_superuser
FROM devices
WHERE status = 'active' AND split_part(credential_hash, '$', 2) = '7';

-- What a device may do: publish on its own telemetry topic, nothing else (EMQX runs with
-- authorization.no_match = deny, so every other publish and every subscribe is refused).
-- Device ids cannot hold MQTT wildcards (iotp.model.DEVICE_ID_PATTERN), so the topic is a
-- literal. Ingest's service account is not a device: deploy/emqx/acl.conf grants it.
CREATE VIEW emqx_acl AS
SELECT device_id                               AS username,
       'allow'::text                           AS permission,
       'publish'::text                         AS action,
       'devices/' || device_id || '/telemetry' AS topic
FROM devices
WHERE status = 'active';
