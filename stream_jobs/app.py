"""The Faust application: one agent over the readings topic plus a wall-clock timer. Run with
``iotp stream`` (several workers share the partitions).

Records on the readings topic are device batches, or partition batches of many (see ``iotp.schema``); the
agent takes them in batches (``stream.take_events``, ``Settings.stream_take`` records) and hands every
reading to plain Python (:mod:`stream_jobs.engine`: dedup, windows, detectors). Per flush it then

1. produces the closed windows and alert events to Kafka and waits for the broker's acks, and at the same
   time writes the live effects to Redis in one MULTI/EXEC (latest state, pub/sub, open alerts),
2. then -- at most every ``stream_snapshot_interval_s`` -- writes in a second MULTI/EXEC the snapshot of the
   device states changed since the last one together with the partitions' next offsets,
3. and only then acks the records, and only those a written snapshot covers: Faust's own ack after the loop
   body is held back (one extra reference per message) until then.

The flush runs while the next batch is processed (:mod:`stream_jobs.flushing`: one flush in flight, written
in order, its snapshot encoded when it is submitted). So Kafka's committed offset never passes the snapshot:
after a crash or rebalance the new owner loads the snapshot, skips the redelivered records below the
snapshot's offset and applies the rest once -- window and detector state survive, and every effect that may
repeat is idempotent (deterministic alert ids, (ts, seq)-compared latest state, absolute HSETs). See
docs/stream-processing.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import TP

from iotp import stats
from iotp.kafka_marks import check_marks
from iotp.profile_store import ProfileWatcher, settings_fallback
from iotp.retry import Backoff, retry_forever
from iotp.schema import now_ms
from iotp.settings import Settings, get_settings
from iotp.topics import redis_names
from stream_jobs.detectors import load_rules
from stream_jobs.engine import Effects, Engine, PartitionState
from stream_jobs.faust_consumer import use_fetch_max_wait
from stream_jobs.flushing import Flusher, Snapshot
from stream_jobs.outputs import produce_keyed
from stream_jobs.redis_state import RedisWriter

log = logging.getLogger("iotp.stream")

YIELD_EVERY_S = 0.005  # while applying a batch, give the event loop to the flush in flight this often
FLUSH_BACKOFF = Backoff(0.1, 5.0)  # the effects of acked-after-flush records: never given up

STAT_FIELDS = stats.STREAM_COUNTERS  # stream_jobs.cli exports them to Prometheus


class StreamJob:
    """The state of one worker process: the engine, which partitions it owns, and its writers."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.settings = settings
        self.app = app
        overrides = {}
        if settings.stream_silence_min_s is not None:
            overrides["silence_min_s"] = settings.stream_silence_min_s
        file_profiles = settings_fallback(settings)
        self.engine = Engine(
            settings.stream_windows_s,
            settings.stream_window_grace_s,
            load_rules(settings.stream_rules_file, file_profiles, **overrides),
            idle_close_s=settings.stream_window_idle_close_s,
        )
        # Live device profiles (thresholds, expected intervals): swapped into the shared RuleSet on change.
        self.profiles = ProfileWatcher(
            aioredis.from_url(settings.redis_url),
            redis_names(settings),
            file_profiles,
            settings.profiles_poll_s,
            on_change=self.engine.rules.use_profiles,
        )
        self.next_profiles_check = 0.0
        self.topic = settings.topic_readings
        # from_url connects lazily, on the worker's event loop.
        self.writer = RedisWriter(
            aioredis.from_url(settings.redis_url),
            redis_names(settings),
            settings.stream_app_id,
            self.topic,
            batch_aggregates=settings.kafka_record_mode == "partition",
        )
        self.flusher = Flusher(
            self._write_flush,
            lambda dirty, partitions: self.writer.encode_snapshot(self.engine, dirty, partitions),
            settings.stream_snapshot_interval_s,
            pipelined=settings.stream_pipeline_flushes,
            partition_of=(lambda event: event.message.partition) if settings.stream_snapshot_stagger else None,
        )
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.readings_topic = app.topic(self.topic, **raw)
        self.lock = asyncio.Lock()
        self.owned: set[int] = set()
        self.reported: Counter[str] = Counter()
        self.last_stats = 0.0
        # Offsets as identity (see check_offsets): partitions whose position may be below the snapshot's
        # offset (the replay after a load), partitions whose first record after a load must not jump past it,
        # partitions being rewound to the snapshot's offset (until when, monotonic), and the next check time.
        self.expect_replay: set[int] = set()
        self.first_after_load: set[int] = set()
        self.rewinding: dict[int, tuple[int, float]] = {}
        self.next_offset_check: dict[int, float] = {}
        self.upstream_alive = True

    # ---- rebalancing -------------------------------------------------------------------------------
    async def on_assigned(self, assigned: set[TP]) -> None:
        await self.refresh_profiles()
        mine = {tp.partition for tp in assigned if tp.topic == self.topic}
        async with self.lock:
            for partition in set(self.engine.partitions) - mine:
                self.engine.drop_partition(partition)
                self.flusher.forget([partition])
                self._drop_held({partition})
            loaded: dict[int, PartitionState] = {}
            for partition in sorted(mine - set(self.engine.partitions)):
                ps = loaded[partition] = self.engine.load_partition(partition, await self.writer.load(partition))
                log.info(
                    "partition %d assigned: %d device states restored, next offset %d",
                    partition,
                    len(ps.devices),
                    ps.next_offset,
                )
            fx = Effects()
            reset = await self.validate_offsets(loaded, fx, "snapshot")
            for partition in reset:
                # As in check_offsets: read the new log from its start. Faust drops records below its read
                # offset, which may still be the old log's, and the flow resumed before this check, so records
                # of the new log may already have been fetched and dropped: Kafka's position is past them.
                log.info("partition %d: reading the new log from its start", partition)
                await self.app.consumer.seek(TP(self.topic, partition), 0)
            for partition in loaded:
                self.rewinding.pop(partition, None)
                if partition not in reset and loaded[partition].next_offset > 0:
                    self.expect_replay.add(partition)
                    self.first_after_load.add(partition)
            self.owned = mine
            await self.flush(fx, snapshot=True)

    async def validate_offsets(self, partitions: dict[int, PartitionState], fx: Effects, what: str) -> set[int]:
        """Check each partition's mark (offset + fingerprint of the record below it) against Kafka; forget
        the offsets that belong to another incarnation of the topic (wiped broker, topic recreated, log
        truncated), loudly. Returns the partitions reset. Device states stay (they are about devices)."""
        marks = {TP(self.topic, p): ps.mark() for p, ps in partitions.items() if ps.mark() is not None}
        if not marks:
            return set()
        verdicts = await check_marks(self.settings, marks, timeout_s=5.0)
        unknown = {tp: marks[TP(tp.topic, tp.partition)] for tp, v in verdicts.items() if v.unknown}
        if unknown:  # the broker did not answer in time: ask once more before treating it as a reset
            verdicts.update(await check_marks(self.settings, unknown, timeout_s=5.0))
        reset = set()
        for key, verdict in verdicts.items():
            tp = TP(key.topic, key.partition)
            if verdict.valid:
                continue
            log.warning(
                "partition %d: discarding the %s offset %d: %s. Its records are read again from Kafka's "
                "position; readings already applied count as duplicates (stream.reset_discarded)",
                tp.partition,
                what,
                marks[tp].offset,
                verdict.reason,
            )
            self.engine.reset_offset(tp.partition, fx)
            self.expect_replay.discard(tp.partition)
            self.first_after_load.discard(tp.partition)
            reset.add(tp.partition)
        if reset:
            await self.flusher.wait()  # its acks are of the old log too: let them land before dropping the rest
            self._drop_held(reset)
        return reset

    def _drop_held(self, partitions: set[int]) -> None:
        """Held acks of ``partitions`` are never acked: acking a record of the old log would move Faust's
        committed offset of the partition past the new log's records, and Faust then ignores their acks
        (and waits for them forever at the next rebalance or stop)."""
        self._leave_unacked(self.flusher.drop_held(lambda event: event.message.partition in partitions))

    def _leave_unacked(self, events: list) -> None:
        """Take never-to-be-acked events off Faust's wait list, so a rebalance or stop does not wait for them."""
        unacked = self.app.consumer._unacked_messages  # Faust's wait list (no public way to leave it)
        for event in events:
            unacked.discard(event.message)

    async def check_offsets(self) -> None:
        """In a running worker: a consumer position below the applied offset (outside the replay after a
        load), or a high watermark below it, means the broker's log was reset under us (a wiped broker
        restarted, the topic recreated). If the mark does not match Kafka any more, forget the offset and
        read the partition from its start: Faust itself drops records below its read offset, so the new
        records would otherwise never reach the engine."""
        suspects: dict[int, PartitionState] = {}
        now = time.monotonic()
        for partition in self.owned:
            ps = self.engine.partitions.get(partition)
            if ps is None or ps.next_offset <= 0 or self.next_offset_check.get(partition, 0.0) > now:
                continue
            hw = self._highwater(partition)
            try:
                pos = await asyncio.wait_for(self.app.consumer.position(TP(self.topic, partition)), 1.0)
            except Exception:
                pos = None
            if pos is not None and pos >= ps.next_offset:
                self.expect_replay.discard(partition)
            behind = pos is not None and pos < ps.next_offset and partition not in self.expect_replay
            if behind or (hw is not None and hw < ps.next_offset):
                suspects[partition] = ps
                self.next_offset_check[partition] = now + 2.0
        if not suspects:
            return
        fx = Effects()
        for partition in await self.validate_offsets(suspects, fx, "applied"):
            await self.app.consumer.seek(TP(self.topic, partition), 0)
        await self.flush(fx, snapshot=True)

    def _rewind_filter(self, partition: int, offset: int) -> bool:
        """False for a record to leave out: after a load, the first record may lie beyond the snapshot's
        offset (Redis lost its last writes, e.g. a kill -9 within appendfsync's second, while Kafka's
        committed offset moved on); then the partition is rewound to the snapshot's offset, so the state is
        rebuilt from Kafka, and the records fetched before the rewind are left out until it lands."""
        ps = self.engine.partitions.get(partition)
        if partition in self.first_after_load:
            self.first_after_load.discard(partition)
            if ps is not None and 0 < ps.next_offset < offset:
                log.warning(
                    "partition %d: the snapshot (offset %d) is older than Kafka's committed offset (%d); "
                    "rewinding to rebuild the state from Kafka",
                    partition,
                    ps.next_offset,
                    offset,
                )
                self.engine.counters["stream.snapshot_behind"] += 1
                self.rewinding[partition] = (ps.next_offset, time.monotonic() + 30.0)
                return False
        target = self.rewinding.get(partition)
        if target is not None:
            if offset > target[0] and time.monotonic() < target[1]:
                return False
            del self.rewinding[partition]
        return True

    async def on_revoked(self, revoked: set[TP]) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == self.topic}
        async with self.lock:
            # Snapshot what is pending (Faust waited for the acks, which wait for a snapshot, so normally
            # nothing is) and wait for the flush in flight: no write for a revoked partition may land after
            # its new owner loaded the snapshot. Then just forget the partitions.
            await self.flush(Effects(), snapshot=True)
            await self.flusher.wait()
            self.owned -= gone
            for partition in gone:
                self.engine.drop_partition(partition)
            self.flusher.forget(gone)

    # ---- processing --------------------------------------------------------------------------------
    async def process(self, events) -> None:
        async with self.lock:
            fx = Effects()
            now = now_ms()
            rewind = set(self.rewinding)
            acks = []
            ran_since = time.perf_counter()
            for event in events:
                msg = event.message
                if msg.partition not in self.owned:
                    continue  # revoked while buffered: the new owner replays it
                if (self.first_after_load or self.rewinding) and not self._rewind_filter(msg.partition, msg.offset):
                    continue
                # round(): Faust gives the Kafka timestamp in float seconds; the mark needs the exact ms
                self.engine.apply(msg.partition, msg.offset, event.value, round(msg.timestamp * 1000), fx, now)
                # take_events acks every event after this returns: one more reference holds the ack back
                # until a snapshot covering the record is in Redis (the Flusher calls event.ack then)
                msg.incref()
                acks.append(event)
                if time.perf_counter() - ran_since >= YIELD_EVERY_S:
                    # let the flush in flight (its Kafka sender and Redis replies run on this loop) go on
                    # while this batch is applied: a partition record is ~1,000 readings, tens of ms
                    await asyncio.sleep(0)
                    ran_since = time.perf_counter()
            await self.flush(fx, acks)
            for partition in set(self.rewinding) - rewind:
                await self.app.consumer.seek(TP(self.topic, partition), self.rewinding[partition][0])

    async def release_held(self, give_up_s: float = 15.0, every_s: float = 0.1) -> None:
        """While Faust waits for every record it handed out to be acked (before a rebalance and before it
        stops; ``Consumer.wait_empty``, without a time limit): snapshot whatever is held, again and again,
        until cancelled. Faust stops the flow first, but a batch already taken may still be applied (and
        held) meanwhile, and on a stop the timer no longer runs. If the snapshot cannot be written within
        ``give_up_s`` (Redis or Kafka down), abandon the held records unacked (the next owner reads them
        again) and take them off Faust's wait list, so the rebalance or stop can go on."""
        deadline = time.monotonic() + give_up_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    async with self.lock:
                        await self.flush(Effects(), snapshot=True)
                        await self.flusher.wait()
            except TimeoutError:
                log.error("the snapshot was not written in %.0fs: its records stay unacked", give_up_s)
                self._leave_unacked(self.flusher.abandon())
                deadline = time.monotonic() + give_up_s
            await asyncio.sleep(every_s)

    async def refresh_profiles(self) -> None:
        self.next_profiles_check = time.monotonic() + self.settings.profiles_poll_s
        if await self.profiles.try_refresh():
            log.info("device profiles loaded (version %s)", self.profiles.version)

    async def tick(self) -> None:
        if time.monotonic() >= self.next_profiles_check:
            await self.refresh_profiles()
        now = now_ms()
        self.upstream_alive = await self._upstream_alive(now)
        async with self.lock:
            await self.check_offsets()
            fx = Effects()
            caught_up = self.caught_up(now)
            self.engine.tick(now, caught_up, fx, caught_up if self.upstream_alive else set())
            await self.flush(fx)
        if time.monotonic() - self.last_stats >= self.settings.stream_stats_interval_s:
            self.last_stats = time.monotonic()
            await self.write_stats(now)

    def caught_up(self, now: int) -> set[int]:
        """Partitions on which the wall clock may close windows and declare silence: nothing left to
        read below the Fetch high watermark, or the last record applied is recent."""
        grace_ms = self.settings.stream_window_grace_s * 1000
        out = set()
        for partition in self.owned:
            ps = self.engine.partitions.get(partition)
            if ps is None:
                continue
            hw = self._highwater(partition)
            if (hw is not None and ps.next_offset >= hw) or ps.last_record_ms >= now - grace_ms:
                out.add(partition)
        return out

    async def _upstream_alive(self, now: int) -> bool:
        """Is a gateway feeding the pipeline? (its heartbeat in the stats hash is recent). Without one,
        silent devices say nothing about the devices, so silence detection is held."""
        stale_ms = self.settings.stream_upstream_stale_s * 1000
        if not stale_ms:
            return True
        heartbeat = await self.writer.gateway_heartbeat()
        alive = heartbeat is None or now - heartbeat <= stale_ms
        if alive != self.upstream_alive:
            if alive:
                log.info("gateway heartbeat back: silence detection resumes")
            else:
                log.warning("no gateway heartbeat for %.0fs: silence detection held", (now - heartbeat) / 1000)
        return alive

    def _highwater(self, partition: int) -> int | None:
        try:
            return self.app.consumer.highwater(TP(self.topic, partition))
        except Exception:  # not fetched yet / consumer restarting
            return None

    async def flush(self, fx: Effects, acks: list | None = None, *, snapshot: bool = False) -> None:
        """Submit the effects (and the acks of the records they came from) to the flush pipeline; it writes
        a snapshot with them when one is due or ``snapshot`` forces it, and acks the records only after
        that. Returns once the flush is under way (see :mod:`stream_jobs.flushing`)."""
        await self.flusher.submit(fx, acks or (), snapshot=snapshot)

    async def _write_flush(self, fx: Effects, snapshot: Snapshot | None) -> None:
        """Write one flush; retry until it is written. The engine state already includes it and its
        records are acked after it, so giving up would lose them: a Redis or Kafka outage stalls the worker
        instead (backpressure), and a repeated write is idempotent."""
        await retry_forever(
            lambda: self._write(fx, snapshot),
            what="flush failed",
            retry_on=Exception,
            backoff=FLUSH_BACKOFF,
            log=log,
        )

    async def _write(self, fx: Effects, snapshot: Snapshot | None) -> None:
        c = self.engine.counters
        # aiokafka's producer directly, in record batches (stream_jobs/outputs.py): Faust's Topic.send and
        # even one producer.send per message were the costly part
        producer = self.app.producer._ensure_producer()
        s = self.settings
        aggregates = [(agg["device_id"].encode(), orjson.dumps(agg)) for agg in fx.aggregates]
        alerts = [(alert["device_id"].encode(), orjson.dumps(alert)) for alert in fx.alerts]
        for alert in fx.alerts:
            log.info(
                "alert %s %s %s %s/%s value=%s",
                alert["state"],
                alert["alert_id"],
                alert["rule"],
                alert["device_id"],
                alert["metric"],
                alert["value"],
            )
        kafka = asyncio.gather(
            produce_keyed(producer, s.topic_aggregates, aggregates), produce_keyed(producer, s.topic_alerts, alerts)
        )
        encoded = [value for _, value in aggregates]
        # The live effects (latest state, pub/sub, open alerts) move no snapshot and ack nothing: Kafka and
        # Redis at the same time, so the readings never wait for the broker's acks (nor for the bytes of a
        # snapshot in the same transaction).
        await asyncio.gather(kafka, self.writer.write(fx, now_ms(), encoded))
        if snapshot is not None:
            # at-least-once: the outputs of this flush and of every earlier one (written in order) are on the
            # broker before the snapshot that lets their records be acked
            await self.writer.write_snapshot(snapshot)
        c["stream.aggregates"] += len(fx.aggregates)
        c["stream.alerts"] += len(fx.alerts)

    async def write_stats(self, now: int) -> None:
        c = self.engine.counters
        increments = {name: c[name] - self.reported[name] for name in STAT_FIELDS}
        if increments["stream.dropped_late"]:
            log.warning(
                "%d readings dropped: their window had already closed (late beyond %.1fs grace)",
                increments["stream.dropped_late"],
                self.settings.stream_window_grace_s,
            )
        lag = 0
        for partition in self.owned:
            hw = self._highwater(partition)
            ps = self.engine.partitions.get(partition)
            if hw is None or ps is None:
                continue
            position = ps.next_offset
            if position < 0:
                try:
                    position = await self.app.consumer.position(TP(self.topic, partition)) or 0
                except Exception:
                    continue
            lag += max(0, hw - position)
        try:
            gauges = {"stream.silence_held": self.engine.held(), "stream.upstream_alive": int(self.upstream_alive)}
            await self.writer.write_stats(increments, lag, now, gauges)
        except Exception as exc:  # stats are best effort; retried with the next tick
            log.warning("could not write stream stats: %r", exc)
            return
        for name, value in increments.items():
            self.reported[name] += value


