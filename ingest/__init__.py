"""iotp ingest: built by a later issue."""
