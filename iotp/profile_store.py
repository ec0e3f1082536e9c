"""The live device profiles, shared by every process through Redis.

* Hash ``<prefix>:profiles``: device type -> JSON ``{"profile": {...}, "source": "file"|"api", "digest",
  "updated_ms"}``; ``<prefix>:profiles:version``: incremented by every change.
* Every process seeds the hash from its profile files at start (:meth:`ProfileStore.seed`): a type that is
  absent is added, and a type that came from a file is replaced when the file's version differs (so an
  edited ``IOTP_PROFILES_FILE`` takes effect); a type written through the API is never overwritten by a
  file. The check and the write are one Lua script, so a seed racing an API write cannot undo it.
* The API writes with :meth:`ProfileStore.put`. Gateways and stream workers poll the version every
  ``IOTP_PROFILES_POLL_S`` (:class:`ProfileWatcher`) and reload on a change: no restart needed.
* With Redis down the processes use their file profiles and keep polling.

Redis' AOF makes the hash durable (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.asyncio as aioredis

from iotp.profiles import DeviceProfile, ProfileError, Profiles, file_profiles, parse_profile
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import RedisNames, redis_names

log = logging.getLogger("iotp.profiles")

SEED_SCRIPT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  if ok and type(doc) == 'table' and (doc.source ~= 'file' or doc.digest == ARGV[3]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return redis.call('INCR', KEYS[2])
"""


def digest(profile: DeviceProfile) -> str:
    return hashlib.blake2b(
        orjson.dumps(profile.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS), digest_size=12
    ).hexdigest()


def encode_entry(profile: DeviceProfile, source: str, at_ms: int) -> bytes:
    return orjson.dumps(
        {"profile": profile.model_dump(mode="json"), "source": source, "digest": digest(profile), "updated_ms": at_ms}
    )


@dataclass(frozen=True, slots=True)
class StoredProfile:
    device_type: str
    profile: DeviceProfile
    source: str
    updated_ms: int


@dataclass(slots=True)
class Snapshot:
    """What the store held at one version; ``problems`` lists entries that did not validate (skipped)."""

    version: int
    entries: dict[str, StoredProfile] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def profiles(self) -> dict[str, DeviceProfile]:
        return {t: e.profile for t, e in self.entries.items()}


def decode_entries(version: int, raw: dict) -> Snapshot:
    """Pure: the hash's fields decoded; a malformed entry is reported in ``problems`` and skipped."""
    snap = Snapshot(version)
    for key, value in raw.items():
        device_type = key.decode() if isinstance(key, bytes) else key
        try:
            doc = orjson.loads(value)
            profile = parse_profile(doc["profile"], device_type)
            snap.entries[device_type] = StoredProfile(
                device_type, profile, str(doc.get("source", "api")), int(doc.get("updated_ms", 0))
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, ProfileError) as exc:
            snap.problems.append(f"{device_type}: {exc}")
    snap.entries = dict(sorted(snap.entries.items()))
    return snap


class ProfileStore:
    def __init__(self, redis: aioredis.Redis, names: RedisNames) -> None:
        self.redis = redis
        self.names = names
        self._seed = redis.register_script(SEED_SCRIPT)

    async def seed(self, profiles: Profiles) -> int:
        """Add absent types and refresh file-sourced ones from ``profiles``; returns how many changed."""
        at = now_ms()
        changed = 0
        for device_type, profile in profiles.items():
            result = await self._seed(
                keys=[self.names.profiles, self.names.profiles_version],
                args=[device_type, encode_entry(profile, "file", at), digest(profile)],
            )
            changed += int(result) > 0
        return changed

    async def put(self, device_type: str, profile: DeviceProfile) -> bool:
        """Create or replace a type (source ``api``); True if it was created."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.names.profiles, device_type, encode_entry(profile, "api", now_ms()))
        pipe.incr(self.names.profiles_version)
        created, _version = await pipe.execute()
        return bool(created)

    async def version(self) -> int:
        return int(await self.redis.get(self.names.profiles_version) or 0)

    async def snapshot(self) -> Snapshot:
        pipe = self.redis.pipeline(transaction=True)
        pipe.get(self.names.profiles_version)
        pipe.hgetall(self.names.profiles)
        version, raw = await pipe.execute()
        snap = decode_entries(int(version or 0), raw)
        for problem in snap.problems:
            log.warning("stored device profile skipped: %s", problem)
        return snap


class ProfileWatcher:
    """The current profiles of one process: its file profiles, replaced by the store's content as soon as
    Redis answers, and reloaded whenever the store's version changes."""

    def __init__(
        self,
        redis: aioredis.Redis,
        names: RedisNames,
        fallback: Profiles,
        poll_s: float = 2.0,
        on_change: Callable[[dict[str, DeviceProfile]], Awaitable[None] | None] | None = None,
    ) -> None:
        self.store = ProfileStore(redis, names)
        self.fallback = dict(fallback)
        self.profiles: dict[str, DeviceProfile] = dict(fallback)
        self.version: int | None = None
        self.seeded = False
        self.poll_s = poll_s
        self.on_change = on_change

    async def refresh(self) -> bool:
        """Seed (once) and reload if the store changed; True if the profiles changed. Raises on Redis errors."""
        if not self.seeded:
            await self.store.seed(self.fallback)
            self.seeded = True
        if self.version is not None and await self.store.version() == self.version:
            return False
        snap = await self.store.snapshot()
        profiles = {**self.fallback, **snap.profiles}
        changed = profiles != self.profiles
        self.profiles, self.version = profiles, snap.version
        if changed and self.on_change is not None:
            result = self.on_change(profiles)
            if asyncio.iscoroutine(result):
                await result
        return changed

    async def try_refresh(self) -> bool:
        try:
            return await self.refresh()
        except Exception as exc:  # Redis down: keep the profiles we have, try again next time
            log.warning("device profiles not refreshed from Redis (%r); using the current ones", exc)
            return False

    async def run(self) -> None:
        """Poll forever (cancel to stop)."""
        while True:
            await self.try_refresh()
            await asyncio.sleep(self.poll_s)


def settings_fallback(settings: Settings) -> dict[str, DeviceProfile]:
    """The file profiles of this process (shipped + ``IOTP_PROFILES_FILE``)."""
    return file_profiles(settings.profiles_file)


def watcher_for(settings: Settings, redis: aioredis.Redis, **kwargs: Any) -> ProfileWatcher:
    return ProfileWatcher(redis, redis_names(settings), settings_fallback(settings), settings.profiles_poll_s, **kwargs)


async def _current(settings: Settings, timeout_s: float) -> dict[str, DeviceProfile]:
    client = aioredis.from_url(settings.redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        watcher = watcher_for(settings, client)
        await watcher.try_refresh()
        return watcher.profiles
    finally:
        await client.aclose()


def current_profiles(settings: Settings, timeout_s: float = 2.0) -> dict[str, DeviceProfile]:
    """For synchronous callers (simulator): the live profiles, or the file ones if Redis does not answer."""
    return asyncio.run(_current(settings, timeout_s))
