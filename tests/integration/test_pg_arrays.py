"""iotp.pg_arrays sends what psycopg's own list dumping sends: PostgreSQL reads them equal."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from iotp.pg_arrays import (
    PgArray,
    bools,
    float8s,
    int8s,
    register_pg_arrays,
    texts,
    timestamptz_micros,
    timestamptzs,
    unix_minute_micros,
)

_A = datetime(2026, 12, 8, 1, 2, 3, 456789, tzinfo=UTC)
_B = datetime(2026, 12, 8, 1, 2, 3, 456790, tzinfo=timezone(timedelta(hours=-3)))
CASES: list[tuple[str, Callable[[Any], PgArray], Sequence[Any]]] = [
    ("float8", float8s, [0.0, -0.0, 1.5, -2.25e-308, 1.7976931348623157e308, 1 / 3]),
    ("int8", int8s, [0, -1, 2**63 - 1, -(2**63), 42]),
    ("bool", bools, [True, False, True]),
    ("text", texts, ["dev-1", "", "ünïcødé ✓", 'quote " and \\ backslash', "x" * 300]),
    (
        "timestamptz",
        timestamptzs,
        [
            datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=UTC),
            datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2000, 1, 1, tzinfo=UTC),
            datetime(2026, 3, 4, 5, 6, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
        ],
    ),
    # runs of one datetime object (converted once a run), one coming back after another,
    # and an equal datetime that is another object
    ("timestamptz", timestamptzs, [_A, _A, _A, _B, _B, _A, _B.replace(), _A]),
]


@pytest.mark.parametrize(
    ("kind", "pack", "values"), CASES, ids=[f"{c[0]}-{n}" for n, c in enumerate(CASES)]
)
def test_an_array_reads_back_as_psycopgs_own(
    db: psycopg.Connection[Any],
    kind: str,
    pack: Callable[[Any], PgArray],
    values: Sequence[Any],
) -> None:
    register_pg_arrays(db)
    for part in (list(values), list(values[:1]), []):
        row = db.execute(
            f"SELECT %b::{kind}[], %b::{kind}[] = %b::{kind}[]",
            (pack(part), pack(part), list(part)),
        ).fetchone()
        assert row is not None
        assert row[1] is True, (kind, part)
        assert row[0] == list(part)


def test_unix_minutes_are_the_minutes_postgresql_means(db: psycopg.Connection[Any]) -> None:
    register_pg_arrays(db)
    minutes = [0, -1, 29_427_424, -60 * 24 * 365]
    row = db.execute(
        "SELECT %b::timestamptz[]", (timestamptz_micros([unix_minute_micros(m) for m in minutes]),)
    ).fetchone()
    assert row is not None
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    assert row[0] == [epoch + timedelta(minutes=m) for m in minutes]
