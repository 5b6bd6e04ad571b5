"""Value types shared by commands and events, with the validation rules defined once."""

from __future__ import annotations

import functools
import math
import re
import unicodedata
from enum import StrEnum
from typing import Annotated, Any

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, JsonValue, model_validator

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,64}$"
METADATA_MAX_BYTES = 8 * 1024
METADATA_MAX_DEPTH = 8
# Integers a signed 64-bit field holds: what every JSON encoder on the way (orjson) and
# most clients' decoders take.
METADATA_MIN_INT, METADATA_MAX_INT = -(2**63), 2**63 - 1
MAX_DECLARED_METRICS = 100


def _check_text(value: str) -> str:
    """Refuse text PostgreSQL cannot store or a dashboard should not render."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text is not valid UTF-8 (lone surrogate)") from None
    for char in value:
        if unicodedata.category(char) == "Cc" and char not in "\t":
            raise ValueError(f"text contains the control character U+{ord(char):04X}")
    return value


def _check_not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


SafeText = Annotated[str, AfterValidator(_check_text)]
Name = Annotated[
    str,
    Field(min_length=1, max_length=200),
    AfterValidator(_check_text),
    AfterValidator(_check_not_blank),
]
Kind = Annotated[
    str,
    Field(min_length=1, max_length=64),
    AfterValidator(_check_text),
    AfterValidator(_check_not_blank),
]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
MetricName = Annotated[str, Field(pattern=METRIC_NAME_PATTERN)]

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)


# The same patterns for the hot paths that do not build models (ingest's payloads, the
# aggregator's fast decoding), read as pydantic reads them: the whole text. Python's `$`
# alone also matches before a trailing newline, which the models refuse. A fleet has few
# distinct names, so each is matched once.
@functools.lru_cache(maxsize=65_536)
def is_device_id(text: str) -> bool:
    return _DEVICE_ID.fullmatch(text) is not None


@functools.lru_cache(maxsize=65_536)
def is_metric_name(text: str) -> bool:
    return _METRIC_NAME.fullmatch(text) is not None


Unit = Annotated[str, Field(max_length=32), AfterValidator(_check_text)]


def _walk_metadata(value: Any, depth: int) -> None:
    if depth > METADATA_MAX_DEPTH:
        raise ValueError(f"metadata is nested deeper than {METADATA_MAX_DEPTH} levels")
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("metadata contains a NUL character")
        _check_text_lenient(value)
    elif isinstance(value, dict):
        for key, item in value.items():
            if not key or len(key) > 128:
                raise ValueError("metadata keys must be 1-128 characters")
            _walk_metadata(key, depth)
            _walk_metadata(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _walk_metadata(item, depth + 1)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("metadata numbers must be finite")
    elif isinstance(value, int) and not METADATA_MIN_INT <= value <= METADATA_MAX_INT:
        raise ValueError("metadata integers must fit in 64 bits (signed)")


def _check_text_lenient(value: str) -> None:
    # Free-form metadata may hold newlines, but never bytes PostgreSQL's jsonb rejects.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("metadata text is not valid UTF-8 (lone surrogate)") from None


def _check_metadata(value: dict[str, JsonValue]) -> dict[str, JsonValue]:
    _walk_metadata(value, 0)
    try:
        size = len(orjson.dumps(value))
    except orjson.JSONEncodeError as exc:  # a TypeError, which pydantic would not report
        raise ValueError(f"metadata cannot be encoded as JSON: {exc}") from None
    if size > METADATA_MAX_BYTES:
        raise ValueError(f"metadata is {size} bytes encoded, over the {METADATA_MAX_BYTES} limit")
    return value


Metadata = Annotated[
    dict[str, JsonValue],
    AfterValidator(_check_metadata),
    Field(
        description=f"Free-form JSON object: at most {METADATA_MAX_BYTES} bytes encoded,"
        f" {METADATA_MAX_DEPTH} levels deep, keys of 1-128 characters, no NUL,"
        " integers within signed 64 bits"
    ),
]


class Role(StrEnum):
    """What an API key or a dashboard account may do (iotp.permissions has the table)."""

    ADMIN = "admin"
    OPERATOR = "operator"
    PROVISIONER = "provisioner"
    VIEWER = "viewer"


class FrozenModel(BaseModel):
    """Immutable, strict-about-unknown-fields base for every message and value type."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


# Numbers are strict: JSON true is not 1.0, nor "52.3" a coordinate (integers are numbers).
class Location(FrozenModel):
    lat: float = Field(ge=-90, le=90, strict=True)
    lon: float = Field(ge=-180, le=180, strict=True)


class MetricSpec(FrozenModel):
    """A metric a device declares: readings of other metrics are refused by ingest."""

    name: MetricName
    unit: Unit | None = None
    min: float | None = Field(default=None, strict=True)
    max: float | None = Field(default=None, strict=True)

    @model_validator(mode="after")
    def _range_is_ordered(self) -> MetricSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"metric {self.name!r}: min {self.min} is greater than max {self.max}")
        return self


def _check_unique_metrics(metrics: tuple[MetricSpec, ...]) -> tuple[MetricSpec, ...]:
    names = [metric.name for metric in metrics]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"metric names are declared twice: {', '.join(duplicated)}")
    return metrics


DeclaredMetrics = Annotated[
    tuple[MetricSpec, ...],
    Field(max_length=MAX_DECLARED_METRICS),
    AfterValidator(_check_unique_metrics),
]


# The built-in device profile (iotp.device_profiles): today's payload on devices/{id}/telemetry.
DEFAULT_PROFILE = "iotp"
ProfileName = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, examples=[DEFAULT_PROFILE])]


class DeviceAttributes(FrozenModel):
    """What describes a device; shared by the command that registers it and its events."""

    name: Name
    kind: Kind
    location: Location | None = None
    metadata: Metadata = Field(default_factory=dict)
    metrics: DeclaredMetrics = ()
    # How the device speaks MQTT; events from before profiles existed are the built-in one's.
    profile: ProfileName = DEFAULT_PROFILE
