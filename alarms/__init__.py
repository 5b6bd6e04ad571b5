"""Alarms (issue 16): the alarm process that evaluates the rules over the telemetry events."""
