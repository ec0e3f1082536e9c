"""Live state read from Redis: devices, open alerts and acks, the fleet summary and pipeline counters.

The pipeline counters are cumulative (``HINCRBY`` by the gateway, stream jobs and sink); rates come from
the difference between two samples of the stats hash that this process keeps (:class:`StatsSampler`).
A background task (:func:`run_publisher`) samples once a second and pushes the pipeline health and the
fleet summary to the WebSocket clients that subscribed to them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import cast

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI

from dashboard_api.models import (
    Ack,
    AlertOut,
    DeviceState,
    FleetSummary,
    PipelineHealth,
    StageHealth,
    TypeSummary,
    WebSocketHealth,
    parse_device_hash,
)
from iotp import stats
from iotp.schema import now_ms
from iotp.settings import Settings
from iotp.topics import RedisNames

log = logging.getLogger("iotp.api.live")
STAGE_ORDER = ("gateway", "stream", "sink")
LATEST_VALUE_FIELDS = ("lag", "updated_ms")
CHUNK = 500


async def device_ids(redis: aioredis.Redis, names: RedisNames) -> list[str]:
    """Every device id of the fleet index, sorted by id (a stable order for pagination)."""
    ids = cast(list[bytes], await redis.zrange(names.fleet_index, 0, -1))  # the app's client returns bytes
    return sorted(i.decode() for i in ids)


@dataclass(frozen=True)
class LiveSource:
    """Where the live state is read: the Redis client, its key names, and when a device counts as offline.
    Routes get one from ``dashboard_api.deps.LiveDep``."""

    redis: aioredis.Redis
    names: RedisNames
    offline_after_ms: int

    @classmethod
    def of(cls, settings: Settings, redis: aioredis.Redis, names: RedisNames) -> LiveSource:
        return cls(redis, names, int(settings.api_offline_after_s * 1000))


async def load_devices(src: LiveSource, ids: list[str], alert_counts: Counter | None = None) -> list[DeviceState]:
    redis, names = src.redis, src.names
    now, offline_ms = now_ms(), src.offline_after_ms
    out: list[DeviceState] = []
    for i in range(0, len(ids), CHUNK):
        async with redis.pipeline(transaction=False) as pipe:
            for device_id in ids[i : i + CHUNK]:
                pipe.hgetall(names.device_key(device_id))
            hashes = await pipe.execute()
        for raw in hashes:
            if not raw:
                continue
            try:
                state = parse_device_hash(raw, now, offline_ms)
            except (KeyError, ValueError) as exc:
                log.warning("skipping malformed device hash (%s)", exc)
                continue
            if alert_counts is not None:
                state.open_alerts = max(state.open_alerts, alert_counts.get(state.device_id, 0))
            out.append(state)
    return out


async def load_acks(src: LiveSource, alert_ids: list[str]) -> dict[str, Ack]:
    if not alert_ids:
        return {}
    raw = await src.redis.hmget(src.names.alert_acks, alert_ids)
    return {aid: Ack.model_validate_json(v) for aid, v in zip(alert_ids, raw, strict=True) if v}


async def open_alerts(src: LiveSource) -> list[AlertOut]:
    """Open alerts from Redis (written by the stream jobs), with their acks, newest first."""
    raw = await src.redis.hgetall(src.names.open_alerts)
    alerts: list[AlertOut] = []
    for key, value in raw.items():
        try:
            alerts.append(AlertOut.model_validate_json(value))
        except ValueError:
            log.warning("skipping malformed open alert %r", key)
    acks = await load_acks(src, [a.alert_id for a in alerts])
    for alert in alerts:
        alert.ack = acks.get(alert.alert_id)
    alerts.sort(key=lambda a: a.last_seen, reverse=True)
    return alerts


async def open_alert_counts(src: LiveSource) -> Counter:
    return Counter(a.device_id for a in await open_alerts(src))


async def fleet_summary(src: LiveSource) -> FleetSummary:
    alerts = await open_alerts(src)
    counts = Counter(a.device_id for a in alerts)
    devices = await load_devices(src, await device_ids(src.redis, src.names), counts)
    by_type: dict[str, TypeSummary] = {}
    for d in devices:
        t = by_type.setdefault(d.device_type, TypeSummary())
        t.total += 1
        setattr(t, d.status, getattr(t, d.status) + 1)
        t.alerting += d.open_alerts > 0
    return FleetSummary(
        ts=now_ms(),
        total=len(devices),
        online=sum(d.status == "online" for d in devices),
        offline=sum(d.status == "offline" for d in devices),
        alerting=sum(d.open_alerts > 0 for d in devices),
        open_alerts=len(alerts),
        unacked_alerts=sum(a.ack is None for a in alerts),
        by_type=by_type,
    )


def _number(raw: bytes) -> float:
    try:
        return int(raw)
    except ValueError:
        try:
            return float(raw)
        except ValueError:
            return 0.0


class StatsSampler:
    """Keeps recent samples of the stats hash; rates are the difference between the newest sample and
    the oldest one within ``window_s`` (at least two reads)."""

    def __init__(self, redis: aioredis.Redis, names: RedisNames, window_s: float = 5.0) -> None:
        self.redis = redis
        self.names = names
        self.window_s = window_s
        self.samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=64)

    async def read(self) -> tuple[float, dict[str, float]]:
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.names.stats_key))
        return time.monotonic(), {k.decode(): _number(v) for k, v in raw.items()}

    async def sample(self) -> None:
        self.samples.append(await self.read())

    def health(self, ws: dict, current: tuple[float, dict[str, float]] | None = None) -> PipelineHealth:
        """Counters of ``current`` (a fresh read; default the newest sample), rates against the oldest
        kept sample that is 0.5..window_s older."""
        t1, cur = current or (self.samples[-1] if self.samples else (time.monotonic(), {}))
        base = None
        for t0, old in self.samples:
            if 0.5 < t1 - t0 <= self.window_s:
                base = (t0, old)
                break
        if base is None:  # no sample in the window: fall back to the newest older one
            older = [s for s in self.samples if s[0] < t1]
            base = older[-1] if older else None
        window = (t1 - base[0]) if base else 0.0
        stages: dict[str, StageHealth] = {}
        now = now_ms()
        for field, value in cur.items():
            stage, _, counter = field.partition(".")
            if not counter:
                continue
            sh = stages.setdefault(stage, StageHealth(stage=stage, counters={}, rates={}))
            if counter == "lag":
                sh.lag = value
            elif counter == "updated_ms":
                sh.updated_ms = int(value)
                sh.age_s = round(max(0.0, (now - value) / 1000), 3)
            else:
                sh.counters[counter] = value
                if base and window > 0:
                    delta = value - base[1].get(field, 0)
                    sh.rates[counter] = round(max(delta, 0) / window, 3)
                else:
                    sh.rates[counter] = 0.0
        for stage in STAGE_ORDER:  # always show the known stages, even before they report
            stages.setdefault(stage, StageHealth(stage=stage, counters={}, rates={}))
        ordered = sorted(
            stages.values(),
            key=lambda s: (STAGE_ORDER.index(s.stage) if s.stage in STAGE_ORDER else len(STAGE_ORDER), s.stage),
        )
        deadletter = {f: v for f, v in cur.items() if f == stats.GATEWAY_REJECTED or "deadletter" in f or "dlq" in f}
        deadletter.setdefault(stats.GATEWAY_REJECTED, 0)
        return PipelineHealth(
            ts=now, window_s=round(window, 3), stages=ordered, deadletter=deadletter, websocket=WebSocketHealth(**ws)
        )


async def run_publisher(app: FastAPI, interval_s: float = 1.0) -> None:
    """Sample the counters every second; push pipeline health and (every 2 s) the fleet summary."""
    hub, sampler = app.state.hub, app.state.sampler
    src = LiveSource.of(app.state.settings, app.state.redis, app.state.names)
    tick = 0
    while True:
        try:
            await sampler.sample()
            if hub.wants_local("pipeline"):
                hub.publish_local("pipeline", sampler.health(hub.stats()).model_dump(mode="json"))
            if tick % 2 == 0 and hub.wants_local("fleet"):
                hub.publish_local("fleet", (await fleet_summary(src)).model_dump(mode="json"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("publisher tick failed: %s", exc)
        tick += 1
        await asyncio.sleep(interval_s)


def ack_event(alert: AlertOut | dict, ack: Ack) -> bytes:
    """What an acknowledgement looks like on the alerts channel: the Alert plus ``event``/``ack``
    (extra fields; an :class:`iotp.schema.Alert` parser ignores them)."""
    data = alert.model_dump(mode="json") if isinstance(alert, AlertOut) else dict(alert)
    data["event"] = "ack"
    data["ack"] = ack.model_dump(mode="json")
    return orjson.dumps(data)
