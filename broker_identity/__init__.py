"""Device identity at the broker: `iotp broker-sync` keeps Mosquitto's accounts in step.

Every device may connect only with the password the command API issued it and publish only
on its own telemetry topic; a rotated password or a decommissioned device is refused once
the broker reloads (and its open session closed). The accounts are derived from the device
event stream; see docs/security.md for the mechanism and the threat model.
"""
