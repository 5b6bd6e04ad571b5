"""HTTP route of the audit trail: a filtered page of the commands issued, newest first.

For admins and operators only (``audit:read``): the trail names every key and person.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from iotp.http_errors import error_responses, invalid
from iotp.permissions import Permission, requires
from read_models import audit_queries
from read_models.audit import Outcome
from read_models.dependencies import PageWindowDep, ReadConnectionDep

# Checked by AccessMiddleware before anything is read (iotp.permissions).
audit_router = APIRouter(prefix="/audit", dependencies=[requires(Permission.AUDIT_READ)])


@audit_router.get(
    "", response_model=audit_queries.AuditPage, responses=error_responses(401, 403, 422, 503)
)
def list_audit(
    db: ReadConnectionDep,
    window: PageWindowDep,
    actor: Annotated[
        str | None,
        Query(min_length=1, max_length=200, description="An actor's name or id, exactly"),
    ] = None,
    action: Annotated[
        str | None,
        Query(min_length=1, max_length=2100, description='"device.register", "POST /devices"'),
    ] = None,
    target: Annotated[
        str | None, Query(min_length=1, max_length=2100, description='"device:boiler-1"')
    ] = None,
    outcome: Outcome | None = None,
    start: Annotated[AwareDatetime | None, Query(alias="from")] = None,
    end: Annotated[AwareDatetime | None, Query(alias="to")] = None,
) -> audit_queries.AuditPage:
    """Commands recorded in [from, to) (times with their offset; either may be left out),
    newest first; ``actor`` matches an actor's name or id."""
    if start is not None and end is not None and start >= end:
        raise invalid(("query", "from"), "from must be before to")
    return audit_queries.list_audit(
        db,
        actor=actor,
        action=action,
        target=target,
        outcome=outcome,
        start=start,
        end=end,
        limit=window.limit,
        offset=window.offset,
    )
