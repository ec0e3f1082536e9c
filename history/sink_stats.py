"""The sink's counters in the Redis stats hash (``sink.*`` in :mod:`iotp.stats`), about once a second.

Counters are HINCRBY'd by their growth since the last successful publish, so a failed publish (Redis down)
is made good by the next one; ``sink.lag`` and ``sink.updated_ms`` are set outright.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from iotp import stats
from iotp.schema import now_ms

log = logging.getLogger("iotp.sink")


class SinkStats:
    """``redis`` is an asyncio Redis client, ``key`` the stats hash."""

    def __init__(self, redis: Any, key: str, interval_s: float = 1.0) -> None:
        self.redis = redis
        self.key = key
        self.interval_s = interval_s
        self.lag = 0  # records behind the high watermark, as last computed (read by the /metrics collector)
        self._published = {stats.SINK_ROWS: 0, stats.SINK_READINGS: 0, stats.SINK_RESET_DISCARDED: 0}
        self._next = 0.0

    async def publish(self, consumer: Any, rows: int, readings: int, resets: int) -> None:
        """Publish the cumulative counts if the interval has passed; errors are logged, not raised."""
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval_s
        try:
            lag = 0
            for tp in consumer.assignment():
                high = consumer.highwater(tp)
                if high is not None:
                    lag += max(0, high - await consumer.position(tp))
            totals = {stats.SINK_ROWS: rows, stats.SINK_READINGS: readings, stats.SINK_RESET_DISCARDED: resets}
            deltas = {name: total - self._published[name] for name, total in totals.items()}
            pipe = self.redis.pipeline(transaction=False)
            for name, delta in deltas.items():
                if delta:
                    pipe.hincrby(self.key, name, delta)
            pipe.hset(self.key, mapping={stats.SINK_LAG: lag, stats.SINK_UPDATED_MS: now_ms()})
            self.lag = lag
            await pipe.execute()
            for name, delta in deltas.items():
                self._published[name] += delta
        except Exception as exc:
            log.debug("publishing sink stats failed: %s", exc)
