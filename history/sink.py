"""Kafka -> ClickHouse sink: readings, window aggregates and alerts in large columnar (Arrow) batches.

Batching: a flush happens when the buffered rows reach ``sink_batch_rows`` or the oldest buffered record is
``sink_batch_seconds`` old, whichever first. Offsets are committed only after every insert of the flush
succeeded (and rejected records reached the dead-letter topic).

Idempotence (see docs/history.md for the measurements behind the choice):

- Raw readings go into a plain MergeTree with ``non_replicated_deduplication_window``; every insert carries an
  ``insert_deduplication_token`` derived from the Kafka partition and the exact offset range (plus the first
  and last record timestamps, so a broker that restarted its offsets at 0 never collides with old tokens).
  ClickHouse skips a block whose token it has seen, in the raw table and (deduplicating the dependent views'
  blocks by the same token; the rollup tables keep a deduplication window too) in the 1 min / 1 h rollups.
- One insert per Kafka partition per flush, and *before* inserting, the sink writes the offset range of each
  partition's block into ``sink_plans``. A sink that restarts (or takes a partition over after a rebalance)
  reads the plan, re-forms exactly the same block from the committed offset up to the planned last offset,
  and sends it with the same token: if the earlier insert had landed, ClickHouse drops it. A plan also stores
  the fingerprint of its last record (``iotp.kafka_marks``); one that does not match Kafka any more (broker
  wiped, topic recreated: the offsets now hold other records) is discarded with a warning and counted
  (``sink.reset_discarded``) -- replaying its token would make ClickHouse drop the *new* records.
- Window aggregates and alerts go into ReplacingMergeTree tables keyed by the window / alert id, which a
  redelivered record simply replaces (no materialized views hang off them).

Failures: a transient error (ClickHouse down) keeps the batch, backs off (0.5 s doubling to 30 s) and retries;
meanwhile nothing is read or committed, so the backlog waits in Kafka. A record that cannot be decoded, or
whose rows ClickHouse rejects (found by bisecting the block), goes to ``topic_sink_deadletter`` with a
``reason`` header, and is committed with the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError, DatabaseError, OperationalError
from pydantic import ValidationError

from iotp.kafka import make_consumer, make_producer
from iotp.kafka_marks import Mark, check_marks, fingerprint
from iotp.schema import NO_SEQ, Alert, WindowAggregate, device_batches, reading_key
from iotp.settings import Settings
from iotp.topics import RedisNames

log = logging.getLogger("iotp.sink")

MS = pa.timestamp("ms", tz="UTC")
MAX_TS_MS = 10_000_000_000_000  # year 2286, inside DateTime64(3)'s range
READING_COLUMNS = ["device_id", "device_type", "metric", "ts", "value", "seq", "ingest_ts"]


class Rejected(Exception):
    """A record that cannot be stored; ``reason`` goes into the dead-letter header."""


@dataclass(slots=True)
class Record:
    """One Kafka record and the rows decoded from it."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    rows: list[tuple]
    reason: str | None = None  # why it goes to the dead-letter topic


# --- decoding: Kafka record -> rows (tuples in the column order of the target table) ---


def _int(value: Any, name: str, lo: int = 0, hi: int = 2**63) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value < hi:
        raise Rejected(f"{name} is not an integer in [{lo}, {hi}): {value!r}")
    return value


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise Rejected(f"{name} is not a non-empty string: {value!r}")
    return value


