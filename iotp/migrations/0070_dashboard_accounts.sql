-- Dashboard accounts (issue 22): people who log in to the dashboard, each with a role. Only
-- an argon2id hash of a password is kept (argon2-cffi's encoded form, parameters included,
-- so that a hash made with older parameters still verifies and is redone at the next login).
-- A disabled account is kept, not deleted, so that the audit trail's names stay resolvable.
CREATE TABLE dashboard_accounts (
    username       text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9._@+-]{0,127}$'),
    role           text NOT NULL CHECK (role IN ('admin', 'operator', 'provisioner', 'viewer')),
    password_hash  text NOT NULL CHECK (password_hash LIKE '$argon2%'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz
);
