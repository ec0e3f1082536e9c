"""Everything the stream job writes to Redis, in one transaction per flush.

* One hash per device (``<prefix>:device:<id>``) and a fleet index (sorted set device id -> last ts).
  A Lua script compares the reading's sequence number with the stored one inside Redis, so an older or
  duplicate reading (redelivery, out-of-order replay) never overwrites a newer one, whatever the number
  of workers. The device hash also gets ``status`` (online/offline) and ``open_alerts`` (a count, set
  absolutely -- idempotent).
* Open alerts: hash ``RedisNames.open_alerts`` alert id -> Alert JSON (HSET on open, HDEL on resolve).
* Pub/sub: readings (the batch as received), aggregates and alerts.
* The stream job's own snapshot: one hash per readings partition, ``__offset__`` + device id -> state.

All of one flush goes in a MULTI/EXEC, so the snapshot and its offset never disagree with the effects
they describe.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from iotp.topics import RedisNames
from stream_jobs.engine import Effects, Engine

# KEYS: device hash, fleet zset. ARGV: device_id, device_type, seq, ts, rx, metrics-json, now_ms
UPDATE_LATEST = """
local cur = redis.call('HGET', KEYS[1], 'seq')
if cur and tonumber(cur) >= tonumber(ARGV[3]) then
  return 0
end
local metrics = cjson.decode(ARGV[6])
local fields = {'device_id', ARGV[1], 'device_type', ARGV[2], 'seq', ARGV[3], 'ts', ARGV[4],
                'rx', ARGV[5], 'last_seen', ARGV[7], 'status', 'online'}
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
        return await self.redis.hgetall(self.snapshot_key(partition))

    async def write(self, fx: Effects, engine: Engine, now_ms: int) -> None:
        names = self.names
        async with self.redis.pipeline(transaction=True) as pipe:
            for batch, raw in fx.batches:
                readings = batch["readings"]
                newest = max(readings, key=lambda r: r["seq"])
                device_id = batch["device_id"]
                await self._update(
                    keys=[names.device_key(device_id), names.fleet_index],
                    args=[
                        device_id,
                        batch["device_type"],
                        newest["seq"],
                        newest["ts"],
                        newest.get("rx", 0),
                        orjson.dumps(newest["metrics"]),
                        now_ms,
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
                mapping = {d: orjson.dumps(ps.devices[d].to_state()) for d in device_ids if d in ps.devices}
                mapping["__offset__"] = ps.next_offset
                pipe.hset(self.snapshot_key(partition), mapping=mapping)
            for partition, offset in fx.offsets.items():
                if partition not in fx.dirty:
                    pipe.hset(self.snapshot_key(partition), "__offset__", offset)
            await pipe.execute()

    async def write_stats(self, increments: dict[str, int], lag: int | None, now_ms: int) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for name, value in increments.items():
                if value:
                    pipe.hincrby(self.names.stats_key, name, value)
            if lag is not None:
                pipe.hset(self.names.stats_key, "stream.lag", lag)
            pipe.hset(self.names.stats_key, "stream.updated_ms", now_ms)
            await pipe.execute()
