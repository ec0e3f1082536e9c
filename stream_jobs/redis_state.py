"""Everything the stream job writes to Redis: per flush one transaction of live effects and, when the
flush carries one, a second with the snapshot.

* One hash per device (``<prefix>:device:<id>``) and a fleet index (sorted set device id -> last ts).
  A Lua script compares the reading's order ``(ts, key)`` with the stored one inside Redis, so an older or
  duplicate reading (redelivery, out-of-order replay, backfill) never overwrites a newer one, whatever the
  number of workers, and a rebooted device's new readings do. The device hash also gets ``status``
  (online/offline) and ``open_alerts`` (a count, set absolutely -- idempotent).
* Open alerts: hash ``RedisNames.open_alerts`` alert id -> Alert JSON (HSET on open, HDEL on resolve).
* Pub/sub: readings (the record as received: a device batch, or in partition mode a PartitionBatch of
  many), aggregates and alerts.
* The stream job's own snapshot: one hash per readings partition, ``__offset__`` and ``__mark__`` (the
  offset with the fingerprint of the record below it, :mod:`iotp.kafka_marks`) + device id -> state.

A snapshot's device states and offsets go in one MULTI/EXEC, so they never disagree with each other. The
live effects go in their own, at the same time as the flush's Kafka outputs; the snapshot follows once those
are acknowledged (at-least-once: it is what lets the records be acked).
"""

from __future__ import annotations

from typing import cast

import orjson
import redis.asyncio as aioredis
from redis.typing import EncodableT, FieldT

from iotp import stats
from iotp.schema import encode_aggregate_batch, key_of, order_of
from iotp.topics import RedisNames
from stream_jobs.engine import Effects, Engine

# KEYS: fleet zset, then one device hash per device. ARGV[1]: now_ms; ARGV[2]: a JSON array with one entry
# per device hash, [device_id, device_type, seq ('' = none), ts, rx, metrics, key] (numbers as decimal
# strings: keys reach 2^64 and Lua numbers are doubles). One call and one argument for many devices: a call
# per device, and seven arguments each, were the largest Redis cost of a flush (docs/stream-processing.md).
# Returns how many devices were updated.
# Order is (ts, key): time first, the key (seq, or the metrics hash of a seq-less device) breaks ties. So a
# rebooted device (seq back to 1, later ts) overwrites, and a duplicate or older reading never does. Numbers
# are compared as decimal strings (length, then text).
UPDATE_LATEST = """
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local items = cjson.decode(ARGV[2])
local updated = 0
for i = 2, #KEYS do
  local device_id, device_type, seq, ts, rx, metrics, key = unpack(items[i - 1])
  local newer = true
  local cur = redis.call('HMGET', KEYS[i], 'ts', 'k', 'seq')
  if cur[1] then
    local cur_key = cur[2] or cur[3] or ''
    if greater(cur[1], ts) or (cur[1] == ts and not greater(key, cur_key)) then
      newer = false
    end
  end
  if newer then
    local fields = {'device_id', device_id, 'device_type', device_type, 'ts', ts, 'k', key,
                    'rx', rx, 'last_seen', ARGV[1], 'status', 'online'}
    if seq == '' then
      redis.call('HDEL', KEYS[i], 'seq')
    else
      table.insert(fields, 'seq')
      table.insert(fields, seq)
    end
    for name, value in pairs(metrics) do
      table.insert(fields, 'm:' .. name)
      table.insert(fields, tostring(value))
    end
    redis.call('HSET', KEYS[i], unpack(fields))
    redis.call('ZADD', KEYS[1], ts, device_id)
    updated = updated + 1
  end
end
return updated
"""
LATEST_PER_CALL = 500  # devices per script call


def latest_call(names: RedisNames, batches: list[dict], now_ms: int) -> tuple[list[str], list]:
    """KEYS and ARGV of one :data:`UPDATE_LATEST` call: the newest reading of each device batch."""
    keys: list[str] = [names.fleet_index]
    items = []
    for batch in batches:
        readings = batch["readings"]
        newest = readings[-1] if len(readings) == 1 else max(readings, key=order_of)
        seq = newest.get("seq")
        device_id = batch["device_id"]
        keys.append(names.device_key(device_id))
        items.append(
            (
                device_id,
                batch["device_type"],
                "" if seq is None else str(seq),
                str(newest["ts"]),
                str(newest.get("rx", 0)),
                newest["metrics"],
                str(key_of(newest)),
            )
        )
    return keys, [now_ms, orjson.dumps(items)]


