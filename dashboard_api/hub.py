"""Fan-out of Redis pub/sub messages (and the API's own summaries) to WebSocket clients.

One Redis subscription per API process. The hub decodes each message once (to learn its device), builds
the frame ``{"channel": name, "data": ...}`` once, and offers it to every interested subscriber. Offering
never awaits, so neither a slow client nor many clients can hold up the hub, the other clients or Redis.

Each subscriber has a bounded queue with three regimes:

* while the client keeps up (fewer than ``coalesce_after`` frames pending) every frame is queued;
* once it falls behind, a frame whose key (channel + device, + metric/window for aggregates) is already
  pending replaces that pending frame in place: the client gets the latest value per device (counted as
  ``coalesced``);
* the queue never holds more than ``maxsize`` frames: when full, the oldest frame is dropped (``dropped``).

Alerts are never coalesced (each alert event is distinct) but are bounded like everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Hashable, Iterable

import orjson
import redis.asyncio as aioredis

from iotp.schema import channel_aggregates, device_batches, now_ms

log = logging.getLogger("iotp.api.hub")

#: Channels fed from Redis pub/sub.
REDIS_CHANNELS = ("readings", "aggregates", "alerts")
#: Channels produced by the API itself: fleet summary, pipeline health, heartbeats.
LOCAL_CHANNELS = ("fleet", "pipeline", "heartbeat")
ALL_CHANNELS = frozenset(REDIS_CHANNELS + LOCAL_CHANNELS)
DEVICE_SCOPED = frozenset({"readings", "aggregates", "alerts"})
_ids = itertools.count(1)


class Subscriber:
    """One WebSocket client's subscription and bounded, coalescing outbound queue."""

    def __init__(
        self,
        channels: Iterable[str],
        devices: Iterable[str] = (),
        maxsize: int = 1000,
        coalesce_after: int = 100,
        label: str = "",
    ) -> None:
        self.id = next(_ids)
        self.label = label
        self.channels: set[str] = set(channels)
        self.devices: set[str] = set(devices)  # empty: every device
        self.maxsize = maxsize
        self.coalesce_after = min(coalesce_after, maxsize)
        self._queue: deque[list] = deque()  # entries [key, frame]
        self._latest: dict[Hashable, list] = {}  # key -> newest pending entry of that key
        self._wakeup = asyncio.Event()
        self.connected_at = now_ms()
        self.offered = 0
        self.sent = 0
        self.dropped = 0
        self.coalesced = 0

    def wants(self, channel: str, device_id: str | None) -> bool:
        if channel not in self.channels:
            return False
        return not (self.devices and channel in DEVICE_SCOPED and device_id not in self.devices)

    def offer(self, key: Hashable | None, frame: bytes) -> None:
        """Queue a frame; never blocks. ``key`` None: never coalesced."""
        self.offered += 1
        if key is not None and len(self._queue) >= self.coalesce_after:
            entry = self._latest.get(key)
            if entry is not None:
                entry[1] = frame
                self.coalesced += 1
                return
        if len(self._queue) >= self.maxsize:
            self._forget(self._queue.popleft())
            self.dropped += 1
        entry = [key, frame]
        self._queue.append(entry)
        if key is not None:
            self._latest[key] = entry
        self._wakeup.set()

    def _forget(self, entry: list) -> None:
        key = entry[0]
        if key is not None and self._latest.get(key) is entry:
            del self._latest[key]

    def pending(self) -> int:
        return len(self._queue)

    async def get(self) -> bytes:
        while not self._queue:
            self._wakeup.clear()
            await self._wakeup.wait()
        entry = self._queue.popleft()
        self._forget(entry)
        return entry[1]

    def stats(self) -> dict:
        return {
            "id": self.id,
            "label": self.label,
            "channels": sorted(self.channels),
            "devices": sorted(self.devices),
            "pending": self.pending(),
            "offered": self.offered,
            "sent": self.sent,
            "dropped": self.dropped,
            "coalesced": self.coalesced,
            "connected_at": self.connected_at,
        }


def frame_bytes(channel: str, data: bytes) -> bytes:
    return b'{"channel":"' + channel.encode() + b'","data":' + data + b"}"


