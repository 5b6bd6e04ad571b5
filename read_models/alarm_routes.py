"""HTTP routes of the alarm read model: a filtered page of alarms, and one alarm.

They read read_models.alarms only; acknowledging is the command API's (it writes events).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, HTTPException, Query

from iotp.events import Severity
from iotp.http_errors import error_responses, invalid
from iotp.model import DEVICE_ID_PATTERN
from iotp.permissions import Permission, requires
from read_models import alarms
from read_models.dependencies import PageWindowDep, ReadConnectionDep

# Checked by AccessMiddleware before anything is read (iotp.permissions).
alarm_router = APIRouter(prefix="/alarms", dependencies=[requires(Permission.READ_MODELS_READ)])
_READ_ERRORS = (401, 403, 503)


@alarm_router.get(
    "", response_model=alarms.AlarmPage, responses=error_responses(*_READ_ERRORS, 422)
)
def list_alarms(
    db: ReadConnectionDep,
    window: PageWindowDep,
    device_id: Annotated[str | None, Query(pattern=DEVICE_ID_PATTERN)] = None,
    severity: Severity | None = None,
    state: alarms.AlarmState | None = None,
    start: Annotated[datetime | None, Query(alias="from")] = None,
    end: Annotated[datetime | None, Query(alias="to")] = None,
) -> alarms.AlarmPage:
    """Alarms raised between from and to (UTC; either may be left out), newest first."""
    start = _utc(start)
    end = _utc(end)
    if start is not None and end is not None and start >= end:
        raise invalid(("query", "from"), "from must be before to")
    return alarms.list_alarms(
        db,
        device_id=device_id,
        severity=severity,
        state=state,
        start=start,
        end=end,
        limit=window.limit,
        offset=window.offset,
    )


@alarm_router.get(
    "/{alarm_id}",
    response_model=alarms.Alarm,
    responses=error_responses(*_READ_ERRORS, 404, 422),
)
def get_alarm(db: ReadConnectionDep, alarm_id: UUID) -> alarms.Alarm:
    """One alarm, with who acknowledged it and when it cleared."""
    alarm = alarms.get_alarm(db, alarm_id)
    if alarm is None:
        raise HTTPException(404, f"alarm {alarm_id} is not known to the read models")
    return alarm


def _utc(value: datetime | None) -> datetime | None:
    """A time without an offset is UTC, as for the series routes."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)
