"""The name checks of the hot paths accept exactly what the models accept."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from iotp.model import DeviceId, MetricName, is_device_id, is_metric_name

# Valid characters, and the ones a pattern check gets wrong most easily.
TEXTS = st.text(alphabet="aZ9_.-\n\r\t $/é\x00", max_size=70)


def _accepts(adapter: TypeAdapter[str], text: str) -> bool:
    try:
        adapter.validate_python(text)
    except ValidationError:
        return False
    return True


@given(TEXTS)
def test_device_ids(text: str) -> None:
    assert is_device_id(text) == _accepts(TypeAdapter(DeviceId), text)


@given(TEXTS)
def test_metric_names(text: str) -> None:
    assert is_metric_name(text) == _accepts(TypeAdapter(MetricName), text)


def test_a_trailing_newline_is_refused() -> None:
    assert is_device_id("dev-1") and is_metric_name("temp")
    assert not is_device_id("dev-1\n") and not is_metric_name("temp\n")
