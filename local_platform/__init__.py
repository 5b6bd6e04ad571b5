"""Local-only machinery: `iotp up`, embedded PostgreSQL and Redis, the local MQTT broker.

Production never imports it (docker-compose runs each service on its own); it needs the
``[local]`` extra for the embedded services.
"""
