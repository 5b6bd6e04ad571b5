"""The dashboard's calls to the command API, each sent for the logged-in person.

Every call carries the dashboard's key (IOTP_DASHBOARD_API_KEY, else IOTP_API_TOKEN) and, for
a person with an account, the X-Iotp-Dashboard-User header: the command API then acts with
that account's role, never the key's, and records the person as the command's actor. The
key needs the dashboard-users:act permission (the admin role) to act for a person.
"""

from __future__ import annotations

from typing import Any

import httpx

from dashboard.data import settings
from dashboard.login import Person
from iotp.dashboard_accounts import DASHBOARD_USER_HEADER

# What each refusal of the acknowledge command means, beside the API's own sentence.
REFUSALS = {
    401: "the command API refuses the dashboard's IOTP_DASHBOARD_API_KEY (else IOTP_API_TOKEN),"
    " or your account is disabled",
    403: "the dashboard's key may not act for you (dashboard-users:act), or your role may not",
    404: "unknown alarm",
    409: "the alarm is already cleared or acknowledged",
    422: "invalid request",
}


def command_api_url() -> str:
    """The command API as IOTP_API_HOST and IOTP_API_PORT name it (a wildcard is this host)."""
    config = settings()
    host = "127.0.0.1" if config.api_host in ("", "0.0.0.0", "::") else config.api_host  # noqa: S104
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{config.api_port}"


def command_headers(person: Person) -> dict[str, str] | None:
    """The headers of a command sent for ``person``, or None without a key to send it with."""
    key = settings().dashboard_command_key()
    if key is None:
        return None
    headers = {"Authorization": f"Bearer {key.get_secret_value()}"}
    if person.username is not None:
        headers[DASHBOARD_USER_HEADER] = person.username
    return headers


def acknowledge(alarm_id: str, person: Person, note: str) -> tuple[bool, str]:
    """POST /alarms/{id}/acknowledge for ``person``; whether it was accepted, and what to
    tell them."""
    headers = command_headers(person)
    if headers is None:
        return False, (
            "Neither IOTP_DASHBOARD_API_KEY nor IOTP_API_TOKEN is set: the dashboard cannot"
            " call the command API."
        )
    url = f"{command_api_url()}/alarms/{alarm_id}/acknowledge"
    try:
        answer = httpx.post(
            url,
            json={"acknowledged_by": person.name, "note": note or None},
            headers=headers,
            timeout=10,
        )
    except httpx.HTTPError as exc:
        return (
            False,
            f"The command API does not answer at {url} (IOTP_API_HOST, IOTP_API_PORT): {exc}",
        )
    if answer.is_success:
        return True, f"Alarm {alarm_id} acknowledged by {person.name}."
    return False, f"The command API refused ({answer.status_code}, {_meaning(answer)})."


def _meaning(answer: httpx.Response) -> str:
    try:
        detail: Any = answer.json().get("detail")
    except ValueError:
        detail = answer.text[:200]
    if isinstance(detail, list):  # a 422 lists its issues
        detail = "; ".join(str(issue.get("msg", issue)) for issue in detail)
    meaning = REFUSALS.get(answer.status_code, "error")
    return f"{meaning}: {detail}" if detail else meaning
