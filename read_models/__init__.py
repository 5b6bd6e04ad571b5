"""iotp read models: the query side, kept current from the event streams, rebuildable any time.

- ``projection`` folds events into deltas (pure); ``store`` merges them into the read store
  with the events' ids and the tracking row in one transaction.
- ``consumer`` is the aggregator reading the streams in a consumer group; ``service`` wires
  one aggregator process; ``rebuild`` recomputes every model from the write store.
- ``queries`` are the only reads; the query API (``app``, ``routes``, ``dependencies``)
  serves them over HTTP and the dashboard calls them. ``health`` reports how far behind
  the read side is.
- ``audit`` (pure: which events are commands, and their rows), ``audit_consumer`` (the
  group ``iotp-audit``), ``audit_heal`` (from the outbox), ``audit_store``, ``audit_queries``,
  ``audit_routes`` and ``audit_service``: the audit trail, `iotp audit` and ``GET /audit``.
- ``schema`` and ``migrations``: the read store's own schema, in schema ``read_models``.
"""
