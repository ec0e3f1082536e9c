"""The order of one flush's writes (``StreamJob._write``), as pure logic with a fake producer and a fake
Redis writer: the live effects (latest state, pub/sub) go to Redis while the flush's Kafka outputs are still
unacknowledged, and a snapshot only once they are acknowledged (at-least-once: the snapshot lets the
records be acked). Before, a flush that carried a snapshot wrote nothing to Redis until Kafka acked, so its
readings waited for the broker -- and for the snapshot's bytes in the same transaction."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

from iotp.settings import Settings
from stream_jobs.app import StreamJob
from stream_jobs.engine import Effects
from tests.support.waiting import async_wait_for


class Batch:
    def append(self, key: bytes, value: bytes, timestamp: int | None) -> object:
        return object()  # metadata: it fitted


class HeldProducer:
    """aiokafka's producer as ``stream_jobs.outputs.produce_keyed`` uses it; the batches are acknowledged only
    when the test calls :meth:`release`."""

    def __init__(self) -> None:
        self.unacked: list[asyncio.Future] = []
        self.sent = 0

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}

    def create_batch(self) -> Batch:
        return Batch()

    async def send_batch(self, batch: Batch, topic: str, partition: int) -> asyncio.Future:
        self.sent += 1
        acked: asyncio.Future = asyncio.get_running_loop().create_future()
        self.unacked.append(acked)
        return acked

    def release(self) -> None:
        for future in self.unacked:
            future.set_result(None)


class RecordingWriter:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def write(self, fx: Effects, now_ms: int, aggregates: list | None = None) -> None:
        self.calls.append("live")

    async def write_snapshot(self, snapshot: dict) -> None:
        self.calls.append("snapshot")


def job(producer: HeldProducer, writer: RecordingWriter) -> SimpleNamespace:
    return SimpleNamespace(
        engine=SimpleNamespace(counters=Counter()),
        app=SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer)),
        settings=Settings(),
        writer=writer,
    )


async def live_written(writer: RecordingWriter) -> None:
    async def live() -> bool:
        return writer.calls == ["live"]

    await async_wait_for(live, timeout=5, interval=0.01, message="the live effects while Kafka is unacknowledged")


def effects() -> Effects:
    fx = Effects()
    fx.aggregates.append({"device_id": "d1", "metric": "t", "window_s": 10})  # type: ignore[typeddict-item]
    fx.batches.append({"device_id": "d1", "device_type": "climate", "readings": []})
    return fx


async def test_a_snapshot_flush_writes_the_live_effects_before_kafka_acks_and_the_snapshot_after() -> None:
    producer, writer = HeldProducer(), RecordingWriter()
    flush = asyncio.ensure_future(StreamJob._write(job(producer, writer), effects(), {0: {"__offset__": 5}}))
    await live_written(writer)
    assert producer.sent == 1 and not flush.done()  # the snapshot waits for the broker's ack, held by the test
    producer.release()
    await asyncio.wait_for(flush, 5)
    assert writer.calls == ["live", "snapshot"]


async def test_a_flush_without_a_snapshot_writes_redis_and_kafka_at_the_same_time() -> None:
    producer, writer = HeldProducer(), RecordingWriter()
    flush = asyncio.ensure_future(StreamJob._write(job(producer, writer), effects(), None))
    await live_written(writer)
    producer.release()
    await asyncio.wait_for(flush, 5)
    assert writer.calls == ["live"]
