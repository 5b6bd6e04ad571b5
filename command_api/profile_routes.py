"""Device profile routes: requests into commands, handler results into answers.

Changes go through :mod:`command_api.profile_handlers`; reads are plain queries
(:mod:`command_api.configuration`). The built-in profile ``iotp`` is listed and read like
the others, and refused (409) to every change.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, Field

from command_api import configuration, profile_handlers
from command_api.dependencies import PoolDep, UnitOfWorkDep, documented_bearer
from command_api.profiles import ProfileNotFound
from iotp.commands import CreateDeviceProfile, DeleteDeviceProfile, ReplaceDeviceProfile
from iotp.device_profiles import DeviceProfile
from iotp.http_errors import error_responses, invalid
from iotp.model import DEVICE_ID_PATTERN
from iotp.permissions import Permission, requires

device_profiles = APIRouter(
    prefix="/device-profiles",
    tags=["device profiles"],
    dependencies=[Depends(documented_bearer)],
    responses=error_responses(401, 403, 422, 503),
)
_READ = requires(Permission.PROFILES_READ)
_MANAGE = requires(Permission.PROFILES_MANAGE)
ProfileNamePath = Annotated[str, Path(pattern=DEVICE_ID_PATTERN, examples=["tasmota"])]


class ProfileList(BaseModel):
    profiles: list[DeviceProfile]


class ProfileSavedOut(BaseModel):
    profile: DeviceProfile
    event_id: UUID


class ProfileDeletedOut(BaseModel):
    name: str
    event_id: UUID = Field(description="The DeviceProfileDeleted event")


@device_profiles.post(
    "",
    status_code=201,
    response_model=ProfileSavedOut,
    dependencies=[_MANAGE],
    responses=error_responses(400, 409, 413),
)
async def post_profile(
    profile: DeviceProfile, response: Response, uow: UnitOfWorkDep
) -> ProfileSavedOut:
    """Create a profile: a payload format, a topic tree and a metric mapping, checked here."""
    saved = await profile_handlers.create_profile(CreateDeviceProfile(profile=profile), uow)
    response.headers["Location"] = f"/device-profiles/{profile.name}"
    return ProfileSavedOut(profile=saved.profile, event_id=saved.event_id)


@device_profiles.get("", response_model=ProfileList, dependencies=[_READ])
async def list_profiles(pool: PoolDep) -> ProfileList:
    """The built-in profile, then every other by name."""
    return ProfileList(profiles=await configuration.device_profiles(pool))


@device_profiles.get(
    "/{name}", response_model=DeviceProfile, dependencies=[_READ], responses=error_responses(404)
)
async def get_profile(name: ProfileNamePath, pool: PoolDep) -> DeviceProfile:
    profile = await configuration.device_profile(pool, name)
    if profile is None:
        raise ProfileNotFound(name)
    return profile


@device_profiles.put(
    "/{name}",
    response_model=ProfileSavedOut,
    dependencies=[_MANAGE],
    responses=error_responses(400, 404, 409, 413),
)
async def put_profile(
    name: ProfileNamePath, profile: DeviceProfile, uow: UnitOfWorkDep
) -> ProfileSavedOut:
    """Replace every attribute of a profile; its devices' topics follow (ingest, broker)."""
    if profile.name != name:
        raise invalid(("body", "name"), f"the body names profile {profile.name!r}, not {name!r}")
    saved = await profile_handlers.replace_profile(ReplaceDeviceProfile(profile=profile), uow)
    return ProfileSavedOut(profile=saved.profile, event_id=saved.event_id)


@device_profiles.delete(
    "/{name}",
    response_model=ProfileDeletedOut,
    dependencies=[_MANAGE],
    responses=error_responses(404, 409),
)
async def delete_profile(name: ProfileNamePath, uow: UnitOfWorkDep) -> ProfileDeletedOut:
    """Delete a profile no device or gateway uses (409 while one does)."""
    event_id = await profile_handlers.delete_profile(DeleteDeviceProfile(name=name), uow)
    return ProfileDeletedOut(name=name, event_id=event_id)
