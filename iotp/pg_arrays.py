"""One-dimensional PostgreSQL arrays as binary query parameters, packed by ``struct`` in C.

psycopg dumps a Python list element by element in Python (``ListBinaryDumper._dump_list``),
which was a seventh of an aggregator's CPU: its upserts send a dozen arrays of thousands of
elements a batch. These build the same bytes as PostgreSQL's ``array_send`` with one C call
per element. A parameter takes them with the array's cast, as in ``%b::float8[]``.

The arrays hold no NULLs: callers pass values, never None.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import repeat
from typing import Any, ClassVar

from psycopg import adapt, pq
from psycopg.abc import AdaptContext

_HEADER = struct.Struct(">iiIii")  # dimensions, has-nulls, element type, length, lower bound
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FLOAT8 = struct.Struct(">id")
_INT8 = struct.Struct(">iq")
_BOOL = struct.Struct(">i?")
_LENGTH = struct.Struct(">i")
_TEXTS: dict[str, bytes] = {}  # a text's array element (length and UTF-8), by the text
_TEXTS_KEPT = 50_000


class PgArray(bytes):
    """The binary form of a one-dimensional array; the subclass says of what."""

    array_oid: ClassVar[int]


class Float8Array(PgArray):
    array_oid = 1022


class Int8Array(PgArray):
    array_oid = 1016


class BoolArray(PgArray):
    array_oid = 1000


class TextArray(PgArray):
    array_oid = 1009


class TimestamptzArray(PgArray):
    array_oid = 1185


def _packed(element_oid: int, count: int, elements: Iterable[bytes]) -> bytes:
    if not count:
        return struct.pack(">iiI", 0, 0, element_oid)
    return b"".join((_HEADER.pack(1, 0, element_oid, count, 1), *elements))


def float8s(values: Sequence[float]) -> Float8Array:
    return Float8Array(_packed(701, len(values), map(_FLOAT8.pack, repeat(8), values)))


def int8s(values: Sequence[int]) -> Int8Array:
    return Int8Array(_packed(20, len(values), map(_INT8.pack, repeat(8), values)))


def bools(values: Sequence[bool]) -> BoolArray:
    return BoolArray(_packed(16, len(values), map(_BOOL.pack, repeat(1), values)))


def texts(values: Sequence[str]) -> TextArray:
    # The same few names (device ids, metrics) come in every batch: each is encoded once.
    if len(_TEXTS) > _TEXTS_KEPT:
        _TEXTS.clear()
    known = _TEXTS.get
    return TextArray(_packed(25, len(values), [known(v) or _text(v) for v in values]))


def _text(value: str) -> bytes:
    data = value.encode()
    element = _TEXTS[value] = _LENGTH.pack(len(data)) + data  # never empty: its length
    return element


def pg_micros(at: datetime) -> int:
    """An aware datetime in microseconds since 2000-01-01 UTC (PostgreSQL's own clock)."""
    return (at - _PG_EPOCH) // _MICROSECOND


def timestamptzs(values: Sequence[datetime]) -> TimestamptzArray:
    """Aware datetimes, sent as :func:`pg_micros` of each.

    A run of the same datetime object (a reading's time in each of its metrics' rows, a
    socket read's receipt time in each of its messages) is converted once.
    """
    micros: list[int] = []
    last: datetime | None = None
    value = 0
    for at in values:
        if at is not last:
            last, value = at, pg_micros(at)
        micros.append(value)
    return timestamptz_micros(micros)


def timestamptz_micros(values: Sequence[int]) -> TimestamptzArray:
    """Times already counted in microseconds since 2000-01-01 UTC."""
    elements = map(_INT8.pack, repeat(8), values)
    return TimestamptzArray(_packed(1184, len(values), elements))


UNIX_EPOCH_PG_MICROS = -946_684_800_000_000  # 1970-01-01 UTC by PostgreSQL's clock


def unix_minute_micros(minute: int) -> int:
    """A minute since the Unix epoch in PostgreSQL's microseconds since 2000."""
    return minute * 60_000_000 + UNIX_EPOCH_PG_MICROS


class _PgArrayDumper(adapt.Dumper):
    format = pq.Format.BINARY

    def dump(self, obj: Any) -> bytes:
        return bytes(obj)


def register_pg_arrays(context: AdaptContext) -> None:
    """Teach a connection (or a cursor) to send these arrays as they are.

    Per connection, not on psycopg's global map: a connection copies that map when it is
    made, so a registration after it would not reach it. Cheap enough to do per batch.
    """
    for cls, dumper in _DUMPERS:
        context.adapters.register_dumper(cls, dumper)


_DUMPERS = tuple(
    (cls, type(f"{cls.__name__}Dumper", (_PgArrayDumper,), {"oid": cls.array_oid}))
    for cls in (Float8Array, Int8Array, BoolArray, TextArray, TimestamptzArray)
)
