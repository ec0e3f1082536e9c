"""Snapshots at most every ``stream_snapshot_interval_s``, acks held until a snapshot covers the records
(stream_jobs/flushing.py), with a real worker, the local broker and Redis:

* while records keep coming the latest state follows every flush, the snapshot only every interval, and
  Kafka's committed offset never passes the snapshot's offset (then catches up with it);
* a worker killed between two snapshots (the latest state ahead of the snapshot) replays its records onto
  the snapshot once: nothing lost, nothing applied twice;
* a worker stopped (SIGTERM) while it holds acks writes the snapshot, acks, and exits promptly (Faust waits
  without limit for the acks of every record it handed out).
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from aiokafka import TopicPartition

from iotp.kafka import make_consumer, partition_for
from iotp.topics import redis_names
from stream_jobs.redis_state import snapshot_key
from tests.stream_jobs.conftest import stream_test_settings
from tests.stream_jobs.support import Producer, TopicWatcher, device_hash, noise, now_ms, readings, redis_client
from tests.support.processes import ProcessGroup
from tests.support.waiting import until

pytestmark = pytest.mark.integration

INTERVAL_S = 3.0
STEP_MS = 50


@pytest.fixture
def interval_settings(stack_settings):
    return stream_test_settings(
        stack_settings, stream_windows_s=[10], stream_window_grace_s=300.0, stream_snapshot_interval_s=INTERVAL_S
    )


class Snapshots:
    """The worker's snapshot of one device's partition, and the group's committed offset there."""

    def __init__(self, settings, device: str) -> None:
        self.settings = settings
        self.device = device
        partition = partition_for(device.encode(), settings.kafka_partitions)
        self.key = snapshot_key(redis_names(settings), settings.stream_app_id, settings.topic_readings, partition)
        self.tp = TopicPartition(settings.topic_readings, partition)
        self.redis = redis_client(settings)
        # a consumer of the worker's group that never joins it: only asks for the committed offset
        self.consumer = make_consumer(settings, group_id=settings.stream_app_id)

    async def __aenter__(self) -> Snapshots:
        await self.consumer.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.consumer.stop()
        await self.redis.aclose()

    async def committed(self) -> int:
        return await self.consumer.committed(self.tp) or 0

    async def offset(self) -> int:
        return int(await self.redis.hget(self.key, "__offset__") or 0)

    async def newest_seq(self) -> int:
        """The device's newest seq in the snapshot (0: not in it yet)."""
        raw = await self.redis.hget(self.key, self.device)
        return orjson.loads(raw)["n"][1] if raw else 0

    async def latest_seq(self) -> int:
        return int((await device_hash(self.redis, self.settings, self.device)).get("seq") or 0)


async def test_snapshot_every_interval_latest_state_every_flush_commits_never_past_the_snapshot(
    interval_settings, tmp_path
) -> None:
    settings = interval_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    device = "snapint-1"
    t0 = now_ms()
    async with Producer(settings) as producer, Snapshots(settings, device) as snap:
        group.start("stream")
        try:
            await producer.send(device, readings([(1, t0, {"humidity": 45.0})]))
            await until(lambda: snap.offset(), timeout=90, message="worker up, first snapshot")
            offsets, behind, samples = set(), 0, 0
            seq, started = 1, time.monotonic()
            while time.monotonic() - started < 2 * INTERVAL_S:  # one record every 0.1 s for two intervals
                seq += 1
                await producer.send(device, readings([(seq, t0 + seq * 100, {"humidity": 45.0 + seq % 3})]))
                await asyncio.sleep(0.1)
                committed = await snap.committed()  # first: the snapshot's offset only grows
                offset, latest, snapped = await snap.offset(), await snap.latest_seq(), await snap.newest_seq()
                assert committed <= offset, f"committed offset {committed} passed the snapshot's {offset}"
                offsets.add(offset)
                samples += 1
                behind += latest > snapped
            # ~60 flushes, each with the latest state; at most 3 snapshots in 2 intervals (+ the first one)
            assert len(offsets) <= 4, sorted(offsets)
            assert behind >= samples // 2, (behind, samples)  # the latest state was mostly ahead of the snapshot

            async def caught_up():
                return await snap.latest_seq() == seq and await snap.newest_seq() == seq

            await until(caught_up, timeout=INTERVAL_S + 3, message="the last snapshot, by the tick")
            last = await snap.offset()
            await until(lambda: _equal(snap.committed(), last), timeout=15, message="the commit reaching it")
        finally:
            group.stop_all()


