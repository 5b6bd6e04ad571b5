"""Webhook notifications of alarms: `iotp notify` records one delivery per (webhook, alarm
event) and posts it, signed, until the receiver answers 2xx or the retry window ends."""
