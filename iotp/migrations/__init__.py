"""Versioned SQL migrations, applied in order by ``iotp migrate``."""
