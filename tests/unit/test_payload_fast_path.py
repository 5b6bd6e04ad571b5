"""The fast path of iotp's payload format never decides otherwise than the full path.

`_all_good` (msgspec, for messages whose every reading is storable) either declines, or
returns exactly what `_parse_in_full` (orjson, every rejection worded) returns.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from ingest.payloads import (
    DeviceInfo,
    Limits,
    MetricRange,
    _all_good,
    _parse_in_full,
    parse_iotp_payload,
)

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_readings=4, max_metrics=3, max_age=timedelta(days=30))
DECLARED = DeviceInfo(
    "dev-1", "active", {"temperature": MetricRange(-40, 85), "humidity": MetricRange(0, None)}
)
UNDECLARED = DeviceInfo("dev-2", "active")

names = st.sampled_from(["temperature", "humidity", "battery", "bad name", "x" * 65, "\u00e9", ""])
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([-0.0, 0, 85, 85.0, 85.00001, -40, -40.5, 1e308, 2**63, 2**64, -(2**63) - 1]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(), st.text(max_size=8))
timestamps = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [
            int((NOW - timedelta(minutes=1)).timestamp() * 1000),
            (NOW - timedelta(minutes=1)).timestamp() * 1000 + 0.5,
            int((NOW + timedelta(minutes=10)).timestamp() * 1000),
            int((NOW - timedelta(days=40)).timestamp() * 1000),
            "2026-12-07T11:59:00+00:00",
            "2026-12-07T11:59:00.1234567Z",
            "2026-12-07T13:59:00+02:00",
            "2026-12-07T11:59:00",
            "2026-12-07 11:59:00+00:00",
            "20261207T115900Z",
            "1999-12-31T23:59:59Z",
            "yesterday",
        ]
    ),
)
metrics = st.dictionaries(names, st.one_of(numbers, scalars), max_size=4)
readings = st.fixed_dictionaries(
    {"metrics": st.one_of(metrics, scalars)},
    optional={
        "ts": timestamps,
        "seq": st.one_of(st.integers(min_value=-(2**70), max_value=2**70), scalars),
        "extra": scalars,
    },
)
documents = st.one_of(readings, st.lists(readings, max_size=6), scalars)


def _encode(document: object) -> bytes:
    try:
        return orjson.dumps(document)
    except TypeError:  # an integer orjson will not write: JSON allows it, so write it
        return repr(document).replace("'", '"').replace("None", "null").encode()


@settings(max_examples=600, deadline=None)
@given(document=documents, device=st.sampled_from([DECLARED, UNDECLARED]))
def test_the_fast_path_decides_as_the_full_path_does(document: object, device: DeviceInfo) -> None:
    payload = _encode(document)
    fast = _all_good(device, payload, NOW, LIMITS)
    if fast is not None:
        assert fast == _parse_in_full(device, payload, NOW, LIMITS)
        assert not fast.rejections


@given(
    raw=st.sampled_from(
        [
            b'{"metrics":{"a":1},"seq":123456789012345678901234567890}',
            b'{"metrics":{"a":1},"seq":18446744073709551616}',
            b'{"metrics":{"a":1,"b":true}}',
            b'{"metrics":{"a":1e400}}',
            b'\xef\xbb\xbf{"metrics":{"a":1}}',
            b'{"metrics":{"a":1},"ts":"\xff"}',
            b'{"metrics":{"a":1},"ts":123456789012345678901234567890}',
            b'{"metrics":{"a":1},"ts":"2026-12-07T11:59:00"}',
            b'{"metrics":{}}',
            b"[]",
            b'{"metrics":{"a":1},"other":1}',
        ]
    )
)
def test_edge_cases_where_msgspec_and_orjson_read_json_differently(raw: bytes) -> None:
    fast = _all_good(UNDECLARED, raw, NOW, LIMITS)
    assert fast is None or fast == _parse_in_full(UNDECLARED, raw, NOW, LIMITS)
    # and whatever the path, the message is answered as the full path answers it
    assert parse_iotp_payload(UNDECLARED, raw, NOW, LIMITS) == _parse_in_full(
        UNDECLARED, raw, NOW, LIMITS
    )


def test_good_messages_take_the_fast_path() -> None:
    """Otherwise the test above would hold by the fast path declining everything."""
    single = b'{"ts":"2026-12-07T11:59:00+00:00","metrics":{"temperature":90,"humidity":4.5}}'
    many = b'[{"ts":1796644740000,"metrics":{"temperature":20}},{"metrics":{"humidity":1}}]'
    for payload in (single, many):
        fast = _all_good(DECLARED, payload, NOW, LIMITS)
        assert fast is not None
        assert fast == _parse_in_full(DECLARED, payload, NOW, LIMITS)
    first = _all_good(DECLARED, single, NOW, LIMITS)
    assert first is not None and first.readings[0].out_of_range == ("temperature",)
