"""iotp dashboard: built by a later issue."""
