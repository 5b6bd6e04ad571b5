-- Device profiles and gateways (issue 25). A profile is kept whole as the JSON its events
-- carry (iotp.device_profiles.DeviceProfile validates it on the way in); the built-in profile
-- "iotp" is never stored. A device names its profile; the rule that the profile exists is the
-- command side's (it locks the profile row), so that the built-in one needs no row.
CREATE TABLE device_profiles (
    name        text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.\-]{1,64}$' AND name <> 'iotp'),
    profile     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE devices ADD COLUMN profile text NOT NULL DEFAULT 'iotp';
CREATE INDEX devices_profile_idx ON devices (profile) WHERE profile <> 'iotp';

-- A gateway is a broker account of its own that speaks for the devices it lists, by the
-- friendly names its firmware publishes (friendly name -> device id).
CREATE TABLE gateways (
    gateway_id       text PRIMARY KEY CHECK (gateway_id ~ '^[A-Za-z0-9_.\-]{1,64}$'),
    name             text NOT NULL,
    profile          text NOT NULL,
    devices          jsonb NOT NULL DEFAULT '{}'::jsonb,
    credential_hash  text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX gateways_profile_idx ON gateways (profile);
