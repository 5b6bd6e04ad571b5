"""One page of a read model's rows, newest first, with how many rows match in all."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


def page_rows(
    conn: psycopg.Connection[Any], fields: str, source: str, order: str, params: dict[str, Any]
) -> tuple[list[dict[str, Any]], int]:
    """The rows of ``SELECT fields FROM source ORDER BY order`` at ``params``' limit and
    offset, and the total count. Every argument but ``params`` is a constant of the caller."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {fields}, count(*) OVER () AS total FROM {source}"  # noqa: S608
            f" ORDER BY {order} LIMIT %(limit)s OFFSET %(offset)s",
            params,
        ).fetchall()
        if rows:
            return rows, int(rows[0]["total"])
        # A page past the end still says how many there are.
        counted = cur.execute(f"SELECT count(*) AS n FROM {source}", params).fetchone()  # noqa: S608
    return rows, int(counted["n"]) if counted else 0
