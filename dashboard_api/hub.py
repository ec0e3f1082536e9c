"""Fan-out of Redis pub/sub messages to WebSocket clients.

One Redis subscription per API process; each client has a bounded queue, so a slow client drops its own
oldest messages (counted) and never blocks the others or the pipeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis

log = logging.getLogger("iotp.api.hub")


@dataclass(eq=False)
class Subscriber:
    channels: set[str]
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1000))
    dropped: int = 0

    def offer(self, message: bytes) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(message)


class Hub:
    def __init__(self, redis: aioredis.Redis, channels: dict[str, str]) -> None:
        """``channels`` maps a public name (readings, alerts, ...) to its Redis channel."""
        self.redis = redis
        self.channels = channels
        self.by_redis = {v: k for k, v in channels.items()}
        self.subscribers: set[Subscriber] = set()
        self.ready = asyncio.Event()

    def add(self, channels: set[str]) -> Subscriber:
        sub = Subscriber(channels)
        self.subscribers.add(sub)
        return sub

    def remove(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def run(self) -> None:
        while True:
            try:
                pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(*self.channels.values())
                self.ready.set()
                async for message in pubsub.listen():
                    name = self.by_redis.get(message["channel"].decode())
                    if name is None:
                        continue
                    data = message["data"]
                    frame = b'{"channel":"' + name.encode() + b'","data":' + data + b"}"
                    for sub in self.subscribers:
                        if name in sub.channels:
                            sub.offer(frame)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis restart: resubscribe
                self.ready.clear()
                log.warning("Redis pub/sub lost (%s); resubscribing", exc)
                await asyncio.sleep(1.0)
