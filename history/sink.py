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

This module is the consume -> buffer -> insert -> commit loop; the parts it uses: ``history.decode``
(record -> rows), ``history.columns`` (rows -> Arrow), ``history.blocks`` (buffers and insert blocks),
``history.inserts`` (deduplicated and bisecting inserts), ``history.plans`` (``sink_plans``) and
``history.sink_stats`` (the Redis stats hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from history.blocks import Block, Buffer, Record, Target, form_blocks
from history.columns import aggregates_arrow, alerts_arrow, readings_arrow
from history.decode import Rejected, decode_aggregate, decode_alert, decode_readings
from history.inserts import healthy, insert_block
from history.plans import Plan, current_incarnation, read_plans, write_plans
from history.sink_stats import SinkStats
from iotp.kafka import make_consumer, make_producer
from iotp.retry import Backoff, retry_forever
from iotp.settings import Settings
from iotp.topics import RedisNames

log = logging.getLogger("iotp.sink")

WRITE_BACKOFF = Backoff(0.5, 30.0)  # a ClickHouse call: its records stay uncommitted on Kafka until it succeeds


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.sink._drop(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
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
        self._stats = SinkStats(redis, RedisNames(settings.redis_prefix).stats_key) if redis is not None else None
        self._buffers: dict[TopicPartition, Buffer] = {}
        self._plans: dict[TopicPartition, Plan] = {}
        # Bumped whenever positions jump (a rebalance, or the rewind after a failed commit): the rest of a
        # fetched batch then belongs to positions that no longer hold and is left to be fetched again.
        self._epoch = 0
        self._oldest = 0.0
        self._stop: asyncio.Event | None = None
        self._consumer: AIOKafkaConsumer | None = None  # both set by run()
        self._producer: AIOKafkaProducer | None = None
        self.readings_written = 0  # readings (not rows) stored in the raw table: the load test's "stored" stage

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the sink is not running")
        return self._consumer

    @property
    def producer(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise RuntimeError("the sink is not running")
        return self._producer

    # --- ClickHouse calls: sync, run in a worker thread, retried ---

    async def _retrying(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` in a thread until it succeeds, backing off; raise CancelledError if stopping."""

        def on_retry(exc: BaseException, _delay: float) -> None:
            self.retries += 1
            if self._stop is not None and self._stop.is_set():
                raise asyncio.CancelledError(f"stopping with {what} unwritten") from exc

        async def pause(delay: float) -> None:  # cut short by stop(): one last attempt, then give up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay) if self._stop else await asyncio.sleep(delay)

        return await retry_forever(
            lambda: asyncio.to_thread(fn),
            what=f"{what} failed",
            retry_on=(ClickHouseError, OSError),
            backoff=WRITE_BACKOFF,
            log=log,
            on_retry=on_retry,
            sleep=pause,
        )

    # --- partition bookkeeping ---

    def _drop(self, tps: set[TopicPartition]) -> None:
        self._epoch += 1
        for tp in tps:
            self._buffers.pop(tp, None)
            self._plans.pop(tp, None)

    async def _load_plans(self, tps: set[TopicPartition]) -> None:
        self._epoch += 1
        readings = [tp for tp in tps if tp.topic == self.settings.topic_readings]
        if not readings:
            return
        db, group = self.database, self.settings.sink_group
        found = await self._retrying("reading sink plans", lambda: read_plans(self.client, db, group, readings))
        plans = await current_incarnation(self.settings, found)
        self.reset_discarded += len(found) - len(plans)
        for tp, plan in plans.items():
            committed = await self.consumer.committed(tp)
            start = plan.first if committed is None else committed
            if plan.first == start <= plan.last:
                log.info("replaying planned block %s[%d..%d] with its token", tp, plan.first, plan.last)
                self._plans[tp] = plan
                # Records fetched while the plans were being read (the fetcher does not wait for this
                # listener) would join the replayed block, and vanish with its token in ClickHouse: start the
                # partition again exactly at the block's first offset (also where nothing was committed yet).
                self._buffers.pop(tp, None)
                self.consumer.seek(tp, plan.first)
            else:
                self._plans.pop(tp, None)

    # --- the loop ---

    async def _add(self, message: ConsumerRecord) -> None:
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

    async def flush(self) -> None:
        """Write the buffered partitions, then commit them; on a lost generation, rewind to the committed
        offsets. A partition still short of its replayed block's end stays buffered."""
        tps = [tp for tp, b in self._buffers.items() if self._ready(tp, b)]
        if not tps:
            return
        blocks = form_blocks(tps, self._buffers, self.targets, self._plans)
        new_plans = [b.plan for b in blocks if b.plan is not None]
        # Every await below gives a rebalance the chance to run its listener, which drops or reloads these
        # partitions' buffers and moves their positions (``_epoch``): the rest of this flush then belongs to
        # positions that no longer hold. Stop there; nothing is committed, Kafka returns the records from the
        # new positions, and what was already written carries its plan's token (dropped when replayed).
        epoch = self._epoch
        if new_plans:
            db, group = self.database, self.settings.sink_group
            await self._retrying("writing sink plans", lambda: write_plans(self.client, db, group, new_plans))
            if self._moved_since(epoch, "while the plans were written"):
                return
        dead = [(r, r.reason) for tp in tps for r in self._buffers[tp].records if r.reason is not None]
        for block in blocks:
            if not block.records:
                continue
            if self._moved_since(epoch, "during an insert"):
                return
            attempts = 0

            def write(block: Block = block) -> list[tuple[Record, str]]:
                nonlocal attempts
                attempts += 1
                allow = attempts >= 4 and healthy(self.client)
                return insert_block(self.client, block, allow_total_reject=allow)

            dead.extend(
                await self._retrying(f"insert of {len(block.records)} records into {block.target.table}", write)
            )
        if self._moved_since(epoch, "during the inserts"):
            return
        if dead:
            await self._dead_letter(dead)
            if self._moved_since(epoch, "while dead-lettering"):
                return
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
            await self.consumer.commit(offsets)
        except (CommitFailedError, KafkaError) as exc:
            # Written but not committed: the partitions are re-read from the committed offsets, and the plans
            # make the re-formed blocks carry the same tokens, so ClickHouse drops them.
            log.warning("commit failed after insert (%s); rewinding to the committed offsets", exc)
            self._plans.clear()
            self._buffers.clear()
            self._epoch += 1
            assigned = set(self.consumer.assignment())
            try:
                if assigned:
                    await self.consumer.seek_to_committed(*assigned)
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

    def _moved_since(self, epoch: int, when: str) -> bool:
        """Did a rebalance (or a rewind) move the positions since ``epoch``? Then the rest of the flush belongs
        to positions that no longer hold: it is abandoned, nothing committed."""
        if self._epoch == epoch:
            return False
        log.info("partitions moved %s: the rest of the flush abandoned, its records are read again", when)
        return True

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
                await self.producer.send(
                    self.settings.topic_sink_deadletter, record.value, key=record.key, headers=headers
                )
            )
        await asyncio.gather(*futures)
        self.dead_lettered += len(dead)
        log.warning("dead-lettered %d records (first reason: %s)", len(dead), dead[0][1])

    async def _publish_stats(self) -> None:
        if self._stats is not None:
            await self._stats.publish(self.consumer, self.rows_written, self.readings_written, self.reset_discarded)

    @property
    def lag(self) -> int:
        """Records behind the high watermark, as last published (read by the /metrics collector)."""
        return self._stats.lag if self._stats is not None else 0

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
                epoch = self._epoch
                for message in (m for messages in data.values() for m in messages):
                    if self._epoch != epoch:
                        # a flush inside _add rewound, or a rebalance moved the partitions: the rest of this
                        # batch is stale (adding it would put records out of order into the buffers and
                        # commit offsets backwards); Kafka returns it again from the new positions
                        break
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
