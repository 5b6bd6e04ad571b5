"""Simulated devices: registration through the command API, realistic signals, MQTT publishing."""
