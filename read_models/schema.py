"""The read store's schema: its own migrations and ledger, in schema ``read_models``."""

from __future__ import annotations

from iotp.migrate import MigrationSet

READ_STORE_MIGRATIONS = MigrationSet(
    package="read_models.migrations",
    ledger="read_models.schema_migrations",
    schema="read_models",
)
