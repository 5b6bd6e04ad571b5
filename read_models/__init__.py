"""iotp read models: built by a later issue."""
