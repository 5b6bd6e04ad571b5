"""The fold's integer bucket keys name the same minutes as datetimes would, and the store
sends them to PostgreSQL as those minutes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from iotp.pg_arrays import unix_minute_micros
from read_models.projection import minute_of

PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# From before the epoch to the end of datetime's range, to the microsecond.
INSTANTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(INSTANTS)
def test_a_minute_key_is_the_minute_the_instant_falls_in(ts: datetime) -> None:
    start = ts.replace(second=0, microsecond=0)
    assert unix_minute_micros(minute_of(ts)) == (start - PG_EPOCH) // timedelta(microseconds=1)


def test_the_last_microsecond_of_a_minute_stays_in_it() -> None:
    for start in (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)):
        last = start + timedelta(seconds=59, microseconds=999_999)
        assert minute_of(last) == minute_of(start) == minute_of(last + timedelta(minutes=1)) - 1
