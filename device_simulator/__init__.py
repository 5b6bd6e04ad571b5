"""iotp device simulator: built by a later issue."""