class StreamApp(faust.App):
    """The Faust app of the stream job: while Faust waits for the acks of every record it handed out (before
    a rebalance, before it stops), the job keeps writing snapshots, which release its held acks."""

    stream_job: StreamJob | None = None

    async def _consumer_wait_empty(self, consumer: Any, logger: Any) -> None:
        if self.stream_job is None:
            return await super()._consumer_wait_empty(consumer, logger)
        releasing = asyncio.ensure_future(self.stream_job.release_held())
        try:
            await super()._consumer_wait_empty(consumer, logger)
        finally:
            releasing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await releasing


def create_app(settings: Settings) -> faust.App:
    use_fetch_max_wait(settings.kafka_fetch_max_wait_ms)
    datadir = (settings.state_dir / "faust" / settings.stream_app_id).resolve()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = StreamApp(
        settings.stream_app_id,
        broker=[f"kafka://{hp}" for hp in settings.kafka_bootstrap.split(",")],
        store="memory://",
        datadir=str(datadir),
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.kafka_replication,
        # The local broker holds each JoinGroup for session_timeout/2 (see LOCAL_INFRA.md).
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # the outputs of a flush (~0.5 aggregates per reading) in few produce requests: with Faust's 16 kB
        # batches the sender's round trips, not the broker, set how long a flush took (as iotp.kafka does)
        producer_max_batch_size=512 * 1024,
        producer_max_request_size=4 * 1024 * 1024,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        broker_max_poll_records=settings.stream_max_poll_records,
        web_enabled=False,
    )
    # Debug records of the Kafka client cost real time per message even when no handler prints them.
    for name in ("aiokafka", "faust.transport", "faust.topics"):
        logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger(name).getEffectiveLevel()))
    job = StreamJob(settings, app)
    app.stream_job = job  # for introspection in tests and benchmarks

    @app.on_partitions_assigned.connect
    async def _assigned(sender, assigned, **kwargs) -> None:
        await job.on_assigned(assigned)

    @app.on_partitions_revoked.connect
    async def _revoked(sender, revoked, **kwargs) -> None:
        await job.on_revoked(revoked)

    @app.agent(job.readings_topic)
    async def process_readings(stream):
        async for events in stream.take_events(settings.stream_take, within=settings.stream_take_within_s):
            await job.process(events)

    @app.timer(interval=settings.stream_tick_s)
    async def tick(*_args) -> None:  # Faust passes the app to timers that take arguments
        try:
            await job.tick()
        except Exception:  # Redis or Kafka hiccup: the state is unchanged in the snapshot; retry next tick
            log.exception("stream tick failed")

    return app


app = create_app(get_settings())
