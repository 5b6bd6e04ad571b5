"""What the query API's routes depend on, as Annotated aliases over the application's state.

`create_query_app` puts the settings and the liveness rule in ``app.state``; its lifespan
adds the read pool and the Redis client.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import redis
from fastapi import Depends, Query, Request
from fastapi.exceptions import RequestValidationError

from iotp.settings import Settings
from read_models import queries

MAX_OFFSET = 10_000_000
DEFAULT_PAGE_SIZE = 50


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _read_connection(request: Request) -> Iterator[queries.Conn]:
    with request.app.state.pool.connection(timeout=10) as conn:
        yield conn


def _redis(request: Request) -> redis.Redis:
    client: redis.Redis = request.app.state.redis
    return client


def _liveness_rule(request: Request) -> queries.LivenessRule:
    rule: queries.LivenessRule = request.app.state.liveness_rule
    return rule


SettingsDep = Annotated[Settings, Depends(_settings)]
ReadConnectionDep = Annotated[queries.Conn, Depends(_read_connection)]
RedisDep = Annotated[redis.Redis, Depends(_redis)]
LivenessRuleDep = Annotated[queries.LivenessRule, Depends(_liveness_rule)]


@dataclass(frozen=True)
class PageWindow:
    limit: int
    offset: int


def _page_window(
    request: Request,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1)] = DEFAULT_PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> PageWindow:
    """``limit`` and ``offset``; a limit over IOTP_QUERY_MAX_PAGE_SIZE is refused as FastAPI
    refuses any bound (a setting cannot be in the signature; the app states it in OpenAPI)."""
    max_page = settings.query_max_page_size
    # Like a bound in the signature, this checks a given limit only, never the default.
    if limit > max_page and "limit" in request.query_params:
        raise RequestValidationError(
            [
                {
                    "type": "less_than_equal",
                    "loc": ("query", "limit"),
                    "msg": f"Input should be less than or equal to {max_page}",
                    "input": request.query_params.get("limit"),
                    "ctx": {"le": max_page},
                }
            ]
        )
    return PageWindow(limit, offset)


PageWindowDep = Annotated[PageWindow, Depends(_page_window)]