async def _equal(value, expected) -> bool:
    return await value == expected


async def test_kill_between_snapshots_replays_onto_the_snapshot_once(interval_settings, tmp_path) -> None:
    settings = interval_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    device = "snapint-2"
    names = redis_names(settings)
    base = (now_ms() - 100_000) // 10_000 * 10_000
    values = noise(150)
    rows = [(i + 1, base + 100 + i * STEP_MS, {"humidity": v}) for i, v in enumerate(values)]
    r = redis_client(settings)
    try:
        async with Producer(settings) as producer, TopicWatcher(settings) as watch, Snapshots(settings, device) as snap:
            worker = group.start("stream")
            await producer.send(device, readings(rows[:1]))
            await until(lambda: snap.newest_seq(), timeout=90, message="worker up, first snapshot")
            sent = 1
            while True:  # one record at a time until the latest state is ahead of the snapshot
                await producer.send(device, readings(rows[sent : sent + 1]))
                sent += 1

                async def applied(seq=sent):
                    return await snap.latest_seq() == seq

                await until(applied, timeout=10, message=f"reading {sent} in the latest state")
                if await snap.newest_seq() < sent or sent >= 100:
                    break
            worker.kill9()
            snapped = await snap.newest_seq()
            assert snapped < sent, "the latest state never got ahead of the snapshot"

            for i in range(sent, len(rows), 10):  # the rest while the worker is down
                await producer.send(device, readings(rows[i : i + 10]))
            group.start("stream")
            # a reading far beyond end + grace closes the 10 s window on event time
            await producer.send(device, readings([(len(rows) + 1, base + 10_000 + 300_001, {"humidity": 45.0})]))

            def window():
                return [a for a in watch.aggregates(device) if a["start"] == base and a["window_s"] == 10]

            [agg] = await until(window, timeout=120, message="the window spanning the crash")
            assert agg["count"] == len(rows) and agg["late"] == 0

            async def stats_written():  # counters go to Redis every 0.5 s
                stats = await r.hgetall(names.stats_key)
                return stats if int(stats.get("stream.readings", 0)) >= len(rows) - snapped + 1 else None

            stats = await until(stats_written, timeout=15, message="the restarted worker's counters")
            assert int(stats.get("stream.duplicates", 0)) == 0, stats  # replayed onto the snapshot, not onto itself
            assert len(window()) == 1
    finally:
        await r.aclose()
        group.stop_all()


@pytest.fixture
def held_settings(stack_settings):
    return stream_test_settings(stack_settings, stream_snapshot_interval_s=600.0)


async def test_sigterm_while_acks_are_held_snapshots_and_stops_promptly(held_settings, tmp_path) -> None:
    settings = held_settings
    group = ProcessGroup(settings, tmp_path / "logs")
    device = "snapint-3"
    t0 = now_ms()
    async with Producer(settings) as producer, Snapshots(settings, device) as snap:
        worker = group.start("stream")
        try:
            for seq in range(1, 6):
                await producer.send(device, readings([(seq, t0 + seq * 100, {"humidity": 45.0})]))

            async def applied():
                return await snap.latest_seq() == 5

            await until(applied, timeout=90, message="readings applied")
            assert await snap.newest_seq() < 5  # held: no snapshot for 600 s
            started = time.monotonic()
            code = worker.terminate(timeout=20)
            took = time.monotonic() - started
            assert took < 15, f"the worker took {took:.1f}s to stop (exit code {code})"
            assert await snap.newest_seq() == 5  # the snapshot written on the way out
            assert await snap.committed() == await snap.offset() > 0  # and the records acked and committed
        finally:
            group.stop_all()
