"""Produce the stream job's outputs (aggregates, alerts) to Kafka in record batches, and wait for the acks.

One ``producer.send`` per message -- Faust's wrapper, then aiokafka's metadata wait, partitioner, a future
per message in the accumulator -- plus one ``asyncio.gather`` over all those futures cost ~17 % of the
worker's CPU with partition records (~0.5 aggregates per reading). Here the messages are grouped by the
partition Kafka's default partitioner gives their key (:func:`iotp.kafka.partition_for`, the same rule as a
keyed send), appended to aiokafka ``BatchBuilder`` s and submitted with ``send_batch``: one future per batch.
Per-partition order is the order of ``messages``; the topic's records are the same as with keyed sends.

Partition mode (``combine``): the messages of each partition are joined into records of up to
``per_record`` messages (for the aggregates: :class:`iotp.schema.AggregateBatch`), with no key, in the
partition their keys give. So the consumer pays its per-record cost once for many messages. Every device's
windows close in the same second, which was ~25,000 records at once at 5,000 devices.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from iotp.kafka import partition_for
from iotp.schema import AGGREGATES_PER_BATCH

_PARTITIONS: dict[tuple[bytes, int], int] = {}  # (key, partition count) -> partition: murmur2 is pure Python
_CACHE_MAX = 200_000


def _partition(key: bytes, count: int) -> int:
    found = _PARTITIONS.get((key, count))
    if found is None:
        if len(_PARTITIONS) >= _CACHE_MAX:
            _PARTITIONS.clear()
        found = _PARTITIONS[(key, count)] = partition_for(key, count)
    return found


async def produce_keyed(
    producer: Any,
    topic: str,
    messages: list[tuple[bytes, bytes]],
    *,
    combine: Callable[[list[bytes]], bytes] | None = None,
    per_record: int = AGGREGATES_PER_BATCH,
) -> None:
    """Send ``(key, value)`` messages to ``topic`` (an ``aiokafka.AIOKafkaProducer``) and wait until the
    broker acknowledged all of them. ``combine``: partition mode, one record of ``combine(values)`` per
    ``per_record`` messages of a partition, without a key (module docstring)."""
    if not messages:
        return
    count = len(await producer.partitions_for(topic))
    by_partition: dict[int, list[tuple[bytes | None, bytes]]] = {}
    for key, value in messages:
        by_partition.setdefault(_partition(key, count), []).append((key, value))
    futures = []
    for partition, items in by_partition.items():
        if combine is not None:
            values = [value for _, value in items]
            items = [(None, combine(values[i : i + per_record])) for i in range(0, len(values), per_record)]
        batch = producer.create_batch()
        for record_key, record_value in items:
            if batch.append(key=record_key, value=record_value, timestamp=None) is None:  # full: send, start another
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=record_key, value=record_value, timestamp=None) is None:
                    raise ValueError(f"a message of {len(record_value)} bytes does not fit in a record batch")
        futures.append(await producer.send_batch(batch, topic, partition=partition))
    await asyncio.gather(*futures)