def message_key(channel: str, payload: dict) -> tuple[str | None, Hashable | None]:
    """(device id, coalescing key) of a decoded Redis message."""
    if not isinstance(payload, dict):
        return None, None
    device_id = payload.get("device_id")
    if channel == "readings":
        return device_id, ("readings", device_id)
    if channel == "aggregates":
        return device_id, ("aggregates", device_id, payload.get("metric"), payload.get("window_s"))
    return device_id, None  # alerts: every event counts


class Hub:
    def __init__(
        self, redis: aioredis.Redis, channels: dict[str, str], maxsize: int = 1000, coalesce_after: int = 100
    ) -> None:
        """``channels`` maps a public name (readings, alerts, ...) to its Redis channel."""
        self.redis = redis
        self.channels = channels
        self.by_redis = {v: k for k, v in channels.items()}
        self.maxsize = maxsize
        self.coalesce_after = coalesce_after
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()
        self.messages = 0
        self.bad_messages = 0
        # totals of clients that have gone, so the counters stay cumulative
        self.gone = {"sent": 0, "dropped": 0, "coalesced": 0}

    def add(self, channels: Iterable[str], devices: Iterable[str] = (), label: str = "") -> Subscriber:
        sub = Subscriber(channels, devices, self.maxsize, self.coalesce_after, label)
        self.subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        if sub in self.subscribers:
            self.subscribers.discard(sub)
            for name in self.gone:
                self.gone[name] += getattr(sub, name)

    def wants_local(self, channel: str) -> bool:
        """Whether any connected subscriber takes ``channel``."""
        return any(channel in sub.channels for sub in self.subscribers)

    def publish_local(self, channel: str, data: dict, key: Hashable | None = None) -> None:
        """Offer an API-made frame (fleet summary, pipeline health) to its subscribers."""
        subs = [s for s in self.subscribers if channel in s.channels]
        if not subs:
            return
        frame = frame_bytes(channel, orjson.dumps(data))
        for sub in subs:
            sub.offer(key if key is not None else (channel,), frame)

    def dispatch(self, channel: str, data: bytes) -> None:
        self.messages += 1
        if not self.wants_local(channel):
            return  # nobody watches this channel: not even parsed (at 10k readings/s that is ~5 % of a core)
        try:
            payload = orjson.loads(data)
        except orjson.JSONDecodeError:
            self.bad_messages += 1
            return
        if channel == "readings" and isinstance(payload, dict) and "batches" in payload:
            # partition mode (IOTP_KAFKA_RECORD_MODE=partition): one message carries many device batches;
            # subscribers keep getting one frame per device batch, encoded only when someone wants it
            for batch in device_batches(payload):
                if isinstance(batch, dict):
                    self._offer(channel, batch, None)
            return
        if channel == "aggregates" and isinstance(payload, dict) and "aggregates" in payload:
            # partition mode: one message per flush carries many aggregates; one frame per aggregate, as before
            for aggregate in channel_aggregates(payload):
                if isinstance(aggregate, dict):
                    self._offer(channel, aggregate, None)
            return
        self._offer(channel, payload, data)

    def _offer(self, channel: str, payload: dict, data: bytes | None) -> None:
        device_id, key = message_key(channel, payload)
        frame = None
        for sub in self.subscribers:
            if sub.wants(channel, device_id):
                if frame is None:
                    frame = frame_bytes(channel, orjson.dumps(payload) if data is None else data)
                sub.offer(key, frame)

    def stats(self) -> dict:
        subs = [s.stats() for s in self.subscribers]
        return {
            "clients": len(subs),
            "messages": self.messages,
            "sent": self.gone["sent"] + sum(s["sent"] for s in subs),
            "dropped": self.gone["dropped"] + sum(s["dropped"] for s in subs),
            "coalesced": self.gone["coalesced"] + sum(s["coalesced"] for s in subs),
            "per_client": sorted(subs, key=lambda s: s["id"]),
        }

    async def run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(*self.channels.values())
                self.ready.set()
                n = 0
                async for message in pubsub.listen():
                    name = self.by_redis.get(message["channel"].decode())
                    if name is not None:
                        self.dispatch(name, message["data"])
                    n += 1
                    if n % 64 == 0:
                        await asyncio.sleep(0)  # let the senders run during a burst
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restart: resubscribe
                self.ready.clear()
                log.warning("Redis pub/sub lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):  # the connection may be gone already
                    await pubsub.aclose()
