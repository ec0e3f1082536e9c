"""Drills: the local Kafka-wire broker keeps topics, records and committed consumer-group offsets across
a ``kill -9`` of the broker (supervisord restarts it) and across a whole-stack ``down``/``up`` in the same
state dir. With ``IOTP_KAFKA_STORAGE=memory`` both fail (the topic is gone after the restart)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.ports import port_open
from infra.stack import LocalStack
from tests.support.services import make_test_settings
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TOPIC = "drill.durable"
GROUP = "drill-group"
PARTITIONS = 4
FIRST = 200  # records produced before the restart
CONSUMED = 120  # of which the group consumes and commits this many
LATER = 50  # records produced after the restart


@dataclass
class Before:
    records: dict[int, list[bytes]]  # partition -> values in offset order
    committed: dict[int, int]  # partition -> committed offset of GROUP


def _value(i: int) -> bytes:
    return f"reading-{i:05d}-".encode() + b"x" * 180  # ~200 B, like a small batch of readings


async def _produce(bootstrap: str, start: int, count: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(start, start + count):
            await producer.send(TOPIC, _value(i), key=f"device-{i % 13}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _read_all(bootstrap: str, expected: int, timeout: float = 60.0) -> dict[int, list[bytes]]:
    """Every record of TOPIC from the beginning (no group), by partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(TOPIC) or set()
        tps = [TopicPartition(TOPIC, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: dict[int, list[bytes]] = {tp.partition: [] for tp in tps}
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while sum(map(len, records.values())) < expected and loop.time() < deadline and tps:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, messages in batch.items():
                records[tp.partition] += [m.value for m in messages]
        return records
    finally:
        await consumer.stop()


def _group_consumer(bootstrap: str) -> AIOKafkaConsumer:
    # Manual assignment with a group id: offsets are committed to and fetched from the group coordinator
    # without waiting for a (slow, on this broker) group join.
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=GROUP,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=100,
    )


async def _consume_and_commit(bootstrap: str, count: int) -> dict[int, int]:
    consumer = _group_consumer(bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        seen = 0
        while seen < count:
            batch = await consumer.getmany(timeout_ms=500, max_records=count - seen)
            seen += sum(len(messages) for messages in batch.values())
        await consumer.commit()
        return {tp.partition: await consumer.committed(tp) or 0 for tp in tps}
    finally:
        await consumer.stop()


async def _committed(bootstrap: str) -> dict[int, int | None]:
    consumer = _group_consumer(bootstrap)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(TOPIC, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


async def _resume(bootstrap: str, expected: int, timeout: float = 60.0) -> list[bytes]:
    """What the group reads from its committed offsets on."""
    consumer = _group_consumer(bootstrap)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(TOPIC, p) for p in range(PARTITIONS)])
        values: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(values) < expected and loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                values += [m.value for m in messages]
        await consumer.commit()
        return values
    finally:
        await consumer.stop()


async def _prepare(bootstrap: str) -> Before:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    finally:
        await admin.close()
    await _produce(bootstrap, 0, FIRST)
    records = await _read_all(bootstrap, FIRST)
    assert sum(map(len, records.values())) == FIRST
    committed = await _consume_and_commit(bootstrap, CONSUMED)
    assert sum(committed.values()) == CONSUMED
    return Before(records, committed)


async def _topics(bootstrap: str) -> list[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return await admin.list_topics()
    finally:
        await admin.close()


async def _check_survived(bootstrap: str, before: Before) -> None:
    assert TOPIC in await _topics(bootstrap), "the topic did not survive the restart"
    after = await _read_all(bootstrap, FIRST)
    assert after == before.records, "records changed across the restart"
    assert await _committed(bootstrap) == before.committed, "committed offsets changed across the restart"
    # Producing and consuming go on: the group resumes at its committed offsets, with nothing re-read.
    await _produce(bootstrap, FIRST, LATER)
    resumed = await _resume(bootstrap, FIRST - CONSUMED + LATER)
    expected = [v for p in sorted(before.records) for v in before.records[p][before.committed[p] :]]
    expected += [_value(i) for i in range(FIRST, FIRST + LATER)]
    assert sorted(resumed) == sorted(expected)


@pytest.fixture
def stack(tmp_path) -> Iterator[LocalStack]:
    stack = LocalStack(make_test_settings(tmp_path / "state"))
    stack.up()
    try:
        yield stack
    finally:
        stack.down()


def _kafka_pid(stack: LocalStack) -> int | None:
    row = next(r for r in stack.status() if r["name"] == "kafka")
    return row["pid"] if row["state"] in ("STARTING", "RUNNING") else None


def test_broker_kill_9_keeps_topics_records_and_committed_offsets(stack):
    bootstrap = stack.settings.kafka_bootstrap
    before = asyncio.run(_prepare(bootstrap))

    old_pid = _kafka_pid(stack)
    assert old_pid
    os.kill(old_pid, signal.SIGKILL)
    kafka = next(e for e in stack.endpoints() if e.name == "kafka")
    wait_for(
        lambda: _kafka_pid(stack) not in (None, old_pid) and port_open(kafka.host, kafka.port),
        timeout=60,
        message="supervisord to restart the broker",
    )

    asyncio.run(_check_survived(bootstrap, before))


def test_whole_stack_down_and_up_keeps_topics_records_and_committed_offsets(stack):
    bootstrap = stack.settings.kafka_bootstrap
    before = asyncio.run(_prepare(bootstrap))

    stack.down()
    assert stack.status() == []
    LocalStack(stack.settings).up()  # a new stack object over the same state dir, as `iotp up` would be

    asyncio.run(_check_survived(bootstrap, before))


async def _concurrent_produce(bootstrap: str, topic: str, producers: int, each: int) -> set[bytes]:
    """``producers`` clients producing small batches to partition 0 of ``topic`` at the same time (two
    gateways writing one device's partition); returns every value the broker acknowledged."""

    async def one(i: int) -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0, max_batch_size=300)
        await producer.start()
        try:
            values = [f"p{i}-{j:05d}".encode() for j in range(each)]
            futures = [await producer.send(topic, v, partition=0) for v in values]
            await asyncio.gather(*futures)
            return values
        finally:
            await producer.stop()

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    acked: set[bytes] = set()
    for values in await asyncio.gather(*(one(i) for i in range(producers))):
        acked.update(values)
    return acked


async def _values_of_partition_0(bootstrap: str, topic: str, expected: int, timeout: float = 60.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(values) < expected and loop.time() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                values += [m.value for m in messages]
        # read on a little past the expected count: an overwritten batch would show as a short log, an
        # offset written twice as duplicates
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            values += [m.value for m in messages]
        return values
    finally:
        await consumer.stop()


def test_concurrent_producers_to_one_partition_lose_no_acknowledged_record(stack):
    """Drill: four producers write one partition at once. Every record the broker acknowledged is in the log
    exactly once. (With the earlier store, s3rver, which ignores conditional writes, the racing batches
    overwrote each other: 1,333 of 2,000 acknowledged records were gone.)"""
    bootstrap = stack.settings.kafka_bootstrap
    acked = asyncio.run(_concurrent_produce(bootstrap, "drill.race", producers=4, each=500))
    assert len(acked) == 2000
    values = asyncio.run(_values_of_partition_0(bootstrap, "drill.race", len(acked)))
    assert set(values) == acked, f"{len(acked - set(values))} acknowledged records are missing"
    assert len(values) == len(acked), "a record is in the log twice"
