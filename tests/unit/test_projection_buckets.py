"""The fold's integer bucket keys name the same minutes and hours as datetimes would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from read_models.projection import hour_of, minute_of, minute_start

# From before the epoch to the end of datetime's range, to the microsecond.
INSTANTS = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(INSTANTS)
def test_a_minute_key_is_the_minute_the_instant_falls_in(ts: datetime) -> None:
    assert minute_start(minute_of(ts)) == ts.replace(second=0, microsecond=0)


@given(INSTANTS)
def test_an_hour_key_is_the_hour_the_instant_falls_in(ts: datetime) -> None:
    assert minute_start(hour_of(minute_of(ts))) == ts.replace(minute=0, second=0, microsecond=0)


def test_the_last_microsecond_of_a_minute_stays_in_it() -> None:
    for start in (datetime(1969, 12, 31, 23, 59, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)):
        last = start + timedelta(seconds=59, microseconds=999_999)
        assert minute_of(last) == minute_of(start) == minute_of(last + timedelta(minutes=1)) - 1