# KEYS: channel. ARGV: messages. Many PUBLISHes in one command: subscribers still get one message each, and
# the client packs and parses one command instead of one per message (the aggregates are ~0.35 per reading).
PUBLISH_MANY = """
for i = 1, #ARGV do
  redis.call('PUBLISH', KEYS[1], ARGV[i])
end
return #ARGV
"""
PUBLISH_PER_CALL = 1000  # devices per script call (Lua's unpack() and one call's latency stay small)


def snapshot_key(names: RedisNames, app_id: str, topic: str, partition: int) -> str:
    return f"{names.prefix}:stream:{app_id}:{topic}:{partition}"


class RedisWriter:
    def __init__(
        self, client: aioredis.Redis, names: RedisNames, app_id: str, topic: str, *, batch_aggregates: bool = False
    ) -> None:
        """``batch_aggregates`` (partition mode): the aggregates channel gets one
        :class:`iotp.schema.AggregateBatch` per :data:`PUBLISH_PER_CALL` aggregates, not one message each."""
        self.batch_aggregates = batch_aggregates
        self.redis = client
        self.names = names
        self.app_id = app_id
        self.topic = topic
        self._update = client.register_script(UPDATE_LATEST)
        self._publish_many = client.register_script(PUBLISH_MANY)

    def snapshot_key(self, partition: int) -> str:
        return snapshot_key(self.names, self.app_id, self.topic, partition)

    async def load(self, partition: int) -> dict[bytes, bytes]:
        return cast(dict[bytes, bytes], await self.redis.hgetall(self.snapshot_key(partition)))  # bytes client

    async def write(self, fx: Effects, now_ms: int, aggregates: list[bytes] | None = None) -> None:
        """A flush's live effects in one MULTI/EXEC (its snapshot goes separately, :meth:`write_snapshot`).
        ``aggregates``: ``fx.aggregates`` already encoded (the Kafka send encoded them), else encoded here."""
        names = self.names
        async with self.redis.pipeline(transaction=True) as pipe:
            batches = fx.batches
            for i in range(0, len(batches), LATEST_PER_CALL):
                keys, args = latest_call(names, batches[i : i + LATEST_PER_CALL], now_ms)
                await self._update(keys=keys, args=args, client=pipe)
            await self._publish(pipe, names.channel_readings, fx.published)
            if aggregates is None:
                aggregates = [orjson.dumps(agg) for agg in fx.aggregates]
            if self.batch_aggregates and len(aggregates) > 1:
                for i in range(0, len(aggregates), PUBLISH_PER_CALL):
                    pipe.publish(names.channel_aggregates, encode_aggregate_batch(aggregates[i : i + PUBLISH_PER_CALL]))
            else:
                await self._publish(pipe, names.channel_aggregates, aggregates)
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
            await pipe.execute()

    async def write_snapshot(self, snapshot: dict[int, dict]) -> None:
        """A snapshot (from :meth:`encode_snapshot`) in one MULTI/EXEC, after the flush's Kafka outputs are
        acknowledged."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for partition, mapping in snapshot.items():
                if mapping:
                    pipe.hset(self.snapshot_key(partition), mapping=mapping)
            await pipe.execute()

    def encode_snapshot(self, engine: Engine, dirty: dict[int, set[str]], partitions: set[int]) -> dict[int, dict]:
        """The snapshot fields of the ``dirty`` devices and of every partition in ``dirty`` or ``partitions``
        (``__offset__`` / ``__mark__``), encoded now from the engine's state: the caller may go on changing
        the state while the write is in flight. Partitions the engine no longer has are left out."""
        out: dict[int, dict] = {}
        for partition in set(dirty) | partitions:
            ps = engine.partitions.get(partition)
            if ps is None:
                continue
            devices = ps.devices
            mapping: dict[FieldT, EncodableT] = {
                d: orjson.dumps(devices[d].to_state()) for d in dirty.get(partition, ()) if d in devices
            }
            mapping.update(self._offset_fields(engine, partition))
            out[partition] = mapping
        return out

    async def _publish(self, pipe: aioredis.client.Pipeline, channel: str, messages: list[bytes]) -> None:
        if len(messages) <= 2:
            for message in messages:
                pipe.publish(channel, message)
            return
        for i in range(0, len(messages), PUBLISH_PER_CALL):
            await self._publish_many(keys=[channel], args=messages[i : i + PUBLISH_PER_CALL], client=pipe)

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
