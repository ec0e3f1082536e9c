"""stream_jobs/outputs.py against the real broker: keyed messages produced in record batches land on the
partition a keyed send would choose, in order per key, all of them, also when they need several batches."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from iotp.kafka import make_consumer, make_producer, partition_for
from stream_jobs.outputs import produce_keyed
from tests.stream_jobs.conftest import stream_test_settings

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(stack_settings):
    return stream_test_settings(stack_settings)


async def test_batched_outputs_land_where_keyed_sends_would_in_order(settings) -> None:
    topic, partitions = settings.topic_aggregates, settings.kafka_partitions
    keys = [f"dev-{i}".encode() for i in range(50)]
    messages = [(keys[i % 50], f"{i:06d}".encode() * 20) for i in range(3000)]  # ~360 kB: many 16 kB batches
    producer = make_producer(settings, compression_type=None, max_batch_size=16384)
    await producer.start()
    try:
        await produce_keyed(producer, topic, messages)
        await produce_keyed(producer, topic, [])
    finally:
        await producer.stop()
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    got: dict[bytes, list[bytes]] = {}
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total = 0
        for _ in range(100):
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                for record in records:
                    assert tp.partition == partition_for(record.key, partitions), record.key
                    got.setdefault(record.key, []).append(record.value)
                    total += 1
            if total >= len(messages):
                break
    finally:
        await consumer.stop()
    expected: dict[bytes, list[bytes]] = {}
    for key, value in messages:
        expected.setdefault(key, []).append(value)
    assert got == expected