def decode_readings(raw: bytes | None) -> list[tuple]:
    """A :class:`iotp.schema.ReadingBatch`, or a partition-mode :class:`iotp.schema.PartitionBatch` of many,
    -> rows of ``readings`` (one per reading x metric). A record is stored or rejected as a whole.

    The ``seq`` column holds the reading's key (``iotp.schema.reading_key``): the seq, or for a device that
    sends none ``NO_SEQ | metrics hash`` (>= 2^63), so ``(device_id, ts, seq)`` is the identity in ClickHouse."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as exc:
        raise Rejected(f"not JSON: {exc}") from None
    rows: list[tuple] = []
    for batch in device_batches(value):
        _batch_rows(batch, rows)
    return rows


def _batch_rows(batch: Any, rows: list[tuple]) -> None:
    if not isinstance(batch, dict) or not isinstance(batch.get("readings"), list):
        raise Rejected("not a ReadingBatch: missing 'readings' list")
    device_id = _str(batch.get("device_id"), "device_id")
    device_type = _str(batch.get("device_type"), "device_type")
    for r in batch["readings"]:
        if not isinstance(r, dict) or not isinstance(r.get("metrics"), dict):
            raise Rejected("reading without a 'metrics' object")
        ts = _int(r.get("ts"), "ts", 0, MAX_TS_MS)
        rx = _int(r.get("rx", ts), "rx", 0, MAX_TS_MS)
        seq = r.get("seq")
        if seq is not None:
            key = _int(seq, "seq", 0, NO_SEQ)
        elif r.get("k") is not None:
            key = _int(r["k"], "k", NO_SEQ, 2**64)
        else:  # a producer that did not set the key of a seq-less reading: the same rule as the gateway
            key = reading_key(None, r["metrics"])
        for metric, value in r["metrics"].items():
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise Rejected(f"metric {metric!r} is not a finite number: {value!r}")
            rows.append((device_id, device_type, _str(metric, "metric"), ts, float(value), key, rx))


def readings_arrow(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in READING_COLUMNS]
    return pa.table(
        {
            "device_id": pa.array(cols[0], pa.string()),
            "device_type": pa.array(cols[1], pa.string()),
            "metric": pa.array(cols[2], pa.string()),
            "ts": pa.array(cols[3], MS),
            "value": pa.array(cols[4], pa.float64()),
            "seq": pa.array(cols[5], pa.uint64()),
            "ingest_ts": pa.array(cols[6], MS),
        }
    )


AGGREGATE_FIELDS = [
    "device_id",
    "device_type",
    "metric",
    "window_s",
    "start",
    "end",
    "count",
    "min",
    "max",
    "mean",
    "std",
    "late",
]


def decode_aggregate(raw: bytes | None) -> list[tuple]:
    try:
        a = WindowAggregate.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise Rejected(f"not a WindowAggregate: {exc.errors()[0].get('msg')} at {exc.errors()[0].get('loc')}") from None
    for name in ("start", "end"):
        _int(getattr(a, name), name, 0, MAX_TS_MS)
    for name in ("min", "max", "mean", "std"):
        if not math.isfinite(getattr(a, name)):
            raise Rejected(f"{name} is not finite")
    return [tuple(getattr(a, f) for f in AGGREGATE_FIELDS)]


def aggregates_arrow(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in AGGREGATE_FIELDS]
    types = [
        pa.string(),
        pa.string(),
        pa.string(),
        pa.uint32(),
        MS,
        MS,
        pa.uint64(),
        pa.float64(),
        pa.float64(),
        pa.float64(),
        pa.float64(),
        pa.uint32(),
    ]
    return pa.table({name: pa.array(col, t) for name, col, t in zip(AGGREGATE_FIELDS, cols, types, strict=True)})


ALERT_FIELDS = [
    "alert_id",
    "device_id",
    "device_type",
    "metric",
    "rule",
    "severity",
    "state",
    "value",
    "expected_min",
    "expected_max",
    "first_seen",
    "last_seen",
    "resolved_at",
    "message",
]


def decode_alert(raw: bytes | None) -> list[tuple]:
    try:
        a = Alert.model_validate_json(raw or b"")
    except ValidationError as exc:
        raise Rejected(f"not an Alert: {exc.errors()[0].get('msg')} at {exc.errors()[0].get('loc')}") from None
    for name in ("first_seen", "last_seen", "resolved_at"):
        if getattr(a, name) is not None:
            _int(getattr(a, name), name, 0, 2**47)
    for name in ("value", "expected_min", "expected_max"):
        v = getattr(a, name)
        if v is not None and not math.isfinite(v):
            raise Rejected(f"{name} is not finite")
    return [tuple(getattr(a, f) for f in ALERT_FIELDS)]


def alerts_arrow(rows: list[tuple]) -> pa.Table:
    cols = list(zip(*rows, strict=True)) if rows else [[] for _ in ALERT_FIELDS]
    types = [pa.string()] * 7 + [pa.float64()] * 3 + [MS] * 3 + [pa.string()]
    return pa.table({name: pa.array(col, t) for name, col, t in zip(ALERT_FIELDS, cols, types, strict=True)})


@dataclass(frozen=True, slots=True)
class Target:
    table: str
    decode: Callable[[bytes | None], list[tuple]]
    to_arrow: Callable[[list[tuple]], pa.Table]
    per_partition: bool  # one insert per Kafka partition with a planned, deterministic dedup token


@dataclass
class Buffer:
    """Records of one Kafka partition not yet written."""

    records: list[Record] = field(default_factory=list)
    rows: int = 0

    @property
    def first(self) -> int:
        return self.records[0].offset

    @property
    def last(self) -> int:
        return self.records[-1].offset


@dataclass(frozen=True, slots=True)
class Plan:
    first: int
    last: int
    token: str
    fp: str = ""  # fingerprint of the record at ``last``: which incarnation of the topic the plan is about


@dataclass
class Block:
    """One insert: records of one or more partitions into one table."""

    target: Target
    records: list[Record]
    token: str | None
    plan: tuple[TopicPartition, Plan] | None = None


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked) -> None:
        self.sink._drop(set(revoked))

    async def on_partitions_assigned(self, assigned) -> None:
        await self.sink._load_plans(set(assigned))


class ClickHouseSink:
    """``await ClickHouseSink(settings, client).run(stop_event)``; pass ``redis`` (an asyncio Redis client)
    to publish ``sink.*`` counters into the stats hash."""

    def __init__(self, settings: Settings, client: Client, redis: Any | None = None) -> None:
        self.settings = settings
        self.client = client
        self.redis = redis
        db = settings.clickhouse_database
        self.database = db
        self.table = f"{db}.readings"
        self.targets = {
            settings.topic_readings: Target(f"{db}.readings", decode_readings, readings_arrow, True),
            settings.topic_aggregates: Target(f"{db}.window_aggregates", decode_aggregate, aggregates_arrow, False),
            settings.topic_alerts: Target(f"{db}.alerts", decode_alert, alerts_arrow, False),
        }
        self.rows_written = 0
        self.batches_written = 0
        self.dead_lettered = 0
        self.retries = 0
        self.reset_discarded = 0  # plans of another topic incarnation thrown away
        self._published_resets = 0
        self.lag = 0  # records behind the high watermark, as last published (read by the /metrics collector)
        self._buffers: dict[TopicPartition, Buffer] = {}
        self._plans: dict[TopicPartition, Plan] = {}
        self._oldest = 0.0
        self._stop: asyncio.Event | None = None
        self._consumer = None
        self._producer = None
        self._published_rows = 0
        self.readings_written = 0  # readings (not rows) stored in the raw table: the load test's "stored" stage
        self._published_readings = 0
        self._next_stats = 0.0

    # --- ClickHouse calls (sync, run in a thread) ---

    def _insert(self, table: str, data: pa.Table, token: str | None) -> None:
        settings = (
            {
                "insert_deduplicate": 1,
                "insert_deduplication_token": token,
                "deduplicate_blocks_in_dependent_materialized_views": 1,
            }
            if token
            else None
        )
        self.client.insert_arrow(table, data, settings=settings)

    def _insert_block(self, block: Block, allow_total_reject: bool) -> list[tuple[Record, str]]:
        """Insert a block, bisecting it on a data error; return the records ClickHouse rejected.

        If every part of the block fails the error is taken for an outage and raised (so the caller backs
        off and retries), unless ``allow_total_reject`` (the same block failed repeatedly while ClickHouse
        answers other statements)."""
        rejected: list[tuple[Record, str]] = []

        def attempt(records: list[Record], token: str | None) -> bool:
            try:
                rows = [row for r in records for row in r.rows]
                if rows:
                    self._insert(block.target.table, block.target.to_arrow(rows), token)
                return True
            except DatabaseError as exc:
                if isinstance(exc, OperationalError):
                    raise
                if len(records) == 1:
                    rejected.append((records[0], f"rejected by ClickHouse: {str(exc)[:400]}"))
                    return False
                mid = len(records) // 2
                ok_left = attempt(records[:mid], f"{token}/0" if token else None)
                ok_right = attempt(records[mid:], f"{token}/1" if token else None)
                return ok_left or ok_right

        try:
            self._insert(
                block.target.table, block.target.to_arrow([row for r in block.records for row in r.rows]), block.token
            )
            return []
        except OperationalError:
            raise
        except DatabaseError as first_error:
            if len(block.records) > 1 and attempt(block.records, block.token):
                return rejected
            if allow_total_reject:
                return [(r, f"rejected by ClickHouse: {str(first_error)[:400]}") for r in block.records]
            raise

    def _write_plans(self, plans: list[tuple[TopicPartition, Plan]]) -> None:
        rows = [[self.settings.sink_group, tp.topic, tp.partition, p.first, p.last, p.token, p.fp] for tp, p in plans]
        self.client.insert(
            f"{self.database}.sink_plans",
            rows,
            column_names=["group_id", "topic", "partition", "first_offset", "last_offset", "token", "last_fp"],
        )

    def _read_plans(self, tps: list[TopicPartition]) -> dict[TopicPartition, Plan]:
        result = self.client.query(
            "SELECT topic, partition, argMax(first_offset, (created, last_offset)), "
            "argMax(last_offset, (created, last_offset)), argMax(token, (created, last_offset)), "
            "argMax(last_fp, (created, last_offset)) "
            f"FROM {self.database}.sink_plans WHERE group_id = {{g:String}} "
            "AND topic IN {topics:Array(String)} GROUP BY topic, partition",
            parameters={"g": self.settings.sink_group, "topics": sorted({tp.topic for tp in tps})},
        )
        wanted = set(tps)
        out = {}
        for topic, partition, first, last, token, fp in result.result_rows:
            tp = TopicPartition(topic, partition)
            if tp in wanted:
                out[tp] = Plan(first, last, token, fp)
        return out

    def _healthy(self) -> bool:
        try:
            self.client.command("SELECT 1")
            return True
        except Exception:
            return False

    async def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` in a thread until it succeeds, backing off; raise CancelledError if stopping."""
        delay = 0.5
        while True:
            try:
                return await asyncio.to_thread(fn)
            except (ClickHouseError, OSError) as exc:
                self.retries += 1
                log.warning("%s failed (%s); retrying in %.1fs", what, str(exc)[:300], delay)
                if self._stop is not None and self._stop.is_set():
                    raise asyncio.CancelledError(f"stopping with {what} unwritten") from exc
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay) if self._stop else await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    # --- partition bookkeeping ---

    def _drop(self, tps: set[TopicPartition]) -> None:
        for tp in tps:
            self._buffers.pop(tp, None)
            self._plans.pop(tp, None)

    async def _load_plans(self, tps: set[TopicPartition]) -> None:
        readings = [tp for tp in tps if tp.topic == self.settings.topic_readings]
        if not readings:
            return
        plans = await self._retrying("reading sink plans", lambda: self._read_plans(readings))
        plans = await self._current_incarnation(plans)
        for tp, plan in plans.items():
            committed = await self._consumer.committed(tp)
            start = plan.first if committed is None else committed
            if plan.first == start <= plan.last:
                log.info("replaying planned block %s[%d..%d] with its token", tp, plan.first, plan.last)
                self._plans[tp] = plan
            else:
                self._plans.pop(tp, None)

    async def _current_incarnation(self, plans: dict[TopicPartition, Plan]) -> dict[TopicPartition, Plan]:
        """The plans whose last record is still in Kafka with the same fingerprint. The others are about
        another incarnation of the topic (wiped broker, recreated topic): replaying their tokens would make
        ClickHouse drop new records as duplicates, so they are discarded, loudly."""
        if not plans:
            return plans
        marks = {tp: Mark(p.last + 1, p.fp) for tp, p in plans.items()}
        verdicts = await check_marks(self.settings, marks)
        for _ in range(2):  # the broker did not answer in time (busy, restarting): ask again before giving up
            unknown = {tp: marks[tp] for tp, v in verdicts.items() if v.unknown}
            if not unknown:
                break
            verdicts.update(await check_marks(self.settings, unknown))
        kept = {}
        for tp, plan in plans.items():
            verdict = verdicts[tp]
            if verdict.valid:
                kept[tp] = plan
                continue
            self.reset_discarded += 1
            log.warning(
                "discarding the sink plan %s[%d..%d] (token %s): %s; the partition is written with new tokens",
                tp,
                plan.first,
                plan.last,
                plan.token,
                verdict.reason,
            )
        return kept

    # --- the loop ---

    async def _add(self, message) -> None:
        tp = TopicPartition(message.topic, message.partition)
        plan = self._plans.get(tp)
        if plan is not None and message.offset > plan.last:
            # the replayed block ends before this record (the planned last offset is gone): close it here
            buffer = self._buffers.get(tp)
            if buffer is not None and buffer.records:
                self._plans[tp] = Plan(plan.first, buffer.last, plan.token)
                await self.flush()
            self._plans.pop(tp, None)
        target = self.targets[message.topic]
        try:
            rows, reason = target.decode(message.value), None
        except Rejected as exc:
            rows, reason = [], str(exc)
        record = Record(
            message.topic,
            message.partition,
            message.offset,
            message.timestamp,
            message.key,
            message.value,
            rows,
            reason,
        )
        if not any(b.records for b in self._buffers.values()):
            self._oldest = time.monotonic()
        buffer = self._buffers.setdefault(tp, Buffer())
        buffer.records.append(record)
        buffer.rows += len(rows)
        if plan is not None and message.offset == plan.last:
            await self.flush()

    def _total_rows(self) -> int:
        return sum(b.rows for b in self._buffers.values())

    def _ready(self, tp: TopicPartition, buffer: Buffer) -> bool:
        """A partition replaying a planned block is flushed only with the whole block (same token, same rows)."""
        plan = self._plans.get(tp)
        return bool(buffer.records) and (plan is None or buffer.last >= plan.last)

    def _blocks(self, tps: list[TopicPartition]) -> list[Block]:
        blocks: list[Block] = []
        shared: dict[str, list[Record]] = {}
        for tp in tps:
            buffer = self._buffers[tp]
            target = self.targets[tp.topic]
            good = [r for r in buffer.records if r.rows]
            if target.per_partition:
                plan = self._plans.get(tp)
                if plan is None:
                    first, last = buffer.records[0], buffer.records[-1]
                    token = f"{tp.topic}:{tp.partition}:{first.offset}-{last.offset}:{first.timestamp}-{last.timestamp}"
                    plan = Plan(first.offset, last.offset, token, fingerprint(last.timestamp, last.value))
                    blocks.append(Block(target, good, token, (tp, plan)))
                else:
                    blocks.append(Block(target, good, plan.token))
            else:
                shared.setdefault(tp.topic, []).extend(good)
        for topic, records in shared.items():
            if records:
                blocks.append(Block(self.targets[topic], records, None))
        return blocks

    async def flush(self) -> None:
        """Write the buffered partitions, then commit them; on a lost generation, rewind to the committed
        offsets. A partition still short of its replayed block's end stays buffered."""
        tps = [tp for tp, b in self._buffers.items() if self._ready(tp, b)]
        if not tps:
            return
        blocks = self._blocks(tps)
        new_plans = [b.plan for b in blocks if b.plan is not None]
        if new_plans:
            await self._retrying("writing sink plans", lambda: self._write_plans(new_plans))
        dead = [(r, r.reason) for tp in tps for r in self._buffers[tp].records if r.reason is not None]
        for block in blocks:
            if not block.records:
                continue
            attempts = 0

            def write(block=block) -> list[tuple[Record, str]]:
                nonlocal attempts
                attempts += 1
                allow = attempts >= 4 and self._healthy()
                return self._insert_block(block, allow_total_reject=allow)

            dead.extend(
                await self._retrying(f"insert of {len(block.records)} records into {block.target.table}", write)
            )
        if dead:
            await self._dead_letter(dead)
        offsets = {tp: self._buffers[tp].last + 1 for tp in tps}
        rows = sum(len(r.rows) for b in blocks for r in b.records) - sum(len(r.rows) for r, _ in dead)
        for tp in tps:
            del self._buffers[tp]
            plan = self._plans.get(tp)
            if plan is not None and offsets[tp] > plan.last:
                del self._plans[tp]
        self._oldest = time.monotonic()
        log.debug("flushed %d blocks (%d rows); committing %s", len(blocks), rows, offsets)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Written but not committed: the partitions are re-read from the committed offsets, and the plans
            # make the re-formed blocks carry the same tokens, so ClickHouse drops them.
            log.warning("commit failed after insert (%s); rewinding to the committed offsets", exc)
            self._plans.clear()
            self._buffers.clear()
            assigned = set(self._consumer.assignment())
            try:
                if assigned:
                    await self._consumer.seek_to_committed(*assigned)
                    await self._load_plans(assigned)
            except (KafkaError, AssertionError) as rewind_error:
                # a rebalance is under way: the new assignment resets positions and loads the plans
                log.warning("rewind after failed commit deferred to the rebalance (%s)", rewind_error)
            return
        self.rows_written += rows
        self.readings_written += sum(
            len({(row[0], row[3], row[5]) for row in r.rows})  # distinct identities (device, ts, key) of the record
            for b in blocks
            if b.target.per_partition
            for r in b.records
            if r.reason is None
        )
        self.batches_written += 1
        log.debug("committed")

    async def _dead_letter(self, dead: list[tuple[Record, str]]) -> None:
        futures = []
        for record, reason in dead:
            headers = [
                ("reason", reason.encode()[:1000]),
                ("source_topic", record.topic.encode()),
                ("source_partition", str(record.partition).encode()),
                ("source_offset", str(record.offset).encode()),
            ]
            futures.append(
                await self._producer.send(
                    self.settings.topic_sink_deadletter, record.value, key=record.key, headers=headers
                )
            )
        await asyncio.gather(*futures)
        self.dead_lettered += len(dead)
        log.warning("dead-lettered %d records (first reason: %s)", len(dead), dead[0][1])

    async def _publish_stats(self) -> None:
        now = time.monotonic()
        if self.redis is None or now < self._next_stats:
            return
        self._next_stats = now + 1.0
        try:
            lag = 0
            for tp in self._consumer.assignment():
                high = self._consumer.highwater(tp)
                if high is not None:
                    lag += max(0, high - await self._consumer.position(tp))
            key = RedisNames(self.settings.redis_prefix).stats_key
            delta = self.rows_written - self._published_rows
            readings = self.readings_written - self._published_readings
            resets = self.reset_discarded - self._published_resets
            pipe = self.redis.pipeline(transaction=False)
            if delta:
                pipe.hincrby(key, "sink.rows", delta)
            if readings:
                pipe.hincrby(key, "sink.readings", readings)
            if resets:
                pipe.hincrby(key, "sink.reset_discarded", resets)
            pipe.hset(key, mapping={"sink.lag": lag, "sink.updated_ms": int(time.time() * 1000)})
            self.lag = lag
            await pipe.execute()
            self._published_rows += delta
            self._published_readings += readings
            self._published_resets += resets
        except Exception as exc:
            log.debug("publishing sink stats failed: %s", exc)

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        consumer = make_consumer(self.settings, group_id=self.settings.sink_group)
        producer = make_producer(self.settings)
        self._consumer, self._producer = consumer, producer
        await producer.start()
        await consumer.start()
        consumer.subscribe(list(self.targets), listener=_Rebalance(self))
        log.info("sink started: %s -> %s", ", ".join(self.targets), self.database)
        try:
            while not stop.is_set():
                data = await consumer.getmany(timeout_ms=200, max_records=5000)
                for messages in data.values():
                    for message in messages:
                        await self._add(message)
                total = self._total_rows()
                pending = any(b.records for b in self._buffers.values())
                due = pending and time.monotonic() - self._oldest >= self.settings.sink_batch_seconds
                if total >= self.settings.sink_batch_rows or due:
                    await self.flush()
                await self._publish_stats()
            if any(b.records for b in self._buffers.values()):
                await self.flush()
        except asyncio.CancelledError:
            log.info("sink stopping with an unwritten batch; Kafka keeps it (offsets not committed)")
        finally:
            self._next_stats = 0.0
            await self._publish_stats()
            await consumer.stop()
            await producer.stop()
