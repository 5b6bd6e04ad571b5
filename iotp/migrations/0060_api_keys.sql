-- API keys (issue 22): named credentials with a role, for both HTTP APIs. Only the SHA-256
-- of a key is kept (a key is 256 random bits, so a fast hash is enough); the key itself is
-- shown once, when it is made. A key is refused once revoked or past its expiry.
CREATE TABLE api_keys (
    key_id      uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'operator', 'provisioner', 'viewer')),
    key_hash    bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
