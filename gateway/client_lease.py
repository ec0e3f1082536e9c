"""One gateway process per MQTT client id, enforced with a lease in Redis.

Two gateways started with the same client id share one persistent MQTT session, and the broker hands it
to whichever connected last. MQTT 5 lets a broker tell the loser (DISCONNECT, reason 142 "session taken
over"), but Mosquitto 2.0.11 just closes the connection, so both gateways reconnect every half second
and take the session from each other forever: every unacked message is redelivered on every swap. So
each gateway holds a lease on its client id: a Redis key with its identity (``host:pid:token``) and a
TTL that it refreshes. A gateway that finds the lease held by another *live* process exits with an error
(code 3) before it connects to MQTT; the one already running keeps working.

When is a holder live? If it runs on this host and its pid no longer exists, it is dead and the lease is
taken at once (a gateway restarted after ``kill -9`` does not wait). Otherwise the newcomer watches the
key for a refresh: a live holder refreshes every ``ttl_s / 5``, a dead one's key expires within
``ttl_s``. If Redis is unreachable the gateway runs without a lease (forwarding matters more) and keeps
trying to take it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from iotp.processes import pid_alive

log = logging.getLogger("iotp.gateway")

DEFAULT_TTL_S = 10.0

# KEYS[1] = lease key; ARGV = holder, expected current holder, ttl ms. Set only if the current value is the
# expected one ("" = absent), so two newcomers cannot both take a dead holder's lease.
_TAKE = """
local current = redis.call('GET', KEYS[1]) or ''
if current == ARGV[2] or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
  return 1
end
return 0
"""
# Refresh only our own lease; 0 = it is someone else's now (or gone).
_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class LeaseHeld(Exception):
    """Another live gateway holds the client id."""

    def __init__(self, holder: str) -> None:
        super().__init__(holder)
        self.holder = holder


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


class ClientIdLease:
    def __init__(self, client: aioredis.Redis, key: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        self.redis = client
        self.key = key
        self.ttl_ms = int(ttl_s * 1000)
        self.host = socket.gethostname()
        self.holder = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.held = False

    def _dead_here(self, holder: str) -> bool:
        """The holder ran on this host and its process is gone."""
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        return host == self.host and pid.isdigit() and not pid_alive(int(pid))

    async def _take(self, expected: str) -> bool:
        taken = await self.redis.eval(_TAKE, 1, self.key, self.holder, expected, self.ttl_ms)
        self.held = bool(taken)
        return self.held

    async def acquire(self) -> None:
        """Take the lease, or raise :class:`LeaseHeld` once the current holder proved to be alive (it
        refreshed the key while we watched). Raises RedisError if Redis is unreachable."""
        deadline = time.monotonic() + self.ttl_ms / 1000 + 1
        watched: str | None = None
        last_ttl = None
        while True:
            current = _text(await self.redis.get(self.key))
            if not current or current == self.holder:
                if await self._take(current):
                    return
                continue
            if self._dead_here(current):
                if await self._take(current):
                    log.info("took the client id lease of %s (that process is gone)", current)
                    return
                continue
            ttl = await self.redis.pttl(self.key)
            if current == watched and last_ttl is not None and ttl > last_ttl:
                raise LeaseHeld(current)  # refreshed while we watched: alive
            if time.monotonic() > deadline:
                raise LeaseHeld(current)
            watched, last_ttl = current, ttl
            await asyncio.sleep(min(0.25, self.ttl_ms / 20000))

    async def refresh(self) -> bool:
        """Extend our lease (or take it if we run without one and it is free). False: another process
        holds it now."""
        if not self.held:
            current = _text(await self.redis.get(self.key))
            if current and current != self.holder and not self._dead_here(current):
                return False
            return await self._take(current)
        self.held = bool(await self.redis.eval(_REFRESH, 1, self.key, self.holder, self.ttl_ms))
        return self.held

    async def keep(self, on_lost: asyncio.Event) -> None:
        """Refresh every ttl/5 until cancelled; sets ``on_lost`` if another process holds the lease."""
        while True:
            await asyncio.sleep(self.ttl_ms / 5000)
            try:
                if not await self.refresh():
                    on_lost.set()
                    return
            except (RedisError, OSError) as exc:
                log.warning("client id lease refresh failed (%s); will retry", exc)

    async def release(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            await self.redis.eval(_RELEASE, 1, self.key, self.holder)
        self.held = False
