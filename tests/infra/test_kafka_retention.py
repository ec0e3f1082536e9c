"""Retention of the local durable broker (infra/kafka_retention.py): the pure rule, and the real broker + store
trimming a consumed topic while keeping what any consumer still needs."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from infra.kafka_broker import broker_command
from infra.kafka_retention import Rule, batches_to_delete
from infra.kafka_storage import broker_storage
from infra.ports import free_port, wait_port


def test_rule_parsing():
    assert Rule.parse("iotp.readings=iotp-stream, sink") == Rule("iotp.readings", frozenset({"iotp-stream", "sink"}))
    for bad in ("iotp.readings", "=g", "t=", "t= , "):
        with pytest.raises(ValueError):
            Rule.parse(bad)


def test_only_batches_wholly_below_the_floor_minus_one_and_old_enough_go():
    batches = [(0, 100.0), (10, 100.0), (20, 100.0), (30, 100.0), (40, 500.0)]
    # floor 31: record 30 (the one below the floor) is in batch 30 -> batches 0, 10, 20 go
    assert batches_to_delete(batches, floor=31, now=1000.0, min_age_s=60) == [0, 10, 20]
    # floor 30: record 29 is in batch 20 -> it stays
    assert batches_to_delete(batches, floor=30, now=1000.0, min_age_s=60) == [0, 10]
    # too young: nothing from the first young batch on
    assert batches_to_delete(batches, floor=31, now=130.0, min_age_s=60) == []
    # the last batch always stays, whatever the floor
    assert batches_to_delete(batches, floor=10**9, now=10**6, min_age_s=0) == [0, 10, 20, 30]
    assert batches_to_delete([(0, 1.0)], floor=10**9, now=10**6, min_age_s=0) == []


TOPIC, GROUP, OTHER = "ret.readings", "ret-stream", "ret-sink"


@pytest.fixture
def broker(tmp_path) -> Iterator[str]:
    """tansu on the object store with a rule for TOPIC (GROUP and OTHER), retention every 0.5 s, no min age."""
    store_port, kafka_port = free_port(), free_port()
    store = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "infra.object_store",
            "--directory",
            str(tmp_path / "objects"),
            "--port",
            str(store_port),
            "--bucket",
            "tansu",
            "--retain",
            f"{TOPIC}={GROUP},{OTHER}",
            "--retention-min-age",
            "0",
            "--retention-every",
            "0.5",
        ]
    )
    url, env = broker_storage("s3", "127.0.0.1", store_port)
    wait_port("127.0.0.1", store_port, 30, "object store")
    kafka = subprocess.Popen(broker_command("127.0.0.1", kafka_port, url), env={**env, "PATH": "/usr/bin:/bin"})
    try:
        wait_port("127.0.0.1", kafka_port, 30, "kafka")
        yield f"127.0.0.1:{kafka_port}"
    finally:
        for proc in (kafka, store):
            proc.terminate()
            proc.wait(10)


async def _setup(bootstrap: str, batches: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, 1, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await producer.start()
    try:
        for i in range(batches):  # one record per batch
            await producer.send_and_wait(TOPIC, f"r{i}".encode(), partition=0)
    finally:
        await producer.stop()


async def _commit(bootstrap: str, group: str, offset: int) -> None:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        await consumer.commit({tp: offset})
    finally:
        await consumer.stop()


async def _log(bootstrap: str) -> tuple[int, list[int]]:
    """(log start, offsets readable from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    try:
        tp = TopicPartition(TOPIC, 0)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        offsets: list[int] = []
        while True:
            got = await consumer.getmany(tp, timeout_ms=1000)
            if not got:
                return start, offsets
            offsets += [m.offset for m in got[tp]]
    finally:
        await consumer.stop()


async def _wait_log_start(bootstrap: str, expected: int, timeout: float = 20.0) -> tuple[int, list[int]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        start, offsets = await _log(bootstrap)
        if start >= expected or loop.time() > deadline:
            return start, offsets
        await asyncio.sleep(0.5)


def test_the_store_trims_only_what_every_consumer_passed(broker):
    asyncio.run(_setup(broker, 30))
    # one group of the rule has committed: nothing may go (the other has not read the topic yet)
    asyncio.run(_commit(broker, GROUP, 25))
    start, offsets = asyncio.run(_wait_log_start(broker, 1, timeout=3))
    assert (start, offsets) == (0, list(range(30)))
    # both rule groups, and an ad-hoc group that is further behind: the lowest offset is the floor
    asyncio.run(_commit(broker, OTHER, 20))
    asyncio.run(_commit(broker, "ad-hoc", 12))
    start, offsets = asyncio.run(_wait_log_start(broker, 11))
    assert start == 11, "the batch of record 11 (just below the floor 12) stays, everything before goes"
    assert offsets == list(range(11, 30))
    # the ad-hoc group moves on: the floor is now 20
    asyncio.run(_commit(broker, "ad-hoc", 28))
    start, offsets = asyncio.run(_wait_log_start(broker, 19))
    assert (start, offsets) == (19, list(range(19, 30)))
