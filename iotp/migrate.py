"""Apply the versioned SQL migrations and the TimescaleDB policies the settings ask for."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors, sql

from iotp.db import connect
from iotp.errors import ConfigurationError, ServiceUnavailable
from iotp.settings import Settings

logger = logging.getLogger(__name__)

# pg_advisory_lock key: concurrent `iotp migrate` runs (compose, `iotp up`) wait for each other.
MIGRATION_LOCK_KEY = 0x10770001
TIMESCALE_MARK = ".timescaledb."


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str
    timescale_only: bool

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass
class MigrationReport:
    database_created: bool = False
    read_store_applied: list[str] = field(default_factory=list)
    timescaledb: bool = False
    mode_reason: str = ""
    applied: list[str] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MigrationSet:
    """The SQL files of one package, applied in version order and recorded in ``ledger``."""

    package: str
    ledger: str
    schema: str | None = None  # created first when the ledger lives in a schema of its own


WRITE_MIGRATIONS = "iotp.migrations"
WRITE_LEDGER = "schema_migrations"
WRITE_STORE = MigrationSet(WRITE_MIGRATIONS, WRITE_LEDGER)


def load_migrations(package: str = WRITE_MIGRATIONS) -> list[Migration]:
    """Every migration shipped in ``package``, in version order."""
    found = []
    for entry in resources.files(package).iterdir():
        if not entry.name.endswith(".sql"):
            continue
        stem = entry.name.removesuffix(".sql")
        version, _, name = stem.partition("_")
        found.append(
            Migration(
                version=version,
                name=name.replace(TIMESCALE_MARK.strip("."), "").rstrip("."),
                sql=entry.read_text(encoding="utf-8"),
                timescale_only=TIMESCALE_MARK in entry.name,
            )
        )
    return sorted(found, key=lambda m: m.version)


def migrate(settings: Settings, read_store: MigrationSet | None = None) -> MigrationReport:
    """Create the databases if needed, apply pending migrations, then the policies.

    The write store's migrations are the kernel's; the read store's belong to the part that
    owns it, which the caller passes in (the kernel imports no part).
    """
    report = MigrationReport()
    conn = _connect_creating(settings.database_url, report)
    with conn, _migration_lock(conn):
        _ensure_ledger(conn, WRITE_LEDGER)
        report.timescaledb, report.mode_reason = _choose_mode(conn, settings.timescaledb)
        report.applied = _apply_pending(
            conn, WRITE_MIGRATIONS, WRITE_LEDGER, report, timescaledb=report.timescaledb
        )
        if report.timescaledb:
            report.policies = apply_timescale_policies(conn, settings)
    if read_store is not None:
        read = _connect_creating(settings.read_url(), MigrationReport())
        with read, _migration_lock(read):
            if read_store.schema is not None:
                read.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                        sql.Identifier(read_store.schema)
                    )
                )
            _ensure_ledger(read, read_store.ledger)
            # The read store may be a server of its own: its mode is its own.
            read_timescale, _ = _choose_mode(read, settings.timescaledb)
            report.read_store_applied = _apply_pending(
                read, read_store.package, read_store.ledger, report, timescaledb=read_timescale
            )
            if read_timescale:
                report.policies += apply_rollup_policies(read, settings)
    return report


@contextmanager
def _migration_lock(conn: psycopg.Connection[Any]) -> Iterator[None]:
    conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
    conn.commit()
    try:
        yield
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
        conn.commit()


def _apply_pending(
    conn: psycopg.Connection[Any],
    package: str,
    ledger: str,
    report: MigrationReport,
    *,
    timescaledb: bool,
) -> list[str]:
    applied = _applied_versions(conn, ledger)
    done = []
    for migration in load_migrations(package):
        if migration.version in applied:
            if applied[migration.version] != migration.checksum:
                report.warnings.append(
                    f"{package} {migration.version} changed after it was applied"
                )
            continue
        if migration.timescale_only and not timescaledb:
            continue
        _apply(conn, migration, ledger)
        done.append(f"{migration.version}_{migration.name}")
    return done


def pending_migrations(
    conn: psycopg.Connection[Any], package: str = WRITE_MIGRATIONS, ledger: str = WRITE_LEDGER
) -> list[str]:
    """Versions not yet applied (TimescaleDB-only ones count only when the extension is on)."""
    if conn.execute("SELECT to_regclass(%s)", (ledger,)).fetchone() == (None,):
        return [m.version for m in load_migrations(package) if not m.timescale_only]
    applied = _applied_versions(conn, ledger)
    timescale = _extension_installed(conn)
    return [
        m.version
        for m in load_migrations(package)
        if m.version not in applied and (timescale or not m.timescale_only)
    ]


def _connect_creating(url: str, report: MigrationReport) -> psycopg.Connection[Any]:
    parts = urlsplit(url)
    dbname = parts.path.lstrip("/") or "postgres"
    try:
        return connect(url)
    except ServiceUnavailable as exc:
        # libpq reports a missing database at connect time without a SQLSTATE.
        if f'database "{dbname}" does not exist' not in exc.reason:
            raise
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with connect(maintenance, autocommit=True) as admin:
        try:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            report.database_created = True
        except errors.DuplicateDatabase:
            pass  # another migrator created it a moment ago
    return connect(url)


def _ensure_ledger(conn: psycopg.Connection[Any], ledger: str) -> None:
    conn.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {ledger} (
            version    text PRIMARY KEY,
            name       text NOT NULL,
            checksum   text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    conn.commit()


def _applied_versions(conn: psycopg.Connection[Any], ledger: str) -> dict[str, str]:
    rows = conn.execute(f"SELECT version, checksum FROM {ledger}").fetchall()  # noqa: S608
    return {version: checksum for version, checksum in rows}


def _extension_installed(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    return row is not None


def _choose_mode(conn: psycopg.Connection[Any], wanted: str) -> tuple[bool, str]:
    if wanted == "off":
        return False, "IOTP_TIMESCALEDB=off"
    if _extension_installed(conn):
        return True, "TimescaleDB extension installed"
    available = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    conn.commit()
    reason = "the timescaledb extension is not available on this server"
    if available:
        try:
            conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            conn.commit()
            return True, "TimescaleDB extension created"
        except psycopg.Error as exc:
            conn.rollback()
            reason = f"CREATE EXTENSION timescaledb failed: {str(exc).splitlines()[0]}"
    if wanted == "on":
        raise ConfigurationError(f"IOTP_TIMESCALEDB=on but {reason}")
    return False, reason


def _apply(conn: psycopg.Connection[Any], migration: Migration, ledger: str) -> None:
    logger.info("applying migration %s_%s to %s", migration.version, migration.name, ledger)
    with conn.transaction():
        conn.execute(migration.sql.encode())
        conn.execute(
            f"INSERT INTO {ledger} (version, name, checksum) VALUES (%s, %s, %s)",  # noqa: S608
            (migration.version, migration.name, migration.checksum),
        )


def apply_timescale_policies(conn: psycopg.Connection[Any], settings: Settings) -> list[str]:
    """Bring chunk size, compression and retention in line with the settings; idempotent."""
    done: list[str] = []
    with conn.transaction():
        conn.execute(
            "SELECT set_chunk_time_interval('telemetry', %s * INTERVAL '1 hour')",
            (settings.telemetry_chunk_hours,),
        )
        done.append(f"chunk interval {settings.telemetry_chunk_hours} h")
        done.append(
            _ensure_policy(
                conn,
                "policy_compression",
                "compress_after",
                settings.telemetry_compress_after_days,
                "SELECT add_compression_policy('telemetry', %s * INTERVAL '1 day')",
                "SELECT remove_compression_policy('telemetry', if_exists => true)",
                "compression",
            )
        )
        done.append(
            _ensure_policy(
                conn,
                "policy_retention",
                "drop_after",
                settings.telemetry_retention_days,
                "SELECT add_retention_policy('telemetry', %s * INTERVAL '1 day')",
                "SELECT remove_retention_policy('telemetry', if_exists => true)",
                "retention",
            )
        )
    return done


# The rollup tiers' hypertables on TimescaleDB (read_models 0060 and 0080), compressed:
# the packed arrays once their periods are full (a period, plus the tier's grace, plus a
# day); the columnar rows by the retention job as soon as a chunk is wholly past the grace,
# and again when a late reading has reopened one (the policy too, should the job not run:
# an aggregator holds it). The minute and hour tiers are dropped by whole chunks past their
# retention.
ROLLUP_COMPRESS_AFTER_DAYS = {
    "packed": {"minute": 2, "hour": 9, "day": 35},
    "columnar": {"minute": 1, "hour": 3, "day": 35},
}


def apply_rollup_policies(conn: psycopg.Connection[Any], settings: Settings) -> list[str]:
    """Compression and retention of the rollup tiers' hypertables, in line with the
    settings."""
    retention = {
        "minute": settings.rollup_minute_retention_days,
        "hour": settings.rollup_hour_retention_days,
        "day": 0,  # kept for ever
    }
    tables = [
        (f"read_models.rollup_{tier}_{part}", compress_after, retention[tier])
        for part, tiers in ROLLUP_COMPRESS_AFTER_DAYS.items()
        for tier, compress_after in tiers.items()
    ]
    # Those the read store's TimescaleDB migrations made (an older schema has fewer).
    made = _hypertables(conn, "read_models")
    tables = [entry for entry in tables if entry[0] in made]
    done: list[str] = []
    with conn.transaction():
        for table, compress_after, drop_after in tables:
            name = table.removeprefix("read_models.")
            done.append(
                _ensure_policy(
                    conn,
                    "policy_compression",
                    "compress_after",
                    compress_after,
                    f"SELECT add_compression_policy('{table}', %s * INTERVAL '1 day')",
                    f"SELECT remove_compression_policy('{table}', if_exists => true)",
                    f"{name} compression",
                    hypertable=name,
                )
            )
            done.append(
                _ensure_policy(
                    conn,
                    "policy_retention",
                    "drop_after",
                    drop_after,
                    f"SELECT add_retention_policy('{table}', %s * INTERVAL '1 day')",
                    f"SELECT remove_retention_policy('{table}', if_exists => true)",
                    f"{name} retention",
                    hypertable=name,
                )
            )
    return done


def _hypertables(conn: psycopg.Connection[Any], schema: str) -> set[str]:
    """The hypertables of ``schema`` (none without TimescaleDB), as schema.name."""
    with conn.transaction():
        row = conn.execute(
            "SELECT to_regclass('timescaledb_information.hypertables') IS NOT NULL"
        ).fetchone()
        if not row or not row[0]:
            return set()
        rows = conn.execute(
            "SELECT hypertable_name FROM timescaledb_information.hypertables"
            " WHERE hypertable_schema = %s",
            (schema,),
        ).fetchall()
    return {f"{schema}.{name}" for (name,) in rows}


def is_hypertable(conn: psycopg.Connection[Any], table: str) -> bool:
    """Whether ``table`` ([schema.]name) is a TimescaleDB hypertable (False without
    TimescaleDB); ends the transaction it reads in."""
    schema, _, name = table.rpartition(".")
    schema = schema or "public"
    found = f"{schema}.{name}" in _hypertables(conn, schema)
    conn.commit()
    return found


def _ensure_policy(
    conn: psycopg.Connection[Any],
    proc: str,
    key: str,
    days: int,
    add: str,
    remove: str,
    label: str,
    hypertable: str = "telemetry",
) -> str:
    row = conn.execute(
        f"""
        SELECT (config ->> '{key}')::interval = %s * INTERVAL '1 day'
        FROM timescaledb_information.jobs
        WHERE proc_name = %s AND hypertable_name = %s
        """,  # noqa: S608 - key is one of two literals above
        (days, proc, hypertable),
        prepare=False,  # a few times a migration: not worth a server-side statement
    ).fetchone()
    if days == 0:
        if row is not None:
            conn.execute(remove)
        return f"{label} off"
    if row is not None and row[0]:
        return f"{label} after {days} d (unchanged)"
    if row is not None:
        conn.execute(remove)
    conn.execute(add, (days,))
    return f"{label} after {days} d"
