"""aiokafka producer/consumer factories from the settings (one place for client tuning)."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import murmur2

from iotp.settings import Settings


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    compression = settings.kafka_compression if settings.kafka_compression not in (None, "none") else None
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=settings.kafka_idempotence,
        compression_type=compression,
        linger_ms=5,
        max_batch_size=512 * 1024,
        max_request_size=4 * 1024 * 1024,
        request_timeout_ms=30000,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    options = dict(
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        # The local broker holds each JoinGroup for session_timeout/2: keep it short (LOCAL_INFRA.md).
        session_timeout_ms=10000,
        heartbeat_interval_ms=1000,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
    )
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner chooses for ``key`` among ``partitions`` partitions
    (murmur2 of the key bytes, made positive, modulo the count): the Java client's and aiokafka's
    ``DefaultPartitioner`` rule. Partition-mode records are sent to it explicitly, so a device lands where
    its device-keyed records would."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
