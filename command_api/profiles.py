"""Device profiles and gateways on the command side: their rules and rejections, free of I/O.

A device names a profile that exists and is not a gateway's; a gateway names a gateway
profile and speaks only for registered devices, by friendly names its profile's tree can
tell apart. A profile in use cannot be deleted, nor turned from a device's into a
gateway's (or back), as its devices' topics would change meaning under them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from command_api.domain import CommandRejected, InvalidField
from iotp.device_profiles import (
    DEVICE,
    GATEWAY,
    DeviceProfile,
    GatewayDevices,
    friendly_name_conflicts,
)
from iotp.events import GatewayChanged, GatewayRegistered
from iotp.model import DEFAULT_PROFILE


class ProfileNotFound(CommandRejected):
    def __init__(self, name: str) -> None:
        super().__init__(f"device profile {name!r} does not exist")


class ProfileAlreadyExists(CommandRejected):
    def __init__(self, name: str) -> None:
        super().__init__(f"device profile {name!r} already exists")


class BuiltInProfile(CommandRejected):
    def __init__(self) -> None:
        super().__init__(f"the built-in profile {DEFAULT_PROFILE!r} cannot be changed")


class ProfileInUse(CommandRejected):
    def __init__(self, name: str, devices: int, gateways: int, what: str) -> None:
        super().__init__(
            f"device profile {name!r} is used by {devices} devices and {gateways} gateways:"
            f" it cannot be {what}"
        )


class GatewayNotFound(CommandRejected):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"gateway {gateway_id!r} is not registered")


class GatewayAlreadyExists(CommandRejected):
    def __init__(self, gateway_id: str) -> None:
        super().__init__(f"{gateway_id!r} is already a gateway's or a device's broker account")


class FriendlyNameTaken(CommandRejected):
    """Two gateways of a profile whose topics do not name the gateway would publish the
    same topic for a friendly name: nobody could tell whose device it is."""

    def __init__(self, names: list[str], profile: str) -> None:
        listed = ", ".join(repr(n) for n in names)
        super().__init__(
            f"friendly names {listed} are another gateway's of profile {profile!r}, whose"
            f" topics do not hold {GATEWAY}"
        )


def check_device_profile(profile: DeviceProfile | None, name: str) -> DeviceProfile:
    """The profile a device may name, or 422 on ``profile``."""
    if profile is None:
        raise InvalidField("profile", f"device profile {name!r} does not exist")
    if profile.gateway:
        raise InvalidField("profile", f"{name!r} is a gateway profile: register a gateway")
    return profile


def check_gateway_profile(profile: DeviceProfile | None, name: str) -> DeviceProfile:
    if profile is None:
        raise InvalidField("profile", f"device profile {name!r} does not exist")
    if not profile.gateway:
        raise InvalidField("profile", f"{name!r} is not a gateway profile (gateway: true)")
    return profile


def gateway_topics_name_it(profile: DeviceProfile) -> bool:
    """Whether every telemetry topic of the profile holds ``{gateway}``."""
    return all(GATEWAY in p.split("/") for p in profile.topics.telemetry)


@dataclass
class Gateway:
    gateway_id: str
    name: str
    profile: str
    credential_hash: str
    devices: dict[str, str] = field(default_factory=dict)

    def checked_devices(self, profile: DeviceProfile, known: set[str]) -> GatewayDevices:
        """The device map, valid for ``profile``, every device in ``known``; else 422."""
        try:
            devices = GatewayDevices(gateway_id=self.gateway_id, devices=self.devices)
        except ValueError as exc:
            raise InvalidField("devices", str(exc)) from None
        unknown = sorted(set(self.devices.values()) - known)
        if unknown:
            raise InvalidField("devices", f"devices not registered or not active: {unknown}")
        conflicts = friendly_name_conflicts(profile, self.gateway_id, self.devices)
        if conflicts:
            raise InvalidField(
                "devices",
                f"friendly names {list(conflicts)} would be read as another topic of profile"
                f" {profile.name!r}'s tree ({DEVICE} spans levels)",
            )
        return devices

    def registered(self) -> GatewayRegistered:
        return GatewayRegistered(credential_hash=self.credential_hash, **self._attributes())

    def changed(self, changed: tuple[str, ...]) -> GatewayChanged:
        return GatewayChanged(
            changed=changed, credential_hash=self.credential_hash, **self._attributes()
        )

    def _attributes(self) -> dict[str, object]:
        return {
            "gateway_id": self.gateway_id,
            "name": self.name,
            "profile": self.profile,
            "devices": dict(self.devices),
        }
