"""Online and offline: the payloads firmware publishes on its availability topic.

Tasmota's last will says ``Offline`` and its birth ``Online`` (on ``tele/<topic>/LWT``);
ESPHome's ``<node>/status`` and Zigbee2MQTT's legacy availability say ``online``/``offline``,
and Zigbee2MQTT 2 says ``{"state":"online"}``. Case does not matter.
"""

from __future__ import annotations

from enum import StrEnum

import orjson

from iotp.device_profiles import DeviceProfile


class Availability(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


def parse_availability(profile: DeviceProfile, payload: bytes) -> Availability | None:
    """Whether an availability payload says online or offline; None when it says neither."""
    try:
        text = payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if text.startswith("{"):
        try:
            document = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        state = document.get("state") if isinstance(document, dict) else None
        text = state.strip() if isinstance(state, str) else ""
    said = text.casefold()
    if said == profile.topics.online_payload.casefold():
        return Availability.ONLINE
    if said == profile.topics.offline_payload.casefold():
        return Availability.OFFLINE
    return None
