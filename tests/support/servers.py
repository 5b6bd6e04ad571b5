"""The servers the tests use, and the token they authenticate with.

The machine's own PostgreSQL and Redis unless told otherwise (IOTP_TEST_PG_SERVER,
IOTP_TEST_REDIS_URL); on a bare machine embedded ones, started once per test run by
:func:`start_embedded_where_needed`. Every test run gets its own database, and Redis tests
their own logical database, flushed per test.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from local_platform.embedded import (
    embedded_postgres,
    embedded_redis,
    postgres_answers,
    redis_answers,
)

TEST_TOKEN = "test-token-0123456789abcdef"


@dataclass
class Servers:
    """Where the test servers are; read at use, since embedded ones replace the defaults."""

    postgres: str  # a URL of the server (its `postgres` database); tests create their own
    redis: str  # the URL of the Redis logical database the tests flush


SERVERS = Servers(
    postgres=os.environ.get("IOTP_TEST_PG_SERVER", "postgresql://localhost:5432/postgres"),
    redis=os.environ.get("IOTP_TEST_REDIS_URL", "redis://localhost:6379/15"),
)


def database_url_named(name: str) -> str:
    """The test server's URL for the database ``name``."""
    return urlunsplit(urlsplit(SERVERS.postgres)._replace(path=f"/{name}"))


def start_embedded_where_needed(stack: contextlib.ExitStack) -> None:
    """Start embedded PostgreSQL and Redis where none is configured and none answers."""
    forced = os.environ.get("IOTP_TEST_EMBEDDED") == "1"
    if forced or (
        "IOTP_TEST_PG_SERVER" not in os.environ and not postgres_answers(SERVERS.postgres)
    ):
        state = Path(tempfile.mkdtemp(prefix="iotp-test-postgres-"))
        SERVERS.postgres = stack.enter_context(embedded_postgres(state))("postgres")
    if forced or ("IOTP_TEST_REDIS_URL" not in os.environ and not redis_answers(SERVERS.redis)):
        state = Path(tempfile.mkdtemp(prefix="iotp-test-redis-"))
        port = stack.enter_context(embedded_redis(state))
        SERVERS.redis = f"redis://127.0.0.1:{port}/15"
