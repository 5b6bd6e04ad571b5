"""The scaled-integer encoding of the columnar rollups (read_models 0070), in PostgreSQL.

With TimescaleDB the retention job keeps a bucket's sum, min and max as integers with their
decimal places where that is exact. These are the functions it stores and reads them with,
checked on the real server for any value: a reading comes back as the same double, a sum
within the float sum's own error bound, and whatever is not a decimal stays a float8.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

Conn = psycopg.Connection[Any]
ROUND_TRIP = """
SELECT e.scale, read_models.unscaled(e.sum_scaled, e.scale, e.sum),
       read_models.unscaled(e.min_scaled, e.scale, e.min),
       read_models.unscaled(e.max_scaled, e.scale, e.max)
FROM read_models.rollup_encode(%(s)s, %(lo)s, %(hi)s,
     GREATEST(read_models.decimal_places(%(lo)s), read_models.decimal_places(%(hi)s)),
     %(n)s) e
"""
SLOW = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

decimals = st.builds(
    lambda mantissa, places: float(f"{mantissa}e-{places}"),
    st.integers(-(10**12), 10**12),
    st.integers(0, 6),
)


def _round_trip(db: Conn, s: float, lo: float, hi: float, n: int) -> tuple[Any, ...]:
    row = db.execute(ROUND_TRIP, {"s": s, "lo": lo, "hi": hi, "n": n}, prepare=False).fetchone()
    assert row is not None
    return tuple(row)


@SLOW
@given(readings=st.lists(decimals, min_size=1, max_size=400))
def test_a_bucket_of_decimal_readings_is_kept_scaled_and_read_back(
    db: Conn, readings: list[float]
) -> None:
    total = math.fsum(readings) if len(readings) == 1 else sum(readings)
    lo, hi = min(readings), max(readings)
    scale, s, back_lo, back_hi = _round_trip(db, total, lo, hi, len(readings))
    # min and max are readings: the same doubles back, whatever the layout chose.
    assert (back_lo, back_hi) == (lo, hi)
    bound = len(readings) * 2.3e-16 * sum(abs(r) for r in readings)
    assert abs(s - total) <= bound + 1e-300
    places = max(len(repr(r).partition(".")[2]) if "e" not in repr(r) else 99 for r in readings)
    if scale is not None and places <= scale:
        # Every reading a decimal of those places: the sum kept is the exact decimal sum (the
        # double nearest it), not the float sum's approximation of it.
        assert s == float(sum(Decimal(repr(r)) for r in readings))


@SLOW
@given(
    value=st.floats(allow_nan=True, allow_infinity=True, width=64),
    n=st.integers(1, 10_000),
)
def test_any_double_comes_back_as_itself_or_within_the_sum_bound(
    db: Conn, value: float, n: int
) -> None:
    scale, s, lo, hi = _round_trip(db, value, value, value, n)
    if math.isnan(value):
        assert scale is None and math.isnan(s) and math.isnan(lo) and math.isnan(hi)
        return
    assert (lo, hi) == (value, value)  # -0.0 == 0.0
    assert s == value or abs(s - value) <= (n - 1) * 2.3e-16 * abs(value)


@pytest.mark.parametrize(
    ("s", "lo", "hi", "n", "scale"),
    [
        (128.22, 21.37, 21.38, 6, 2),  # six readings of a temperature at 0.01
        (0.3, 0.1, 0.2, 2, 1),  # 0.1 + 0.2 is 0.30000000000000004 as a float sum
        (1 / 3, 1 / 3, 1 / 3, 1, None),  # not a decimal: float8
        (21.37, 21.37, 21.123456789012, 2, None),  # a reading of 12 places: float8
        (1e20, 1e20, 1e20, 1, None),  # past 2^53 scaled
        (float("inf"), float("inf"), float("inf"), 1, None),
        (-0.005, -0.005, -0.005, 1, 3),
    ],
)
def test_examples(db: Conn, s: float, lo: float, hi: float, n: int, scale: int | None) -> None:
    got = _round_trip(db, s, lo, hi, n)
    assert got[0] == scale
    assert got[2:] == (lo, hi)
