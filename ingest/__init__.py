"""iotp ingest: MQTT telemetry into the telemetry table, then TelemetryRecorded events.

``mqtt5_source`` (MQTT 5, over ``mqtt5_session``) or ``mqtt_source`` (paho, MQTT 3.1.1)
takes QoS 1 messages from the broker; ``pipeline`` batches them, validates
them (``payloads``, against the device ``registry``), stores them (``store``), publishes
their events and dead letters (``publisher``), and only then acknowledges them, so a crash
anywhere loses nothing. ``service`` wires one ingest process; ``counters`` are its metrics.
"""
