"""Registering simulated devices through the command API (re-running reuses them)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

from iotp.device_profiles import BUILTIN_PROFILE, DeviceProfile, device_topic

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
    client: httpx.Client,
    device_id: str,
    kind: str,
    metrics: list[dict[str, Any]],
    profile: DeviceProfile = BUILTIN_PROFILE,
) -> SimulatedDevice:
    """Register the device speaking ``profile``; when it exists from an earlier run, rotate
    its password, and give it ``profile`` if it spoke another."""
    body: dict[str, Any] = {
        "device_id": device_id,
        "name": f"Simulated {kind} {device_id}",
        "kind": kind,
        "metrics": metrics,
        "metadata": {"simulated": True},
    }
    if profile.name != BUILTIN_PROFILE.name:
        body["profile"] = profile.name
    answer = client.post("/devices", json=body)
    if answer.status_code == 409:
        answer = client.post(f"/devices/{device_id}/credentials")
        # The answer's topic is its profile's: another one means an earlier run's format.
        if answer.status_code == 200 and _topic(answer) != device_topic(profile, device_id):
            changed = client.patch(f"/devices/{device_id}", json={"profile": profile.name})
            if changed.status_code != 200:
                raise RegistrationFailed(f"{device_id}: {changed.status_code} {changed.text[:200]}")
    if answer.status_code not in (200, 201):
        raise RegistrationFailed(f"{device_id}: {answer.status_code} {answer.text[:200]}")
    credentials = answer.json()["credentials"]
    return SimulatedDevice(
        device_id, credentials["username"], credentials["password"], credentials["topic"]
    )


def _topic(answer: httpx.Response) -> str:
    return str(answer.json()["credentials"]["topic"])


def ensure_profile(client: httpx.Client, profile: DeviceProfile) -> str:
    """Save ``profile`` on the command API (create it, or replace one of an earlier run);
    its name."""
    body = profile.model_dump(mode="json")
    answer = client.post("/device-profiles", json=body)
    if answer.status_code == 409:
        answer = client.put(f"/device-profiles/{profile.name}", json=body)
    if answer.status_code not in (200, 201):
        raise RegistrationFailed(
            f"profile {profile.name}: {answer.status_code} {answer.text[:200]}"
        )
    return profile.name


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
