"""iotp shared kernel: settings, message contracts, stream names, database access, the CLI."""

__version__ = "0.1.0"
