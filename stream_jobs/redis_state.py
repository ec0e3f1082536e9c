"""Everything the stream job writes to Redis, in one transaction per flush.

* One hash per device (``<prefix>:device:<id>``) and a fleet index (sorted set device id -> last ts).
  A Lua script compares the reading's order ``(ts, key)`` with the stored one inside Redis, so an older or
  duplicate reading (redelivery, out-of-order replay, backfill) never overwrites a newer one, whatever the
  number of workers, and a rebooted device's new readings do. The device hash also gets ``status``
  (online/offline) and ``open_alerts`` (a count, set absolutely -- idempotent).
* Open alerts: hash ``RedisNames.open_alerts`` alert id -> Alert JSON (HSET on open, HDEL on resolve).
* Pub/sub: readings (the batch as received), aggregates and alerts.
* The stream job's own snapshot: one hash per readings partition, ``__offset__`` and ``__mark__`` (the
  offset with the fingerprint of the record below it, :mod:`iotp.kafka_marks`) + device id -> state.

All of one flush goes in a MULTI/EXEC, so the snapshot and its offset never disagree with the effects
they describe.
"""

from __future__ import annotations

from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from iotp import stats
from iotp.schema import key_of, order_of
from iotp.topics import RedisNames
from stream_jobs.engine import Effects, Engine

# KEYS: device hash, fleet zset. ARGV: device_id, device_type, seq ('' = none), ts, rx, metrics-json, now_ms, key.
# Order is (ts, key): time first, the key (seq, or the metrics hash of a seq-less device) breaks ties. So a
# rebooted device (seq back to 1, later ts) overwrites, and a duplicate or older reading never does. Numbers
# are compared as decimal strings (length, then text): keys reach 2^64 and Lua numbers are doubles.
UPDATE_LATEST = """
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local cur = redis.call('HMGET', KEYS[1], 'ts', 'k', 'seq')
if cur[1] then
  local cur_key = cur[2] or cur[3] or ''
  if greater(cur[1], ARGV[4]) or (cur[1] == ARGV[4] and not greater(ARGV[8], cur_key)) then
    return 0
  end
end
local metrics = cjson.decode(ARGV[6])
local fields = {'device_id', ARGV[1], 'device_type', ARGV[2], 'ts', ARGV[4], 'k', ARGV[8],
                'rx', ARGV[5], 'last_seen', ARGV[7], 'status', 'online'}
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], 'seq')
else
  table.insert(fields, 'seq')
  table.insert(fields, ARGV[3])
end
for name, value in pairs(metrics) do
  table.insert(fields, 'm:' .. name)
  table.insert(fields, tostring(value))
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
return 1
"""


def snapshot_key(names: RedisNames, app_id: str, topic: str, partition: int) -> str:
    return f"{names.prefix}:stream:{app_id}:{topic}:{partition}"


class RedisWriter:
    def __init__(self, client: aioredis.Redis, names: RedisNames, app_id: str, topic: str) -> None:
        self.redis = client
        self.names = names
        self.app_id = app_id
        self.topic = topic
        self._update = client.register_script(UPDATE_LATEST)

    def snapshot_key(self, partition: int) -> str:
        return snapshot_key(self.names, self.app_id, self.topic, partition)

    async def load(self, partition: int) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self.redis.hgetall(self.snapshot_key(partition)))  # bytes client

    async def write(self, fx: Effects, engine: Engine, now_ms: int) -> None:
        names = self.names
        async with self.redis.pipeline(transaction=True) as pipe:
            for batch, raw in fx.batches:
                readings = batch["readings"]
                newest = max(readings, key=order_of)
                seq = newest.get("seq")
                device_id = batch["device_id"]
                await self._update(
                    keys=[names.device_key(device_id), names.fleet_index],
                    args=[
                        device_id,
                        batch["device_type"],
                        "" if seq is None else seq,
                        newest["ts"],
                        newest.get("rx", 0),
                        orjson.dumps(newest["metrics"]),
                        now_ms,
                        key_of(newest),
                    ],
                    client=pipe,
                )
                pipe.publish(names.channel_readings, raw)
            for agg in fx.aggregates:
                pipe.publish(names.channel_aggregates, orjson.dumps(agg))
            for alert in fx.alerts:
                data = orjson.dumps(alert)
                if alert["state"] == "open":
                    pipe.hset(names.open_alerts, alert["alert_id"], data)
                else:
                    pipe.hdel(names.open_alerts, alert["alert_id"])
                    if alert["rule"] == "silence":
                        pipe.hset(names.device_key(alert["device_id"]), "status", "online")
                pipe.publish(names.channel_alerts, data)
            for device_id in fx.offline:
                pipe.hset(names.device_key(device_id), "status", "offline")
            for device_id, count in fx.alert_counts.items():
                pipe.hset(names.device_key(device_id), "open_alerts", count)
            for partition, device_ids in fx.dirty.items():
                ps = engine.partitions.get(partition)
                if ps is None:
                    continue
                mapping: dict[FieldT, EncodableT] = {
                    d: orjson.dumps(ps.devices[d].to_state()) for d in device_ids if d in ps.devices
                }
                mapping.update(self._offset_fields(engine, partition))
                pipe.hset(self.snapshot_key(partition), mapping=mapping)
            for partition in fx.offsets:
                fields = self._offset_fields(engine, partition)
                if partition not in fx.dirty and fields:
                    pipe.hset(self.snapshot_key(partition), mapping=fields)
            await pipe.execute()

    @staticmethod
    def _offset_fields(engine: Engine, partition: int) -> dict[FieldT, EncodableT]:
        """``__offset__`` and ``__mark__`` (offset + fingerprint of the record below it, which a new owner
        checks against Kafka before it skips anything; see :mod:`iotp.kafka_marks`)."""
        ps = engine.partitions.get(partition)
        if ps is None:
            return {}
        mark = ps.mark()
        return {"__offset__": ps.next_offset, "__mark__": mark.encode() if mark else ""}

    async def gateway_heartbeat(self) -> int | None:
        """When a gateway last reported (``gateway.updated_ms`` in the stats hash), or None if none ever did."""
        raw = await self.redis.hget(self.names.stats_key, stats.GATEWAY_UPDATED_MS)
        return int(raw) if raw else None

    async def write_stats(
        self, increments: dict[str, int], lag: int | None, now_ms: int, gauges: dict[str, int] | None = None
    ) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, value in increments.items():
                if value:
                    pipe.hincrby(self.names.stats_key, name, value)
            if lag is not None:
                pipe.hset(self.names.stats_key, stats.STREAM_LAG, lag)
            pipe.hset(self.names.stats_key, stats.STREAM_UPDATED_MS, now_ms)
            for name, value in (gauges or {}).items():
                pipe.hset(self.names.stats_key, name, value)
            await pipe.execute()
