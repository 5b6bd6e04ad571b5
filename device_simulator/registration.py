"""Registering simulated devices through the command API (re-running reuses them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatedDevice:
    device_id: str
    username: str
    password: str
    topic: str


class RegistrationFailed(Exception):
    """The command API refused or could not be reached."""


def register(
    client: httpx.Client, device_id: str, kind: str, metrics: list[dict[str, Any]]
) -> SimulatedDevice:
    """Register the device, or, when it exists from an earlier run, rotate its password."""
    body = {
        "device_id": device_id,
        "name": f"Simulated {kind} {device_id}",
        "kind": kind,
        "metrics": metrics,
        "metadata": {"simulated": True},
    }
    answer = client.post("/devices", json=body)
    if answer.status_code == 409:
        answer = client.post(f"/devices/{device_id}/credentials")
    if answer.status_code not in (200, 201):
        raise RegistrationFailed(f"{device_id}: {answer.status_code} {answer.text[:200]}")
    credentials = answer.json()["credentials"]
    return SimulatedDevice(
        device_id, credentials["username"], credentials["password"], credentials["topic"]
    )


def api_client(api_url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {token}"})


# Silent spells last 30-180 s: a device silent this long is offline, and alarms say so.
SILENCE_OFFLINE_SECONDS = 20


def ensure_offline_rule(client: httpx.Client, kind: str) -> None:
    """Make sure an offline alarm rule watches ``kind``, so that silence faults raise alarms.

    A re-run finds the rule of an earlier run and adds none; an API that refuses is logged,
    not fatal: the readings matter more than the alarms."""
    try:
        answer = client.get("/alarm-rules")
        if answer.status_code == 200:
            for rule in answer.json()["rules"]:
                if (
                    rule["scope"] == "kind"
                    and rule["kind"] == kind
                    and rule["condition"] == "offline"
                ):
                    return
        body = {
            "scope": "kind",
            "kind": kind,
            "condition": "offline",
            "for_seconds": SILENCE_OFFLINE_SECONDS,
            "severity": "minor",
        }
        answer = client.post("/alarm-rules", json=body)
    except httpx.HTTPError as exc:
        logger.warning("no offline alarm rule for %s: %s", kind, exc)
        return
    if answer.status_code != 201:
        logger.warning(
            "no offline alarm rule for %s: %s %s", kind, answer.status_code, answer.text[:200]
        )
