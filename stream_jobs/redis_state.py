"""Latest device state in Redis, updated atomically, idempotently and in order.

One hash per device (``<prefix>:device:<id>``) and a fleet index (sorted set device id -> last seen).
A Lua script compares the reading's sequence number with the stored one inside Redis, so an older or
duplicate reading (redelivery, out-of-order replay) never overwrites a newer one, whatever the number of
workers.
"""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis

from iotp.topics import RedisNames

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


class LatestState:
    def __init__(self, client: aioredis.Redis, names: RedisNames) -> None:
        self.redis = client
        self.names = names
        self._update = client.register_script(UPDATE_LATEST)

    async def apply_batch(self, batch: dict, now_ms: int, publish: bool = True) -> int:
        """Store the newest reading of a device batch and publish the batch; return 1 if state moved."""
        readings = batch["readings"]
        if not readings:
            return 0
        newest = max(readings, key=lambda r: r["seq"])
        device_id = batch["device_id"]
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._update(
                keys=[self.names.device_key(device_id), self.names.fleet_index],
                args=[device_id, batch["device_type"], newest["seq"], newest["ts"], newest["rx"],
                      orjson.dumps(newest["metrics"]), now_ms],
                client=pipe,
            )
            if publish:
                pipe.publish(self.names.channel_readings, orjson.dumps(batch))
            moved, *_ = await pipe.execute()
        return int(moved)
