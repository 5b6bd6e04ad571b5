"""From the names a firmware uses to iotp metric names, through the profile's mapping.

A name the profile maps becomes its metric. A name it does not map is kept as it is when it
is already a valid iotp metric name (a SenML name relative to the profile's base name), so
that simple firmware needs no mapping; any other name is refused (``unmapped_name``). The
device's declared metrics still decide what is stored (``unknown_metric``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from ingest.payloads import UNIT_MISMATCH, UNMAPPED_NAME, Problem, clip
from iotp.device_profiles import DEVICE, DeviceProfile, MetricMapping, PayloadFormat
from iotp.model import is_metric_name


@functools.lru_cache(maxsize=4096)
def _mappings(
    profile: DeviceProfile, device_name: str | None
) -> Mapping[str, tuple[MetricMapping, ...]]:
    """The profile's mappings by source, ``{device}`` in a source replaced by the device's name."""
    found: dict[str, tuple[MetricMapping, ...]] = {}
    for mapping in profile.metrics:
        source = mapping.source
        if device_name is not None:
            source = source.replace(DEVICE, device_name)
        found[source] = (*found.get(source, ()), mapping)
    return found


def metric_for(
    profile: DeviceProfile,
    name: str,
    device_name: str | None,
    unit: str | None = None,
    unmapped: str | None = None,
) -> str | Problem:
    """The metric a source ``name`` (with its SenML ``unit``) is stored as, or the problem.

    ``unmapped`` is the name kept when there is no mapping (by default ``name`` itself).
    """
    candidates = _mappings(profile, device_name).get(name, ())
    # Only SenML says the unit of each value; elsewhere a mapping's unit is documentation.
    senml = profile.payload_format is PayloadFormat.SENML_JSON
    for mapping in candidates:
        if not senml or mapping.unit is None or mapping.unit == unit:
            return mapping.metric
    if candidates:
        expected = ", ".join(repr(m.unit) for m in candidates)
        return UNIT_MISMATCH, f"{clip(name)!r} is in {unit!r}, the profile expects {expected}"
    kept = name if unmapped is None else unmapped
    if is_metric_name(kept):
        return kept
    return (
        UNMAPPED_NAME,
        f"{clip(name)!r} has no mapping in profile {profile.name!r} and is not a metric name",
    )
