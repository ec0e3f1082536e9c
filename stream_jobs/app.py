"""The Faust application: one agent over the readings topic plus a wall-clock timer. Run with
``iotp stream`` (several workers share the partitions).

Records on the readings topic are device batches (see ``iotp.schema``); the agent takes them in
batches (``stream.take_events``) and hands every reading to plain Python (:mod:`stream_jobs.engine`:
dedup, windows, detectors). Per flush it then

1. produces the closed windows and alert events to Kafka and waits for the broker's acks,
2. writes Redis in one MULTI/EXEC (latest state, pub/sub, open alerts, and the snapshot of the device
   states it changed together with the partition's next offset),
3. and only then lets Faust ack the records (``take_events`` acks after the loop body).

So Kafka's committed offset never passes the snapshot: after a crash or rebalance the new owner loads
the snapshot, skips the redelivered records below the snapshot's offset and continues -- window and
detector state survive, and every effect that may repeat is idempotent (deterministic alert ids,
seq-compared latest state, absolute HSETs). See docs/stream-processing.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import faust
import orjson
import redis.asyncio as aioredis
from faust.types import TP

from iotp.schema import now_ms
from iotp.settings import Settings, get_settings
from iotp.topics import redis_names
from stream_jobs.detectors import load_rules
from stream_jobs.engine import Effects, Engine
from stream_jobs.faust_consumer import use_fetch_max_wait
from stream_jobs.redis_state import RedisWriter

log = logging.getLogger("iotp.stream")

STAT_FIELDS = (
    "stream.records",
    "stream.readings",
    "stream.aggregates",
    "stream.alerts",
    "stream.late",
    "stream.dropped_late",
    "stream.duplicates",
    "stream.out_of_order",
    "stream.replay_skipped",
    "stream.invalid",
)


class StreamJob:
    """The state of one worker process: the engine, which partitions it owns, and its writers."""

    def __init__(self, settings: Settings, app: faust.App) -> None:
        self.settings = settings
        self.app = app
        overrides = {}
        if settings.stream_silence_min_s is not None:
            overrides["silence_min_s"] = settings.stream_silence_min_s
        self.engine = Engine(
            settings.stream_windows_s,
            settings.stream_window_grace_s,
            load_rules(settings.stream_rules_file, **overrides),
        )
        self.topic = settings.topic_readings
        # from_url connects lazily, on the worker's event loop.
        self.writer = RedisWriter(
            aioredis.from_url(settings.redis_url), redis_names(settings), settings.stream_app_id, self.topic
        )
        raw = dict(key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
        self.readings_topic = app.topic(self.topic, **raw)
        self.lock = asyncio.Lock()
        self.owned: set[int] = set()
        self.reported: Counter[str] = Counter()
        self.last_stats = 0.0

    # ---- rebalancing -------------------------------------------------------------------------------
    async def on_assigned(self, assigned: set[TP]) -> None:
        mine = {tp.partition for tp in assigned if tp.topic == self.topic}
        async with self.lock:
            for partition in set(self.engine.partitions) - mine:
                self.engine.drop_partition(partition)
            for partition in sorted(mine - set(self.engine.partitions)):
                ps = self.engine.load_partition(partition, await self.writer.load(partition))
                log.info(
                    "partition %d assigned: %d device states restored, next offset %d",
                    partition,
                    len(ps.devices),
                    ps.next_offset,
                )
            self.owned = mine

    async def on_revoked(self, revoked: set[TP]) -> None:
        gone = {tp.partition for tp in revoked if tp.topic == self.topic}
        async with self.lock:
            # Everything applied is already in the snapshot (written before the acks): just forget it.
            self.owned -= gone
            for partition in gone:
                self.engine.drop_partition(partition)

    # ---- processing --------------------------------------------------------------------------------
    async def process(self, events) -> None:
        async with self.lock:
            fx = Effects()
            now = now_ms()
            for event in events:
                msg = event.message
                if msg.partition not in self.owned:
                    continue  # revoked while buffered: the new owner replays it
                self.engine.apply(msg.partition, msg.offset, event.value, int(msg.timestamp * 1000), fx, now)
            await self.flush(fx)

    async def tick(self) -> None:
        now = now_ms()
        async with self.lock:
            fx = Effects()
            self.engine.tick(now, self.caught_up(now), fx)
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

    def _highwater(self, partition: int) -> int | None:
        try:
            return self.app.consumer.highwater(TP(self.topic, partition))
        except Exception:  # not fetched yet / consumer restarting
            return None

    async def flush(self, fx: Effects) -> None:
        """Write the effects; retry until they are written. The engine state already includes them and
        the records are acked after this returns, so giving up would lose them: a Redis or Kafka outage
        stalls the worker instead (backpressure), and a repeated write is idempotent."""
        if not fx:
            return
        delay = 0.1
        while True:
            try:
                await self._write(fx)
                return
            except Exception as exc:
                log.warning("flush failed, retrying in %.1fs: %r", delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _write(self, fx: Effects) -> None:
        c = self.engine.counters
        producer = self.app.producer
        futures = []
        # The producer directly (not Topic.send): Faust's channel machinery per message is the costly part.
        for agg in fx.aggregates:
            futures.append(
                await producer.send(
                    self.settings.topic_aggregates, agg["device_id"].encode(), orjson.dumps(agg), None, None, None
                )
            )
        for alert in fx.alerts:
            futures.append(
                await producer.send(
                    self.settings.topic_alerts, alert["device_id"].encode(), orjson.dumps(alert), None, None, None
                )
            )
            log.info(
                "alert %s %s %s %s/%s value=%s",
                alert["state"],
                alert["alert_id"],
                alert["rule"],
                alert["device_id"],
                alert["metric"],
                alert["value"],
            )
        if futures:
            await asyncio.gather(*futures)  # at-least-once: the outputs are on the broker before the acks
        await self.writer.write(fx, self.engine, now_ms())
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
            await self.writer.write_stats(increments, lag, now)
        except Exception as exc:  # stats are best effort; retried with the next tick
            log.warning("could not write stream stats: %r", exc)
            return
        for name, value in increments.items():
            self.reported[name] += value


def create_app(settings: Settings) -> faust.App:
    use_fetch_max_wait(settings.kafka_fetch_max_wait_ms)
    datadir = (settings.state_dir / "faust" / settings.stream_app_id).resolve()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
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
        async for events in stream.take_events(settings.stream_take_max, within=settings.stream_take_within_s):
            await job.process(events)

    @app.timer(interval=settings.stream_tick_s)
    async def tick(*_args) -> None:  # Faust passes the app to timers that take arguments
        try:
            await job.tick()
        except Exception:  # Redis or Kafka hiccup: the state is unchanged in the snapshot; retry next tick
            log.exception("stream tick failed")

    return app


app = create_app(get_settings())
