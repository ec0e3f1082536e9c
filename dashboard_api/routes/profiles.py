"""Device profiles: list, read, create or update (``docs/device-profiles.md``).

The profiles live in Redis (``iotp.profile_store``), seeded from the shipped YAML and
``IOTP_PROFILES_FILE``; a write here bumps the store's version and the gateways and stream workers pick it
up within ``IOTP_PROFILES_POLL_S`` without a restart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Path, Response, status
from pydantic import BaseModel, Field

from dashboard_api.auth import require_operator
from dashboard_api.deps import ProfileStoreDep
from iotp.profile_store import StoredProfile
from iotp.profiles import DeviceProfile
from iotp.schema import NAME_PATTERN

router = APIRouter(prefix="/api/profiles", tags=["profiles"])
TypePath = Annotated[str, Path(pattern=NAME_PATTERN, description="device type, e.g. climate")]


class ProfileOut(BaseModel):
    device_type: str
    source: str = Field(description="file: seeded from a profiles YAML; api: written through this API")
    updated_ms: int = Field(description="when it was last written, epoch ms")
    profile: DeviceProfile


class ProfileList(BaseModel):
    version: int = Field(description="the store's version; it changes with every write")
    items: list[ProfileOut]


class ProfileWritten(BaseModel):
    created: bool
    version: int
    item: ProfileOut


def _out(entry: StoredProfile) -> ProfileOut:
    return ProfileOut(
        device_type=entry.device_type, source=entry.source, updated_ms=entry.updated_ms, profile=entry.profile
    )


@router.get("", response_model=ProfileList, summary="Every device profile (types, metrics, units, ranges)")
async def list_profiles(store: ProfileStoreDep) -> ProfileList:
    snap = await store.snapshot()
    return ProfileList(version=snap.version, items=[_out(e) for e in snap.entries.values()])


@router.get(
    "/{device_type}",
    response_model=ProfileOut,
    summary="One device profile",
    responses={404: {"description": "no profile for this device type"}},
)
async def get_profile(store: ProfileStoreDep, device_type: TypePath) -> ProfileOut:
    snap = await store.snapshot()
    entry = snap.entries.get(device_type)
    if entry is None:
        raise HTTPException(404, f"no profile for device type {device_type!r}; known: {', '.join(snap.entries)}")
    return _out(entry)


@router.put(
    "/{device_type}",
    response_model=ProfileWritten,
    summary="Create (201) or replace (200) a device profile (operator role)",
    dependencies=[Depends(require_operator)],
    responses={
        201: {"description": "created", "model": ProfileWritten},
        403: {"description": "the token's role is below operator"},
        422: {"description": "the profile does not validate; the detail says where and why"},
    },
)
async def put_profile(
    store: ProfileStoreDep, response: Response, device_type: TypePath, profile: Annotated[DeviceProfile, Body()]
) -> ProfileWritten:
    """The whole profile (not a patch). Gateways and stream workers apply it within
    ``IOTP_PROFILES_POLL_S``; a profile written here is never overwritten by a profiles file."""
    created = await store.put(device_type, profile)
    snap = await store.snapshot()
    entry = snap.entries.get(device_type)
    if entry is None:  # cannot happen unless the stored JSON is unreadable
        raise HTTPException(500, f"profile {device_type!r} was written but cannot be read back")
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return ProfileWritten(created=created, version=snap.version, item=_out(entry))
